"""Fixtures that start real Tarantool processes from lua/ on free loopback
ports, each in its own temporary directory, and always stop them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from pydantic import SecretStr

from dispatcher.cluster_up import free_port
from dispatcher.core.config import ApnsSettings, FcmSettings, NodeSettings, Settings, TarantoolSettings
from dispatcher.fakes.gateways import FakeGateways
from dispatcher.node.contract import Subscribers
from dispatcher.node.queue import Queue
from dispatcher.node.store import Store
from dispatcher.node.tarantool_process import TarantoolProcess
from dispatcher.service import Dispatcher

if TYPE_CHECKING:
    from tests.e2e import Client

TEST_PASSWORD = "test-password-123"


def node_settings(data_dir: Path, name: str = "test", port: int | None = None) -> Settings:
    return Settings(
        node=NodeSettings(name=name, data_dir=data_dir, memtx_memory_mb=64),
        tarantool=TarantoolSettings(
            port=port or free_port(),
            password=SecretStr(TEST_PASSWORD),
            startup_timeout_s=20,
            request_timeout_s=10,
            reconnect_interval_s=0.1,
        ),
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return node_settings(tmp_path / "node")


@pytest.fixture
def tarantool(settings: Settings) -> Iterator[TarantoolProcess]:
    proc = TarantoolProcess(settings)
    proc.start()
    try:
        yield proc
    finally:
        proc.kill()


@pytest.fixture
async def store(settings: Settings, tarantool: TarantoolProcess) -> AsyncIterator[Store]:
    s = Store(settings.tarantool)
    await s.connect()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def queue(store: Store) -> Queue:
    return Queue(store)


@pytest.fixture
def subscribers(store: Store) -> Subscribers:
    return Subscribers(store)


# --- fake gateways and senders ---

@pytest.fixture
async def gateways(tmp_path: Path) -> AsyncIterator[FakeGateways]:
    fakes = FakeGateways(tmp_path / "fakes")
    await fakes.start()
    try:
        yield fakes
    finally:
        await fakes.stop()


def apns_settings_for(fakes: FakeGateways, **overrides: Any) -> ApnsSettings:
    return fakes.credentials.apns_settings(fakes.ports["apns"], **{"request_timeout_s": 5, **overrides})


def fcm_settings_for(fakes: FakeGateways, **overrides: Any) -> FcmSettings:
    return fakes.credentials.fcm_settings(fakes.ports["fcm"], **{"request_timeout_s": 5, **overrides})


def apns_token(n: int) -> str:
    return f"{n:064x}"


def fcm_token(n: int) -> str:
    return f"fcm-token-{n:08d}:" + "A" * 120


# --- a whole node (Tarantool, workers, API) for end-to-end tests ---

@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Dispatcher]:
    from tests.e2e import running, settings_for

    async with running(settings_for(tmp_path)) as d:
        yield d


@pytest.fixture
async def api(node: Dispatcher) -> AsyncIterator[Client]:
    from tests.e2e import Client

    async with aiohttp.ClientSession() as http:
        yield Client(node, http)
