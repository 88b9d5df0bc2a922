"""Slow clients are dropped and connections are capped: a slowloris client,
an idle keep-alive, a slow body, one connection too many."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dispatcher.service import Dispatcher
from tests.e2e import BACKEND, settings_for

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 5
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Dispatcher]:
    s = settings_for(tmp_path)
    api = s.api.model_copy(update={"header_timeout_s": HEADER_TIMEOUT_S, "body_timeout_s": BODY_TIMEOUT_S,
                                   "max_connections": MAX_CONNECTIONS})
    d = Dispatcher(s.model_copy(update={"api": api}))
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


async def closed_after(reader: asyncio.StreamReader, limit_s: float) -> tuple[float, bytes]:
    """Reads until the server closes; returns how long that took and what came."""
    start, got = time.monotonic(), b""
    try:
        async with asyncio.timeout(limit_s):
            while chunk := await reader.read(65536):
                got += chunk
    except ConnectionResetError:
        pass
    return time.monotonic() - start, got


async def test_slowloris_is_disconnected(guarded: Dispatcher) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded.api_port)
    start = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")

    async def trickle() -> None:
        try:
            for _ in range(100):  # a header byte every 0.1 s: never done
                await asyncio.sleep(0.1)
                writer.write(b"X")
                await writer.drain()
        except (ConnectionError, RuntimeError):
            pass

    sender = asyncio.create_task(trickle())
    _, got = await closed_after(reader, 10)
    elapsed = time.monotonic() - start
    sender.cancel()
    writer.close()
    assert got == b"" and HEADER_TIMEOUT_S * 0.8 <= elapsed <= HEADER_TIMEOUT_S + 1.5, elapsed


async def test_idle_keep_alive_is_closed(guarded: Dispatcher) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded.api_port)
    for _ in range(3):  # requests within the timeout keep the connection
        writer.write(REQUEST)
        await writer.drain()
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await reader.readuntil(b"}")
        await asyncio.sleep(HEADER_TIMEOUT_S / 2)
    elapsed, got = await closed_after(reader, 10)
    writer.close()
    assert got == b"" and HEADER_TIMEOUT_S * 0.3 <= elapsed <= HEADER_TIMEOUT_S + 1.5, elapsed


async def test_slow_body_gets_408(guarded: Dispatcher) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded.api_port)
    writer.write(b"PUT /v1/devices/" + b"a" * 64 + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                 BACKEND.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    await writer.drain()
    start = time.monotonic()
    elapsed, got = await closed_after(reader, 10)
    writer.close()
    assert got.startswith(b"HTTP/1.1 408"), got
    assert b'"field": "body"' in got
    assert BODY_TIMEOUT_S * 0.8 <= time.monotonic() - start <= BODY_TIMEOUT_S + 1.5


async def test_connections_over_the_cap_are_closed_at_once(guarded: Dispatcher) -> None:
    held = []
    for _ in range(MAX_CONNECTIONS):
        reader, writer = await asyncio.open_connection("127.0.0.1", guarded.api_port)
        writer.write(REQUEST)  # answered: the server holds this connection
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        held.append((reader, writer))
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded.api_port)
    writer.write(REQUEST)
    elapsed, got = await closed_after(reader, 5)
    writer.close()
    assert got == b"" and elapsed < 0.5, (elapsed, got)
    # One goes; a new one is served.
    held.pop()[1].close()
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded.api_port)
    writer.write(REQUEST)
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    writer.close()
    for _, w in held:
        w.close()
