"""The Python queue client against a real node, over real sockets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asynctnt
import pytest
from asynctnt.exceptions import TarantoolDatabaseError

from dispatcher.core.config import Settings
from dispatcher.core.errors import NodeUnavailable, StoreRejected
from dispatcher.node.queue import BURIED, DELAYED, DONE, READY, TAKEN, Queue
from dispatcher.node.store import Store
from dispatcher.node.tarantool_process import TarantoolProcess
from tests.admin import console


async def test_put_take_ack(queue: Queue) -> None:
    tube = queue.tube("ios")
    task = await tube.put({"token": "t1", "attempt": 0})
    assert task.status == READY and task.data == {"token": "t1", "attempt": 0}
    taken = await tube.take(0)
    assert taken is not None and taken.id == task.id and taken.status == TAKEN
    done = await tube.ack(task.id)
    assert done.status == DONE
    assert (await tube.statistics())["tasks"]["total"] == 0


async def test_take_timeout_gives_none(queue: Queue) -> None:
    assert await queue.tube("android").take(0.05) is None
    assert await queue.tube("android").take_many(10, 0.05) == []


async def test_blocked_take_wakes_on_put_from_another_connection(
    queue: Queue, settings: Settings
) -> None:
    waiter = asyncio.create_task(queue.tube("ios").take(10))
    await asyncio.sleep(0.1)
    other = Store(settings.tarantool)
    await other.connect()
    try:
        await Queue(other).tube("ios").put("hello")
        task = await asyncio.wait_for(waiter, 5)
    finally:
        await other.close()
    assert task is not None and task.data == "hello"


async def test_batch_round_trip(queue: Queue) -> None:
    tube = queue.tube("ios")
    ids = await tube.put_many([{"n": i} for i in range(1000)], ttl_s=3600)
    assert len(ids) == 1000 and len(set(ids)) == 1000
    taken = await tube.take_many(600)
    assert [t.data["n"] for t in taken] == list(range(600))
    assert await tube.ack_many([t.id for t in taken[:500]] + [10**9]) == [10**9]
    # 50 back at once, 50 each with its own delay and new data.
    items: list[int | tuple[int, float | None, object]] = [t.id for t in taken[500:550]]
    items += [(t.id, 60, {"n": t.data["n"], "attempt": 1}) for t in taken[550:]]
    assert await tube.release_many(items) == []
    stats = (await tube.statistics())["tasks"]
    assert stats["ready"] == 450 and stats["delayed"] == 50 and stats["taken"] == 0
    delayed = await tube.peek(taken[-1].id)
    assert delayed.status == DELAYED and delayed.data == {"n": 599, "attempt": 1}


async def test_release_bury_kick_delete_touch(queue: Queue) -> None:
    tube = queue.tube("android")
    task = await tube.put("x", ttr_s=30)
    await tube.take(0)
    assert (await tube.touch(task.id, 30)).status == TAKEN
    assert (await tube.release(task.id, delay_s=0.05)).status == DELAYED
    again = await tube.take(5)
    assert again is not None and again.id == task.id
    assert (await tube.bury(task.id)).status == BURIED
    assert await tube.take(0) is None
    assert await tube.kick(5) == 1
    assert (await tube.delete(task.id)).status == DONE
    with pytest.raises(StoreRejected, match="not found"):
        await tube.peek(task.id)


async def test_a_session_acks_only_its_own_tasks(queue: Queue, settings: Settings) -> None:
    task = await queue.tube("ios").put("mine")
    await queue.tube("ios").take(0)
    other = Store(settings.tarantool)
    await other.connect()
    try:
        with pytest.raises(StoreRejected, match="was not taken by this session"):
            await Queue(other).tube("ios").ack(task.id)
    finally:
        await other.close()


async def test_disconnect_returns_taken_tasks(queue: Queue, settings: Settings) -> None:
    await queue.tube("ios").put_many(["a", "b", "c"])
    worker = Store(settings.tarantool)
    await worker.connect()
    assert len(await Queue(worker).tube("ios").take_many(3)) == 3
    assert (await queue.tube("ios").statistics())["tasks"]["taken"] == 3
    await worker.close()
    for _ in range(100):
        if (await queue.tube("ios").statistics())["tasks"]["ready"] == 3:
            break
        await asyncio.sleep(0.02)
    tasks = (await queue.tube("ios").statistics())["tasks"]
    assert tasks["oldest_ready_age"] >= 0
    del tasks["oldest_ready_age"]
    assert tasks == {"ready": 3, "taken": 0, "buried": 0, "delayed": 0, "done": 0, "total": 3}


async def test_bad_options_are_rejected_with_the_reason(queue: Queue) -> None:
    with pytest.raises(StoreRejected, match="ttl must be a non-negative number"):
        await queue.tube("ios").put("x", ttl_s=-5)
    with pytest.raises(StoreRejected, match="count must be a positive number"):
        await queue.tube("ios").take_many(0)


async def test_statistics_of_every_tube(queue: Queue) -> None:
    await queue.tube("fanout").put({"broadcast": "b1", "cursor": None})
    stats = await queue.statistics()
    assert set(stats) >= {"ios", "android", "fanout"}
    assert stats["fanout"]["tasks"]["ready"] == 1
    assert stats["fanout"]["calls"]["put"] == 1


async def test_queue_refusals_carry_codes(settings: Settings, tarantool: TarantoolProcess) -> None:
    """10001: a bad argument; 10010: a task this session does not hold. The
    messages stay as they were."""
    t = settings.tarantool

    async def connect() -> asynctnt.Connection:
        conn = asynctnt.Connection(host=t.host, port=t.port, username=t.user,
                                   password=t.password.get_secret_value())
        await conn.connect()
        return conn

    mine, other = await connect(), await connect()
    try:
        with pytest.raises(TarantoolDatabaseError) as bad:
            await mine.call("queue.tube.ios:put", ["x", {"ttl": -5}])
        assert bad.value.code == 10001 and "ttl must be a non-negative number" in bad.value.message
        task = (await mine.call("queue.tube.ios:put", ["mine"])).body[0]
        await mine.call("queue.tube.ios:take", [0])
        with pytest.raises(TarantoolDatabaseError) as not_held:
            await other.call("queue.tube.ios:ack", [task[0]])
        assert not_held.value.code == 10010 and "was not taken by this session" in not_held.value.message
    finally:
        await mine.disconnect()
        await other.disconnect()


async def _statistics_after_restart(tube: Any) -> dict[str, Any]:
    for _ in range(200):
        try:
            stats: dict[str, Any] = (await tube.statistics())["tasks"]
            return stats
        except NodeUnavailable:
            await asyncio.sleep(0.1)
    raise AssertionError("the store did not reconnect after the restart")


async def test_counts_are_right_after_a_restart(settings: Settings, tarantool: TarantoolProcess) -> None:
    """The counts statistics keeps are made again when the node starts: from
    the WAL after kill -9, and from a snapshot plus the WAL after a stop;
    each time equal to the index counted on the node's console."""
    store = Store(settings.tarantool)
    await store.connect()
    tube = Queue(store).tube("ios")
    data_dir = settings.node.data_dir
    counted = ("return box.space.ios.index.status:count({'r'}), box.space.ios.index.status:count({'~'}), "
               "box.space.ios.index.status:count({'!'}), box.space.ios:len()")
    try:
        await tube.put_many([{"n": i} for i in range(300)])
        await tube.put_many(["later"] * 20, delay_s=3600)
        taken = await tube.take_many(100)
        for task in taken[:10]:
            await tube.bury(task.id)
        assert await tube.ack_many([t.id for t in taken[10:40]]) == []
        expected = {"ready": 260, "taken": 0, "delayed": 20, "buried": 10, "total": 290}

        tarantool.kill()
        tarantool.start()
        stats = await _statistics_after_restart(tube)
        assert {k: stats[k] for k in expected} == expected, "after kill -9 (WAL only)"
        assert console(data_dir, counted) == [260, 20, 10, 290]

        await tube.put_many(["after"] * 5)
        await tube.kick(4)
        expected = {"ready": 269, "taken": 0, "delayed": 20, "buried": 6, "total": 295}
        console(data_dir, "box.snapshot()")
        await tube.take_many(50)
        tarantool.stop()
        tarantool.start()
        stats = await _statistics_after_restart(tube)
        assert {k: stats[k] for k in expected} == expected, "after a stop (snapshot and WAL)"
        assert console(data_dir, counted) == [269, 20, 6, 295]
    finally:
        await store.close()


async def test_send_and_fanout_tubes_get_the_nodes_ttr(queue: Queue, settings: Settings) -> None:
    """dispatch.task_ttr_s reaches Tarantool (NODE_TASK_TTR_S) as the ttr of
    every task put on the dispatcher's tubes; other tubes keep their own."""
    assert settings.dispatch.task_ttr_s == 120
    got = console(settings.node.data_dir, "queue.tube.ios.opts.ttr, queue.tube.android.opts.ttr, "
                                          "queue.tube.fanout.opts.ttr")
    assert got == [120, 120, 120]
    task = await queue.tube("ios").put("x")
    # The stored task's ttr field (5th), in ms.
    assert console(settings.node.data_dir, f"box.space.ios:get({task.id})[5]") == [120_000]


async def test_a_take_past_give_up_at_takes_nothing(queue: Queue) -> None:
    tube = queue.tube("android")
    await tube.put_many(["a", "b"])
    assert await tube.take_many(2, 0, give_up_at=time.time() - 1) == []
    assert (await tube.statistics())["tasks"]["ready"] == 2
    assert len(await tube.take_many(2, 0, give_up_at=time.time() + 5)) == 2
