"""kill -9 of Tarantool loses no task: after a restart every task is there,
and the ones that were taken are ready again."""

from __future__ import annotations

import asyncio

from dispatcher.core.config import Settings
from dispatcher.core.errors import NodeUnavailable
from dispatcher.node.contract import Subscribers
from dispatcher.node.queue import Queue
from dispatcher.node.records import Registration
from dispatcher.node.store import Store
from dispatcher.node.tarantool_process import TarantoolProcess


async def test_kill_9_and_restart_keeps_every_task(settings: Settings, tarantool: TarantoolProcess) -> None:
    store = Store(settings.tarantool)
    await store.connect()
    tube = Queue(store).tube("ios")
    ids = await tube.put_many([{"n": i} for i in range(2000)])
    delayed = await tube.put("later", delay_s=3600)
    taken = await tube.take_many(500)
    buried = await tube.bury(taken[0].id)
    acked = taken[1:100]
    assert await tube.ack_many([t.id for t in acked]) == []
    await Subscribers(store).put(Registration("tok-1", "user-1", "ios", "news"))

    tarantool.kill()
    with_calls_failing = False
    try:
        await tube.peek(ids[0])
    except NodeUnavailable:
        with_calls_failing = True
    assert with_calls_failing, "a call to a killed node must fail with NodeUnavailable"

    tarantool.start()
    # The same Store reconnects by itself once the node is back.
    for _ in range(100):
        try:
            stats = (await tube.statistics())["tasks"]
            break
        except NodeUnavailable:
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("the store did not reconnect after the restart")
    try:
        assert stats["total"] == 2000 + 1 - len(acked)
        assert stats["taken"] == 0, "taken tasks must be ready again after a restart"
        assert stats["buried"] == 1 and stats["delayed"] == 1
        assert stats["ready"] == 2000 - len(acked) - 1
        assert (await tube.peek(delayed.id)).data == "later"
        assert (await tube.peek(buried.id)).status == "!"
        survivors = {t.data["n"] for t in await tube.take_many(5000)}
        assert survivors == set(range(2000)) - {t.data["n"] for t in acked} - {0}
        assert (await Subscribers(store).get("tok-1")) is not None
        # New ids do not collide with surviving ones.
        fresh = await tube.put("after restart")
        assert fresh.id > max(ids)
    finally:
        await store.close()
