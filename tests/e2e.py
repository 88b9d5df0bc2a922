"""Helpers for the end-to-end tests: settings for a whole node, an API
client, and the steps most tests take."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from dispatcher.core.config import ApiKey, ApiSettings, DispatchSettings, Settings
from dispatcher.node.records import Registration
from dispatcher.service import Dispatcher
from tests.conftest import apns_token, fcm_token, node_settings

ADMIN = "admin-key-0123456789abcdef"
BACKEND = "backend-key-0123456789abcdef"
MESSAGE = {"title": "Breaking", "body": "Something happened", "data": {"story": "42"}}


def settings_for(tmp_path: Path, **dispatch: Any) -> Settings:
    s = node_settings(tmp_path / "node")
    return s.model_copy(update={
        "node": s.node.model_copy(update={"gateways": "fake"}),
        "api": ApiSettings(port=0, keys=[ApiKey(key=ADMIN, scopes=["admin"]),  # type: ignore[arg-type]
                                         ApiKey(key=BACKEND, scopes=["backend"])]),  # type: ignore[arg-type]
        # Retries, pauses and the dead-token confirmation in tenths of seconds.
        "dispatch": DispatchSettings(**{"demo_devices": 0, "retry_base_s": 0.05, "retry_cap_s": 0.2,
                                        "guard_confirm_s": 0.2, "pause_probe_s": 0.2, "pause_probe_cap_s": 1.0,
                                        **dispatch}),
    })


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Dispatcher]:
    """A whole node, started, and stopped afterwards whatever happens."""
    d = Dispatcher(settings)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


class Client:
    def __init__(self, base: str | Dispatcher, http: aiohttp.ClientSession) -> None:
        self.base = base if isinstance(base, str) else f"http://127.0.0.1:{base.api_port}"
        self.http = http

    async def call(self, method: str, path: str, key: str | None = ADMIN, **kw: Any) -> tuple[int, Any]:
        headers = dict(kw.pop("headers", {}))
        if key:
            headers["Authorization"] = f"Bearer {key}"
        async with self.http.request(method, self.base + path, headers=headers, **kw) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body


async def register(node: Dispatcher, count: int, app: str = "news") -> list[Registration]:
    regs = [Registration(apns_token(i) if i % 2 == 0 else fcm_token(i), f"user-{i // 2}",
                         "ios" if i % 2 == 0 else "android", app, ("breaking",)) for i in range(count)]
    for start in range(0, count, 1000):
        await node.subscribers.put_many(regs[start:start + 1000])
    return regs


async def wait_done(api: Client, broadcast_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, body = await api.call("GET", f"/v1/broadcasts/{broadcast_id}")
        assert status == 200, body
        if body["state"] in ("done", "cancelled"):
            return body  # type: ignore[no-any-return]
        await asyncio.sleep(0.2)
    raise AssertionError(f"broadcast not done in {timeout_s} s: {body}")


async def start_broadcast(api: Client, key: str, **extra: Any) -> dict[str, Any]:
    spec = {"message": MESSAGE, "audience": {"app": "news"}, **extra}
    status, body = await api.call("POST", "/v1/broadcasts", json=spec, headers={"Idempotency-Key": key})
    assert status == 200, body
    return body  # type: ignore[no-any-return]
