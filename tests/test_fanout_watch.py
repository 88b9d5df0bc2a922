"""The fan-out worker on a node whose peer is down, over a real Tarantool:
the watchdog takes over what the dead peer held (one path, over holders,
whatever the strategy), and the outbox forwards what was meant for the dead
peer to a live node instead."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dispatcher.core.config import ClusterNode, ClusterSettings, Settings
from dispatcher.node.contract import Broadcasts, Fanout
from dispatcher.node.queue import Queue
from dispatcher.node.store import Store
from dispatcher.work.fanout import FanoutWorker
from dispatcher.work.peers import Peers
from tests.admin import console

SPEC = {"message": {"title": "t", "body": "b"}, "audience": {"app": "news"}, "ttl_s": 60}


def worker(settings: Settings, store: Store) -> FanoutWorker:
    # node2 is listed but never answers: its port has nothing behind it.
    me = settings.node.name
    nodes = [ClusterNode(name=me, tarantool=settings.tarantool.address, http="127.0.0.1:1"),
             ClusterNode(name="node2", tarantool="127.0.0.1:9", http="127.0.0.1:2")]
    peers = Peers(ClusterSettings(nodes=nodes), me, settings.tarantool)
    return FanoutWorker(me, store, peers=peers, baton_silence_s=0.05)


@pytest.mark.parametrize("strategy", ["baton", "cascade"])
async def test_watch_takes_over_a_dead_peers_task(settings: Settings, store: Store, strategy: str) -> None:
    w = worker(settings, store)
    b, _ = await Broadcasts(store).create(f"watch-{strategy}", {**SPEC, "strategy": strategy}, home="node2")
    [waiting] = await Fanout(store).outbox(10)
    assert waiting.to == "node2"
    # node2 took it (its holder row, as replication would bring it), then died.
    lua = (f"box.space.fanout_outbox:delete({waiting.id}) local h = box.space.fanout_holder:select('{b.id}')[1] "
           "box.space.fanout_holder:update({h[1], h[2]}, {{'=', 4, 'node2'}})")
    console(settings.node.data_dir, lua)
    assert [o.node for o in await Fanout(store).orphans(["node2"])] == ["node2"]
    assert await Queue(store).tube("fanout").take(0) is None, "nothing of it here"
    w.peers.down_for(0.05)  # type: ignore[union-attr]  # node2 first seen down now
    await asyncio.sleep(0.1)
    await w._watch()
    again = await Queue(store).tube("fanout").take(0)
    assert again is not None and again.data["b"] == b.id and ("range" in again.data) == (strategy == "cascade")
    held = await Fanout(store).orphans([settings.node.name, "node2"])
    assert [o.node for o in held] == [settings.node.name], "this node holds it now"


async def test_the_outbox_goes_to_a_live_node_when_its_own_is_down(
    settings: Settings, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    w = worker(settings, store)
    b, _ = await Broadcasts(store).create("forward-1", SPEC, home="node2")
    with caplog.at_level(logging.WARNING):
        await w._forward(await Fanout(store).outbox(10))
    assert await Fanout(store).outbox(10) == [], "forwarded: the outbox is empty"
    task = await Queue(store).tube("fanout").take(0)
    assert task is not None and task.data["b"] == b.id, "kept here, node2 being down"
    assert "node2 does not answer" in caplog.text and "instead" in caplog.text
    assert [o.node for o in await Fanout(store).orphans([settings.node.name])] == [settings.node.name]
