"""The contract between Python and Lua: every stored function of the node
(lua/init.lua's ``node`` table) has its wrapper in dispatcher/node/contract.py,
nothing else in the package names one, and every wrapper works against a
real node, answering typed records."""

from __future__ import annotations

import ast
import asyncio
import re
import time
from pathlib import Path

import pytest

from dispatcher.core.config import Settings
from dispatcher.core.errors import NodeMisconfigured
from dispatcher.node.contract import (
    SCHEMA_VERSION,
    Broadcasts,
    DeadLetters,
    Fanout,
    Pushes,
    Status,
    Subscribers,
    connect,
)
from dispatcher.node.queue import Queue
from dispatcher.node.records import Audience, Broadcast, Orphan, Registration, Scope, Step, Subscriber
from dispatcher.node.store import Store
from dispatcher.node.tarantool_process import TarantoolProcess
from dispatcher.node.tasks import SendTask
from dispatcher.work.settle import ack, bury, release
from tests.admin import console
from tests.conftest import apns_token, fcm_token

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "dispatcher" / "node" / "contract.py"


def stored_functions() -> set[str]:
    """The names in lua/init.lua's `node = { ... }` table."""
    init = (ROOT / "lua" / "init.lua").read_text()
    table = init[init.index("\nnode = {"):init.index("\n}\n", init.index("\nnode = {"))]
    return {"node." + name for name in re.findall(r"^    (\w+) = ", table, re.M)}


def strings_in(path: Path) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def test_every_stored_function_has_a_wrapper_and_no_other_module_names_one() -> None:
    functions = stored_functions()
    assert len(functions) > 20, functions
    assert functions <= strings_in(CONTRACT), f"no wrapper: {sorted(functions - strings_in(CONTRACT))}"
    elsewhere = {str(p.relative_to(ROOT)): sorted(strings_in(p) & functions)
                 for p in (ROOT / "dispatcher").rglob("*.py") if p != CONTRACT}
    assert not {p: names for p, names in elsewhere.items() if names}


async def test_every_wrapper_against_a_real_node(settings: Settings, store: Store) -> None:
    other = Store(settings.tarantool)
    info = await connect(other)
    await other.close()
    assert info["schema_version"] == SCHEMA_VERSION and info["name"] == settings.node.name

    status = Status(store)
    assert (await status.info())["ro"] is False
    assert {"arena_used", "quota_size", "data", "index"} <= set(await status.memory())

    subscribers = Subscribers(store)
    one = await subscribers.put(Registration(apns_token(1), "u1", "ios", "news", ("sport",), "Europe/Paris", "fr"))
    assert isinstance(one, Subscriber) and (one.token, one.topics, one.tz, one.origin) == (
        apns_token(1), ("sport",), "Europe/Paris", 1)  # the node's replica id
    regs = [Registration(fcm_token(i), f"u{i}", "android", "news") for i in range(2, 6)]
    assert await subscribers.put_many(regs) == 4
    assert (await subscribers.get(fcm_token(2)) or one).user_id == "u2"
    assert await subscribers.get("nobody") is None
    assert [s.token for s in await subscribers.of_user("u1")] == [apns_token(1)]
    rows, cursor = await subscribers.page(None, 2, Audience(app="news"))
    assert [r.user_id for r in rows] == ["u1", "u2"] and cursor == ("u2", fcm_token(2))
    rows, cursor = await subscribers.page(cursor, 10, Audience(platform="android"))
    assert [r.user_id for r in rows] == ["u3", "u4", "u5"] and cursor is None
    assert await subscribers.remove(fcm_token(5)) is True and await subscribers.remove(fcm_token(5)) is False
    assert await subscribers.remove_many([fcm_token(4), "nobody"]) == 1

    broadcasts = Broadcasts(store)
    spec = {"message": {"title": "t", "body": "b"}, "audience": {"app": "news"}, "ttl_s": 60}
    b, created = await broadcasts.create("contract-1", spec)
    again, created_again = await broadcasts.create("contract-1", spec)
    assert isinstance(b, Broadcast) and created and not created_again and again.id == b.id
    assert (b.state, b.finished) == ("scheduled", None)
    assert [x.id for x in await broadcasts.list(10)] == [b.id]
    assert await broadcasts.list(10, before=b.created) == []

    fanout = Fanout(store)
    step = await fanout.step(page_size=100, leaf=100, parts=4, targets=[settings.node.name],
                             next_node=settings.node.name, high_water=None, timeout_s=0)
    assert isinstance(step, Step) and step.outcome == "done" and step.started and step.fanned_out
    assert step.put == {"ios": 1, "android": 2}
    progress = await broadcasts.progress(b.id)
    assert (progress["targeted"], progress["enqueued"], progress["pending"]) == (3, 3, 3)
    assert (await broadcasts.progress_by_node(b.id))[settings.node.name]["enqueued"] == 3
    assert [p["enqueued"] for p in await broadcasts.progress_many([b.id, "b_none"])] == [3, 0]
    assert (await broadcasts.get(b.id) or b).state == "fanned_out"

    # Settling: the tasks the node built are read and settled here.
    pushes = Pushes(store)
    queue = Queue(store)
    [ios] = await queue.tube("ios").take_many(10)
    sent = SendTask.from_wire(ios.data)
    assert (sent.kind, sent.ref, sent.token, sent.app) == ("b", b.id, apns_token(1), "news")
    android = await queue.tube("android").take_many(10)
    assert await pushes.settle("ios", [ack(ios.id, b.id, "delivered")]) == []
    sent.attempt, sent.suspect = 2, True
    items = [release(android[0].id, b.id, "retries", 60, sent.retry()), bury(android[1].id, b.id, "no good")]
    assert await pushes.settle("android", items) == []
    letters = DeadLetters(store)
    [letter] = (await letters.list(limit=10)).letters
    assert (letter.reason, letter.broadcast, letter.task_id) == ("no good", b.id, android[1].id)
    assert letter.task is not None and letter.task.token == SendTask.from_wire(android[1].data).token
    retried = SendTask.from_wire((await queue.tube("android").peek(android[0].id)).data)
    assert (retried.attempt, retried.suspect) == (2, True)

    assert await pushes.enqueue([apns_token(1), "nobody"], {"message": {"title": "hi"}}, 30) == 1
    [one_off] = await queue.tube("ios").take_many(10)
    assert SendTask.from_wire(one_off.data).kind == "m"

    redriven = await letters.redrive(Scope(ids=(letter.id,)), default_ttl_s=60)
    assert (redriven.redriven, redriven.missing) == (1, [])
    assert (await letters.purge(Scope(ids=(letter.id,)))).missing == [letter.id], "re-driven: no longer a letter"
    assert (await letters.list(Scope(broadcast=b.id))).letters == []

    cancelled = await broadcasts.cancel(b.id)
    assert cancelled.state == "cancelled" and cancelled.finished is not None and cancelled.finished <= time.time()

    # The outbox, accepting, holders and re-issuing.
    far, _ = await broadcasts.create("contract-2", spec, home="node9")
    [forward] = await fanout.outbox(10)
    assert (forward.to, forward.data["b"]) == ("node9", far.id)
    assert await fanout.accept([forward], origin="node1") == 1
    assert await fanout.accept([forward], origin="node1") == 0, "the same forward, once"
    await fanout.outbox_done([forward.id])
    assert await fanout.outbox(10) == []
    [held] = await fanout.orphans([settings.node.name])
    assert isinstance(held, Orphan) and held.broadcast == far.id
    await fanout.reissue([held])
    assert [o.broadcast for o in await fanout.orphans([settings.node.name])] == [far.id]


async def test_a_node_whose_schema_is_behind_is_waited_for(settings: Settings, tarantool: TarantoolProcess) -> None:
    """An upgrade in progress: the node's schema owner migrates once every
    node runs this release, and the dispatcher waits for it (up to
    startup_timeout_s) instead of exiting; a schema ahead of this release
    is a mistake, refused at once."""
    data = settings.node.data_dir

    def set_version(v: int) -> None:
        console(data, f"box.space._schema:replace({{'dispatcher_schema_version', {v}}})")

    set_version(SCHEMA_VERSION - 1)
    store = Store(settings.tarantool)
    waiting = asyncio.create_task(connect(store))
    await asyncio.sleep(1.5)
    assert not waiting.done(), "waits while the schema is behind"
    set_version(SCHEMA_VERSION)
    assert (await asyncio.wait_for(waiting, 5))["schema_version"] == SCHEMA_VERSION
    await store.close()

    set_version(SCHEMA_VERSION - 1)
    impatient = Store(settings.tarantool.model_copy(update={"startup_timeout_s": 1.0}))
    started = time.monotonic()
    with pytest.raises(NodeMisconfigured, match=f"schema version {SCHEMA_VERSION - 1}, this dispatcher needs"):
        await connect(impatient)
    assert 1.0 <= time.monotonic() - started < 5, "gave up after startup_timeout_s"

    set_version(SCHEMA_VERSION + 1)
    started = time.monotonic()
    with pytest.raises(NodeMisconfigured, match=f"schema version {SCHEMA_VERSION + 1}"):
        await connect(Store(settings.tarantool))
    assert time.monotonic() - started < 1, "a schema ahead of this release is refused at once"
    set_version(SCHEMA_VERSION)
