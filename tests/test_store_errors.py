"""Clear errors for a node that is down or misconfigured."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from dispatcher.config import Settings, TarantoolSettings
from dispatcher.errors import ConfigError, NodeMisconfigured, NodeUnavailable
from dispatcher.store import Store
from dispatcher.tarantool_process import TarantoolProcess
from tests.conftest import free_port, node_settings


async def test_node_down(tmp_path: Path) -> None:
    settings = TarantoolSettings(port=free_port(), startup_timeout_s=0.5, connect_timeout_s=0.2)
    with pytest.raises(NodeUnavailable, match=r"did not answer within 0.5 s: is the node running"):
        await Store(settings).connect()


async def test_wrong_password(settings: Settings, tarantool: TarantoolProcess) -> None:
    wrong = settings.tarantool.model_copy(update={"password": SecretStr("not-the-password")})
    with pytest.raises(NodeMisconfigured, match="refused user 'dispatcher'.*tarantool.password"):
        await Store(wrong).connect()


@pytest.fixture
def plain_tarantool(tmp_path: Path) -> Iterator[int]:
    """A Tarantool with a 'dispatcher' user but none of our Lua code."""
    port = free_port()
    script = tmp_path / "plain.lua"
    script.write_text(
        f"box.cfg{{listen = '127.0.0.1:{port}', memtx_dir = '{tmp_path}', wal_dir = '{tmp_path}'}}\n"
        "box.schema.user.create('dispatcher', {password = 'some-password'})\n"
    )
    proc = subprocess.Popen(["tarantool", str(script)], stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


async def test_tarantool_without_our_application(plain_tarantool: int) -> None:
    settings = TarantoolSettings(port=plain_tarantool, password=SecretStr("some-password"), startup_timeout_s=10)
    with pytest.raises(NodeMisconfigured, match=r"does not run the dispatcher's node application"):
        await Store(settings).connect()


def test_tarantool_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    port = free_port()
    blocker = TarantoolProcess(node_settings(tmp_path / "first", port=port))
    blocker.start()
    try:
        second = TarantoolProcess(node_settings(tmp_path / "second", port=port))
        with pytest.raises(NodeUnavailable, match=r"(?s)exited with code 1.*Address already in use"):
            second.start()
    finally:
        blocker.kill()


def test_bad_node_setting_stops_tarantool_with_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_LOG_LEVEL", "loud")
    with pytest.raises(NodeUnavailable, match=r"(?s)exited with code 2.*log_level .*positive integer"):
        TarantoolProcess(node_settings(tmp_path)).start()


def test_missing_tarantool_binary(tmp_path: Path) -> None:
    settings = node_settings(tmp_path)
    settings.node.tarantool_bin = "/nonexistent/tarantool"
    with pytest.raises(ConfigError, match="node.tarantool_bin: '/nonexistent/tarantool' not found"):
        TarantoolProcess(settings).start()
