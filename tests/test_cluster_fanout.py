"""Fan-out across a real three-node cluster on loopback (each node its own
``dispatcher run`` process with its own Tarantool; the fake gateways in this
process count what arrives), 100,000 devices, for both strategies: every
device exactly once; a node killed with SIGKILL in the middle does not stall
the broadcast, and once it is back every device has had it; a node down
before the broadcast leaves nothing out; one key created on two nodes at
once runs once."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dispatcher.cluster_up import NodeProcess, cluster_settings
from dispatcher.fakes.gateways import FakeGateways
from dispatcher.node.contract import Broadcasts, Fanout, Subscribers
from dispatcher.node.records import Registration
from dispatcher.node.store import Store
from tests.conftest import apns_token, fcm_token

DEVICES = 100_000
SPORT = 10  # every 10th device also follows "sport"
STRATEGIES = ("baton", "cascade")


def token(i: int) -> str:
    return apns_token(i) if i % 2 == 0 else fcm_token(i)


class Node(NodeProcess):
    """A node process the test can kill like a crash: SIGKILL to the
    dispatcher and to its Tarantool (which runs in its own session)."""

    def __init__(self, directory: Path, settings: Any) -> None:
        super().__init__(directory, settings)
        self.name = settings.node.name
        self.api = f"http://{settings.api.host}:{settings.api.port}"
        self.store = Store(settings.tarantool)

    def kill(self) -> None:
        assert self.proc is not None
        for pid in [*children(self.proc.pid), self.proc.pid]:
            os.kill(pid, signal.SIGKILL)


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


class Cluster:
    def __init__(self, nodes: list[Node], fakes: FakeGateways, key: str) -> None:
        self.nodes, self.fakes = nodes, fakes
        self.headers = {"Authorization": f"Bearer {key}"}

    async def create(self, node: Node, key: str, strategy: str, audience: dict[str, Any] | None = None) -> str:
        spec = {"message": {"title": "Cluster", "body": "news"}, "audience": audience or {"app": "news"},
                "ttl_s": 3600, "strategy": strategy}
        async with aiohttp.ClientSession() as http, http.post(
            f"{node.api}/v1/broadcasts", json=spec, headers={**self.headers, "Idempotency-Key": key}
        ) as r:
            assert r.status == 200, await r.text()
            return str((await r.json())["id"])

    def accepted(self) -> dict[str, int]:
        return {**self.fakes.apns.counters.accepted, **self.fakes.fcm.counters.accepted}

    async def wait(self, done: Any, seconds: float, what: str) -> None:
        for _ in range(int(seconds * 10)):
            if await done():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{what}: not after {seconds} s")


async def progress(node: Node, id_: str) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    broadcasts = Broadcasts(node.store)
    return await broadcasts.progress(id_), await broadcasts.progress_by_node(id_)


async def state(node: Node, id_: str) -> str | None:
    """The broadcast's stored state as this node has it."""
    found = await Broadcasts(node.store).get(id_)
    return found.state if found else None


def fanned_out(total: dict[str, int]) -> bool:
    return total["fanout_total"] > 0 and total["fanout_done"] >= total["fanout_total"]


@pytest.fixture
async def cluster(tmp_path: Path, gateways: FakeGateways) -> AsyncIterator[Cluster]:
    settings = cluster_settings(tmp_path, 3, 0, 0, gateways, demo_devices=0)
    nodes = []
    for s in settings:
        # A low high-water mark keeps the fan-out going at the pace of
        # delivery, so that a node dies in the middle of it.
        dispatch = s.dispatch.model_copy(update={"baton_silence_s": 3.0, "high_water": 4000})
        tarantool = s.tarantool.model_copy(update={"reconnect_interval_s": 0.2})
        nodes.append(Node(tmp_path, s.model_copy(update={"dispatch": dispatch, "tarantool": tarantool})))
    api_keys = settings[0].api.keys
    assert api_keys is not None
    c = Cluster(nodes, gateways, api_keys[0].key.get_secret_value())
    try:
        for node in nodes:
            await node.start()
        await asyncio.gather(*(n.wait_up() for n in nodes))  # a new cluster starts together

        async def all_peers_alive() -> bool:  # as the fan-out sees them: a part goes to live peers only
            async with aiohttp.ClientSession() as http:
                for n in nodes:
                    async with http.get(f"{n.api}/readyz") as r:
                        if r.status != 200 or len((await r.json())["peers_alive"]) != len(nodes) - 1:
                            return False
            return True

        await c.wait(all_peers_alive, 60, "every node sees its peers")
        for node in nodes:
            await node.store.connect()
        regs = [Registration(token(i), f"user-{i:06d}", "ios" if i % 2 == 0 else "android", "news",
                             ("breaking", "sport") if i % SPORT == 0 else ("breaking",))
                for i in range(DEVICES)]
        for start in range(0, DEVICES, 5000):
            await Subscribers(nodes[0].store).put_many(regs[start:start + 5000])

        async def replicated() -> bool:
            last = (f"user-{DEVICES - 1:06d}", "")
            return all([(await Subscribers(n.store).page(last, 1))[0] for n in nodes])

        await c.wait(replicated, 60, "devices on every replica")
        yield c
    finally:
        for node in nodes:
            await node.store.close()
        await asyncio.gather(*(n.stop() for n in nodes))


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_every_device_exactly_once(cluster: Cluster, strategy: str) -> None:
    id_ = await cluster.create(cluster.nodes[0], f"once-{strategy}", strategy)

    async def delivered() -> bool:  # read on a node that did not start it: rows replicate
        total, _ = await progress(cluster.nodes[2], id_)
        return total["delivered"] >= DEVICES and await state(cluster.nodes[2], id_) == "done"

    await cluster.wait(delivered, 300, "every device delivered, the broadcast done")
    total, per_node = await progress(cluster.nodes[2], id_)
    assert total["delivered"] == total["enqueued"] == DEVICES and total["fanout_done"] == total["fanout_total"]
    got = cluster.accepted()
    assert len(got) == DEVICES and max(got.values()) == 1, "every device exactly once"
    assert all(per_node[n.name]["enqueued"] > DEVICES // 10 for n in cluster.nodes), "every node took a share"
    async with aiohttp.ClientSession() as http, http.get(
        f"{cluster.nodes[1].api}/v1/broadcasts/{id_}", headers=cluster.headers
    ) as r:
        assert (await r.json())["state"] == "done"


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_killed_node_does_not_stall_the_broadcast(cluster: Cluster, strategy: str) -> None:
    nodes = cluster.nodes
    id_ = await cluster.create(nodes[0], f"kill-{strategy}", strategy)

    async def started() -> bool:
        return len(cluster.accepted()) > 10_000

    await cluster.wait(started, 120, "the broadcast under way")
    assert await state(nodes[0], id_) == "running", "the node must die in the middle of the fan-out"
    names = [n.name for n in nodes]

    async def holders(on: Node) -> list[str]:
        return [o.node for o in await Fanout(on.store).orphans(names) if o.broadcast == id_]

    # The victim: a node holding fan-out work not done yet (the baton, or
    # cascade parts). A baton can move on in the moment before the kill: then
    # the dead node held nothing, so it is started again and another tried.
    for _ in range(5):
        held = await holders(nodes[0])
        assert held, "some fan-out work is still to do"
        victim = names.index(max(set(held), key=held.count))
        dead = nodes[victim]
        dead.kill()
        survivor = nodes[(victim + 1) % len(nodes)]
        if dead.name in await holders(survivor):
            break
        await dead.stop()
        await dead.start()
        await dead.wait_up()
    else:
        raise AssertionError("no node died holding fan-out work in five tries")

    async def finished_without_it() -> bool:
        return fanned_out((await progress(survivor, id_))[0]) and await state(survivor, id_) != "running"

    await cluster.wait(finished_without_it, 240, f"fan-out finished without {dead.name}")
    picked_up = [line for n in nodes if n is not dead for line in n.output().splitlines()
                 if "re-issuing" in line or "instead" in line]
    assert picked_up, "the work left with the dead node was picked up by a live one"
    await dead.stop()
    await dead.start()  # back with what it had queued
    await dead.wait_up()
    everyone = {token(i) for i in range(DEVICES)}

    async def all_delivered() -> bool:
        return set(cluster.accepted()) >= everyone

    await cluster.wait(all_delivered, 300, "every device at least once")


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_node_down_before_the_broadcast(cluster: Cluster, strategy: str) -> None:
    nodes = cluster.nodes
    nodes[1].kill()
    await nodes[1].stop()
    live = [nodes[0], nodes[2]]

    async def noticed() -> bool:
        async with aiohttp.ClientSession() as http:
            seen = []
            for node, other in zip(live, reversed(live), strict=True):
                async with http.get(f"{node.api}/readyz") as r:
                    seen.append((await r.json())["peers_alive"] == [other.name])
        return all(seen)

    await cluster.wait(noticed, 30, "both live nodes see node2 gone")
    id_ = await cluster.create(nodes[0], f"down-{strategy}", strategy)

    async def sent() -> bool:
        return len(cluster.accepted()) >= DEVICES

    await cluster.wait(sent, 300, "every device sent by the live nodes")
    got = cluster.accepted()
    assert len(got) == DEVICES and max(got.values()) == 1, "the live nodes send it all, once"

    async def settled() -> bool:  # the last settles commit and replicate just after the gateway counted them
        return (await progress(nodes[2], id_))[0]["delivered"] == DEVICES

    await cluster.wait(settled, 10, "progress of every push")
    assert "node2" not in (await progress(nodes[2], id_))[1]


async def test_one_key_created_on_two_nodes_at_once_runs_once(cluster: Cluster) -> None:
    """Both creations happen before either record replicates; the first
    tasks meet on one node, so each device gets it once."""
    sport = {"app": "news", "topics": ["sport"]}
    ids = await asyncio.gather(*(cluster.create(n, "same-key", "baton", sport) for n in cluster.nodes[:2]))
    assert ids[0] == ids[1]
    fans = DEVICES // SPORT

    async def delivered() -> bool:
        total, _ = await progress(cluster.nodes[2], ids[0])
        return total["delivered"] >= fans and fanned_out(total)

    await cluster.wait(delivered, 120, "every fan delivered")
    await asyncio.sleep(1)  # anything sent twice would arrive by now
    got = cluster.accepted()
    assert len(got) == fans and max(got.values()) == 1, "each fan exactly once"
