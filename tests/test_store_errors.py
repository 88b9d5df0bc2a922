"""Clear errors for a node that is down or misconfigured, and a stored
function's errors told apart by code: a refusal of ours (the client's
fault), a condition that passes (retry), a bug (do not)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from asynctnt.exceptions import ErrorCode
from pydantic import SecretStr

from dispatcher.core.config import Settings, TarantoolSettings
from dispatcher.core.errors import ConfigError, NodeMisconfigured, NodeUnavailable, StoreFailed, StoreRejected
from dispatcher.node.contract import connect
from dispatcher.node.store import Store
from dispatcher.node.tarantool_process import TarantoolProcess
from tests.admin import console
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
        await connect(Store(settings))


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


# --- a stored function's error, by its code ---

async def test_a_bad_argument_is_rejected_with_our_code_naming_the_field(store: Store) -> None:
    with pytest.raises(StoreRejected, match=r"topics\[2\] must be a non-empty string") as e:
        await store.call("node.subscriber_put", ("tok", "u1", "ios", "news", ["sport", 7]))
    assert e.value.code == 10001
    with pytest.raises(StoreRejected, match="no broadcast b_missing") as e:
        await store.call("node.broadcast_cancel", ("b_missing",))
    assert e.value.code == 10004


async def test_a_read_only_node_fails_retryably(settings: Settings, store: Store) -> None:
    console(settings.node.data_dir, "box.cfg{read_only = true}")
    try:
        with pytest.raises(StoreFailed) as e:
            await store.call("node.subscriber_put", ("tok", "u1", "ios", "news"))
        assert e.value.retryable and e.value.code == ErrorCode.ER_READONLY
    finally:
        console(settings.node.data_dir, "box.cfg{read_only = false}")
    await store.call("node.subscriber_put", ("tok", "u1", "ios", "news"))


async def test_out_of_memory_fails_retryably(settings: Settings, store: Store) -> None:
    # memtx_memory_mb is 64 in these tests: fill it with fat registrations,
    # each with topics of its own (~6 KB a device: shared ones are stored once).
    topics = [f"topic-{i:03d}-" + "x" * 50 for i in range(100)]
    with pytest.raises(StoreFailed) as e:
        for batch in range(100):
            regs = [[f"tok-{batch}-{i}", f"user-{i}", "ios", "news", [f"own-{batch}-{i}", *topics]]
                    for i in range(500)]
            await store.call("node.subscriber_put_many", (regs,))
    assert e.value.retryable and e.value.code == ErrorCode.ER_MEMORY_ISSUE
    assert "tok-" not in str(e.value), "the call's arguments stay out of the message"
    # It passes: memory freed, the same kind of call goes through.
    console(settings.node.data_dir, "box.space.subscriber:truncate()")
    await store.call("node.subscriber_put", ("tok", "u1", "ios", "news"))


async def test_a_lua_error_in_a_stored_function_fails_for_good(store: Store) -> None:
    # A wrong type that no check of ours stops: Lua fails deep inside.
    with pytest.raises(StoreFailed, match="node.progress_many on Tarantool at .* failed: .*ipairs") as e:
        await store.call("node.progress_many", (5,))
    assert not e.value.retryable and e.value.code == ErrorCode.ER_PROC_LUA
