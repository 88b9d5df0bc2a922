"""A third-party tarantool/queue client, asynctnt-queue, used unchanged
against our queue module: the public API must match."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asynctnt
import asynctnt_queue
import pytest
from asynctnt_queue.task import Status

from dispatcher.core.config import Settings
from dispatcher.node.tarantool_process import TarantoolProcess


@pytest.fixture
async def third_party(settings: Settings, tarantool: TarantoolProcess) -> AsyncIterator[asynctnt_queue.Queue]:
    t = settings.tarantool
    conn = asynctnt.Connection(
        host=t.host, port=t.port, username=t.user, password=t.password.get_secret_value()
    )
    await conn.connect()
    try:
        yield asynctnt_queue.Queue(conn)
    finally:
        await conn.disconnect()


async def test_put_take_ack(third_party: asynctnt_queue.Queue) -> None:
    tube = third_party.tube("ios")
    task = await tube.put({"token": "abc"}, pri=1, ttl=60, ttr=30)
    assert task.status == Status.READY
    assert task.data == {"token": "abc"}
    taken = await tube.take()
    assert taken.task_id == task.task_id and taken.status == Status.TAKEN
    acked = await taken.ack()
    assert acked.status == Status.EXECUTED


async def test_take_with_timeout(third_party: asynctnt_queue.Queue) -> None:
    tube = third_party.tube("android")
    assert await tube.take(0.1) is None
    waiter = asyncio.create_task(tube.take(5))
    await asyncio.sleep(0.05)
    await tube.put("late")
    task = await asyncio.wait_for(waiter, 5)
    assert task is not None and task.data == "late"


async def test_touch_release_with_delay_bury_kick_delete(third_party: asynctnt_queue.Queue) -> None:
    tube = third_party.tube("ios")
    task = await tube.put("work", ttr=5)
    await tube.take(1)
    touched = await tube.touch(task.task_id, 10)
    assert touched.status == Status.TAKEN
    released = await tube.release(task.task_id, delay=0.1)
    assert released.status == Status.DELAYED
    again = await tube.take(5)
    assert again is not None and again.task_id == task.task_id
    buried = await again.bury()
    assert buried.status == Status.BURIED
    assert await tube.kick(1) == 1
    peeked = await tube.peek(task.task_id)
    assert peeked.status == Status.READY
    deleted = await tube.delete(task.task_id)
    assert deleted.status == Status.EXECUTED


async def test_statistics(third_party: asynctnt_queue.Queue) -> None:
    tube = third_party.tube("fanout")
    await tube.put(1)
    await tube.put(2)
    await tube.take()
    stats = await tube.statistics()
    assert stats["tasks"]["ready"] == 1 and stats["tasks"]["taken"] == 1
    assert stats["calls"]["put"] == 2
    everything = await third_party.statistics()
    assert "fanout" in everything and "ios" in everything
