"""The fan-out's watchdog on a node whose peers are down, over a real
Tarantool: it must take over what the dead peer held and leave alone what
it cannot judge yet (a broadcast that has not finished a page)."""

from __future__ import annotations

import asyncio

from dispatcher.core.config import ClusterNode, ClusterSettings, Settings
from dispatcher.node.broadcasts import Broadcasts
from dispatcher.node.queue import Queue
from dispatcher.node.store import Store
from dispatcher.work.fanout import FanoutWorker
from dispatcher.work.peers import Peers

SPEC = {"message": {"title": "t", "body": "b"}, "audience": {"app": "news"}, "ttl_s": 60, "strategy": "baton"}


def worker(settings: Settings, store: Store) -> FanoutWorker:
    # node2 is listed but never answers: its port has nothing behind it.
    me = settings.node.name
    nodes = [ClusterNode(name=me, tarantool=settings.tarantool.address, http="127.0.0.1:1"),
             ClusterNode(name="node2", tarantool="127.0.0.1:9", http="127.0.0.1:2")]
    peers = Peers(ClusterSettings(nodes=nodes), me, settings.tarantool)
    return FanoutWorker(me, Queue(store), Broadcasts(store), peers=peers, baton_silence_s=0.05)


async def test_watch_takes_over_a_dead_peers_task_and_skips_a_broadcast_with_no_page(
    settings: Settings, store: Store
) -> None:
    w = worker(settings, store)
    broadcasts = Broadcasts(store)
    # A running broadcast with no page done yet, whose first task node2 holds.
    b, _ = await broadcasts.create("watch-1", "running", SPEC, home="node2")
    task = await Queue(store).tube("fanout").take(0)
    assert task is not None and task.data["to"] == "node2"
    await store.call("node.fanout_forwarded", (task.id, b.id, {"b": b.id, "after": None, "page": 0}, "node2"))
    assert await Queue(store).tube("fanout").take(0) is None, "forwarded away: nothing left here"
    w.peers.down_for(0.05)  # type: ignore[union-attr]  # node2 first seen down now
    await asyncio.sleep(0.1)
    await w._watch()  # no page marker yet: the baton check must pass over it
    again = await Queue(store).tube("fanout").take(0)
    assert again is not None and again.data == {"b": b.id, "after": None, "page": 0}, "node2's task is back here"
    held = (await store.call("node.fanout_orphans", (b.id, [settings.node.name, "node2"])))[0]
    assert [row[2] for row in held] == [settings.node.name], "and this node holds it now"
