"""Who may do what on a node's Tarantool port, tried over iproto against a
real node: guest connects and pings, nothing more (Tarantool 2.6's `public`
role let any connection run Lua as admin through SQL's LUA()); the
dispatcher's user calls stored functions only; the replicator replicates.
And a node refuses a weak or well-known password without printing it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asynctnt
import pytest
from asynctnt.exceptions import ErrorCode, TarantoolDatabaseError
from pydantic import SecretStr

from dispatcher.core.config import DEV_PASSWORD, Settings
from dispatcher.node.tarantool_process import TarantoolProcess, lua_dir
from tests.admin import console
from tests.conftest import free_port, node_settings

REPLICATOR_PASSWORD = "replicator-password-123"
# The PoC: a shell command run by Tarantool, as root if Tarantool is root.
POC = "SELECT LUA('return io.popen(''id'', ''r''):read(''*a'')')"
# Read by connectors that fetch the schema on connect (asynctnt, net.box).
SCHEMA_VIEWS = {"_vspace", "_vindex", "_vcollation"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = node_settings(tmp_path / "node")
    return s.model_copy(update={"node": s.node.model_copy(
        update={"replicator_password": SecretStr(REPLICATOR_PASSWORD)})})


def functions(data_dir: Path) -> list[str]:
    """Every function in _func (SQL's built-ins, node.*, queue.*), read as admin."""
    lua = "local t = {} for _, f in box.space._func:pairs() do table.insert(t, f[3]) end return t"
    names: list[str] = console(data_dir, lua)[0]
    return names


def spaces(data_dir: Path) -> dict[int, str]:
    """Every space in _space, system ones too: id -> name."""
    lua = "local t = {} for _, s in box.space._space:pairs() do t[s[1]] = s[3] end return t"
    found: dict[int, str] = console(data_dir, lua)[0]
    return found


async def connect(settings: Settings, user: str | None = None, password: str | None = None) -> asynctnt.Connection:
    t = settings.tarantool
    conn = asynctnt.Connection(host=t.host, port=t.port, username=user, password=password,
                               fetch_schema=False, auto_refetch_schema=False, reconnect_timeout=0)
    await conn.connect()
    return conn


@pytest.fixture
async def guest(settings: Settings, tarantool: TarantoolProcess) -> AsyncIterator[asynctnt.Connection]:
    conn = await connect(settings)
    yield conn
    await conn.disconnect()


@pytest.fixture
async def dispatcher(settings: Settings, tarantool: TarantoolProcess) -> AsyncIterator[asynctnt.Connection]:
    conn = await connect(settings, "dispatcher", settings.tarantool.password.get_secret_value())
    yield conn
    await conn.disconnect()


async def refusal(request: Callable[[], Awaitable[Any]]) -> int | str:
    """The error code Tarantool answers `request` with, or what it returned."""
    try:
        return repr(await request())
    except TarantoolDatabaseError as e:
        return int(e.code)


async def refusals(conn: asynctnt.Connection, settings: Settings,
                   allowed: frozenset[str] = frozenset()) -> dict[str, int | str]:
    """Every way in tried as `conn`'s user, but the calls and reads in
    `allowed`: what each answered when it was not an access error."""
    data_dir = settings.node.data_dir
    tries: dict[str, Callable[[], Awaitable[Any]]] = {
        "sql LUA()": lambda: conn.execute(POC),
        "sql select": lambda: conn.execute('SELECT * FROM "subscriber" INDEXED BY "user"'),
        "eval": lambda: conn.eval("return 1"),
    }
    for name in functions(data_dir):
        if name not in allowed:
            tries[f"call {name}"] = lambda name=name: conn.call(name, [])  # type: ignore[misc]
    for space_id, name in spaces(data_dir).items():
        if name not in allowed:
            tries[f"select {name}"] = lambda space_id=space_id: conn.select(space_id)  # type: ignore[misc]
    answers = {what: await refusal(request) for what, request in tries.items()}
    return {what: answer for what, answer in answers.items() if answer != ErrorCode.ER_ACCESS_DENIED}


async def test_guest_can_ping_and_nothing_else(settings: Settings, guest: asynctnt.Connection) -> None:
    await guest.ping()
    names = functions(settings.node.data_dir)
    # What is tried below: every stored function of ours and of the queue.
    assert {"node.info", "node.subscriber_put_many", "node.settle", "queue.tube.ios:take_many",
            "queue.statistics", "LUA"} <= set(names)
    assert {512, 520, 280, 304, 312} <= set(spaces(settings.node.data_dir))  # ours, _space, _user, _priv
    assert await refusals(guest, settings) == {}


async def test_the_dispatcher_user_calls_its_functions_only(settings: Settings,
                                                            dispatcher: asynctnt.Connection) -> None:
    info = (await dispatcher.call("node.info")).body[0]
    assert info["name"] == "test"
    assert (await dispatcher.call("queue.statistics", ["ios"])).body[0]["tasks"]["total"] == 0
    ours = {n for n in functions(settings.node.data_dir) if n.startswith(("node.", "queue."))}
    assert await refusals(dispatcher, settings, allowed=frozenset(ours | SCHEMA_VIEWS)) == {}
    # The views it may read show it none of the data spaces.
    shown = {row[2] for row in (await dispatcher.select(281)).body}
    assert shown <= SCHEMA_VIEWS, shown


async def test_the_replicator_replicates_and_runs_nothing(settings: Settings, tarantool: TarantoolProcess) -> None:
    conn = await connect(settings, "replicator", REPLICATOR_PASSWORD)
    try:
        # Its role reads every space (that is what a replica fetches)...
        assert (await conn.select(512)).body == []
        # ...and may run nothing, nor write.
        assert await refusal(lambda: conn.execute(POC)) == ErrorCode.ER_ACCESS_DENIED
        assert await refusal(lambda: conn.eval("return 1")) == ErrorCode.ER_ACCESS_DENIED
        assert await refusal(lambda: conn.call("node.info")) == ErrorCode.ER_ACCESS_DENIED
        assert await refusal(lambda: conn.replace(512, ["t", "u", "ios", "a", [], "UTC", "", 0, 1, "x", False])) \
            == ErrorCode.ER_ACCESS_DENIED
    finally:
        await conn.disconnect()


async def test_grants_of_an_older_release_are_tightened_on_start(settings: Settings,
                                                                 tarantool: TarantoolProcess) -> None:
    # What a node bootstrapped by an older release holds: Tarantool's defaults.
    data_dir = settings.node.data_dir
    console(data_dir, "box.schema.role.grant('public', 'execute', 'function', 'LUA', {if_not_exists = true})")
    console(data_dir, "box.schema.user.grant('guest', 'public', nil, nil, {if_not_exists = true})")
    console(data_dir, "box.schema.user.grant('dispatcher', 'public', nil, nil, {if_not_exists = true})")
    guest = await connect(settings)
    try:
        assert "uid=" in await refusal(lambda: guest.execute(POC))  # type: ignore[operator]
    finally:
        await guest.disconnect()
    tarantool.stop()
    tarantool.start()
    guest = await connect(settings)
    try:
        assert await refusals(guest, settings) == {}
    finally:
        await guest.disconnect()


def start_node(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`tarantool lua/init.lua` as systemd would run it: settings from NODE_*."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NODE_")}
    node_env = {"NODE_DATA_DIR": str(tmp_path / "data"), "NODE_LOG": str(tmp_path / "tarantool.log"),
                "NODE_LISTEN": f"127.0.0.1:{free_port()}", **env}
    return subprocess.run(["tarantool", str(lua_dir() / "init.lua")], env={**clean, **node_env},
                          capture_output=True, text=True, timeout=30)


def everything_written(tmp_path: Path, run: subprocess.CompletedProcess[str]) -> str:
    files = [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    return "\n".join([run.stdout, run.stderr, *files])


@pytest.mark.parametrize(("env", "secret", "why"), [
    ({"NODE_LISTEN": "0.0.0.0:{port}", "NODE_DISPATCHER_PASSWORD": DEV_PASSWORD}, DEV_PASSWORD,
     "dispatcher_password (from NODE_DISPATCHER_PASSWORD): the built-in development password is only allowed"),
    ({"NODE_DISPATCHER_PASSWORD": "elevenchars"}, "elevenchars",
     "dispatcher_password (from NODE_DISPATCHER_PASSWORD): must be set, at least 12 characters"),
    ({"NODE_DISPATCHER_PASSWORD": "a-good-long-password", "NODE_REPLICATOR_PASSWORD": "eleven-char"},
     "eleven-char", "replicator_password (from NODE_REPLICATOR_PASSWORD): must be at least 12 characters"),
], ids=["dev password off loopback", "short password", "short replicator password"])
def test_weak_passwords_are_refused_unprinted(tmp_path: Path, env: dict[str, str], secret: str, why: str) -> None:
    run = start_node(tmp_path, **{k: v.format(port=free_port()) for k, v in env.items()})
    assert run.returncode == 2, run
    assert why in run.stderr, run.stderr
    assert secret not in everything_written(tmp_path, run)
