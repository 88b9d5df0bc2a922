"""Tarantool replication between nodes: a new cluster bootstraps one replica
set, rows replicate, and versioned rows converge after a partition."""

from __future__ import annotations

import asyncio
import glob
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from dispatcher.core.config import Settings
from dispatcher.node.contract import SCHEMA_VERSION, Broadcasts, Status, Subscribers
from dispatcher.node.queue import Queue
from dispatcher.node.records import Registration
from dispatcher.node.store import Store
from dispatcher.node.tarantool_process import TarantoolProcess
from tests.admin import console
from tests.conftest import free_port, node_settings

REPLICATOR_PASSWORD = "replicator-password"


def cluster_settings(tmp_path: Path, count: int) -> list[Settings]:
    ports = [free_port() for _ in range(count)]
    out = []
    for i, port in enumerate(ports):
        s = node_settings(tmp_path / f"n{i}", name=f"n{i}", port=port)
        peers = [f"127.0.0.1:{p}" for p in ports if p != port]
        out.append(s.model_copy(update={"node": s.node.model_copy(update={
            "peers": peers, "replicator_password": SecretStr(REPLICATOR_PASSWORD)})}))
    return out


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[TarantoolProcess]]:
    nodes = [TarantoolProcess(s) for s in cluster_settings(tmp_path, 3)]
    try:
        for node in nodes:  # a new cluster's nodes wait for each other
            node.start(wait=False)
        for node in nodes:
            node.wait_ready()
        yield nodes
    finally:
        for node in nodes:
            node.kill()


async def connect(node: TarantoolProcess) -> Store:
    store = Store(node.settings.tarantool)
    await store.connect()
    return store


async def eventually(check, timeout_s: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout_s / 0.05)):
        if await check():
            return True
        await asyncio.sleep(0.05)
    return bool(await check())


async def test_one_replica_set_and_rows_replicate(cluster: list[TarantoolProcess]) -> None:
    ids = [console(n.settings.node.data_dir, "return box.info.id, box.info.cluster.uuid") for n in cluster]
    assert sorted(i[0] for i in ids) == [1, 2, 3]
    assert len({i[1] for i in ids}) == 1, "one replica set"
    # A first start waits for its peers as long as the dispatcher waits for
    # it (Tarantool's own 30 s stopped a compose node whose peer's name was
    # not yet in DNS).
    waited = [console(n.settings.node.data_dir, "return box.cfg.replication_connect_timeout")[0] for n in cluster]
    assert waited == [n.settings.tarantool.startup_timeout_s for n in cluster]
    stores = [await connect(n) for n in cluster]
    try:
        await Subscribers(stores[0]).put(Registration("tok-r", "u", "ios", "news"))

        async def everywhere() -> bool:
            return all([await Subscribers(s).get("tok-r") is not None for s in stores])

        assert await eventually(everywhere)
        infos = [await Status(s).info() for s in stores]
        assert {i["schema_version"] for i in infos} == {SCHEMA_VERSION}
    finally:
        for s in stores:
            await s.close()


async def test_writes_on_both_sides_of_a_partition_converge(cluster: list[TarantoolProcess]) -> None:
    a, b = cluster[0], cluster[1]
    uris = console(a.settings.node.data_dir, "return box.cfg.replication")[0]
    for node in cluster:  # cut every link
        console(node.settings.node.data_dir, "box.cfg{replication = {}}")
    stores = [await connect(n) for n in (a, b)]
    try:
        await Subscribers(stores[0]).put(Registration("tok-p", "u", "ios", "news", ("from-a",)))
        await asyncio.sleep(0.01)
        await Subscribers(stores[1]).put(Registration("tok-p", "u", "android", "news", ("from-b",)))
        for node in cluster:  # heal
            console(node.settings.node.data_dir, f"box.cfg{{replication = {{{', '.join(repr(u) for u in uris)}}}}}")

        async def converged() -> bool:
            rows = [await Subscribers(s).get("tok-p") for s in stores]
            return all(r is not None and r.topics == ("from-b",) for r in rows)

        assert await eventually(converged, 15), "both nodes keep the newer write (b's)"
        rows = [await Subscribers(s).get("tok-p") for s in stores]
        assert rows[0] == rows[1]
        status = console(a.settings.node.data_dir,
                         "local s = {} for _, r in pairs(box.info.replication) do "
                         "if r.upstream then s[#s + 1] = r.upstream.status end end return s")[0]
        assert set(status) == {"follow"}, "replication still runs"
    finally:
        for s in stores:
            await s.close()


# libfaketime (Debian's package libfaketime, installed by .ci/test): a
# process whose clock runs ahead, whatever the machine's.
FAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))


async def test_a_cancel_wins_over_a_node_whose_clock_runs_ahead(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut off from each other, n0 cancels a broadcast and n1, its clock
    an hour ahead, moves it on (its write carries the later version); once
    they meet again, both keep the cancel. n1's clock is set ahead only
    while the link is cut: a node that far ahead never finishes syncing with
    its peers (Tarantool counts the gap as replication lag)."""
    assert FAKETIME, "libfaketime is not installed (apt-get install libfaketime)"
    clock = tmp_path / "n1-clock"
    clock.write_text("+0\n")
    nodes = [TarantoolProcess(s) for s in cluster_settings(tmp_path, 2)]
    try:
        nodes[0].start(wait=False)
        with monkeypatch.context() as m:
            m.setenv("LD_PRELOAD", FAKETIME[0])
            m.setenv("FAKETIME_TIMESTAMP_FILE", str(clock))
            m.setenv("FAKETIME_NO_CACHE", "1")
            m.setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            nodes[1].start(wait=False)
        for node in nodes:
            node.wait_ready()
        dirs = [n.settings.node.data_dir for n in nodes]
        stores = [await connect(n) for n in nodes]
        try:
            spec = {"message": {"title": "t"}, "audience": {"app": "news"}, "ttl_s": 60}
            b, _ = await Broadcasts(stores[0]).create("clock-ahead", spec)

            async def on_n1() -> bool:
                return await Broadcasts(stores[1]).get(b.id) is not None

            assert await eventually(on_n1)
            uris = console(dirs[0], "return box.cfg.replication")[0]
            for d in dirs:
                console(d, "box.cfg{replication = {}}")
            assert (await Broadcasts(stores[0]).cancel(b.id)).state == "cancelled"
            clock.write_text("+1h\n")

            async def n1_ahead() -> bool:  # Tarantool's clock follows within a second
                return bool(console(dirs[1], "return require('fiber').time()")[0] - time.time() > 3500)

            assert await eventually(n1_ahead, 5), "n1's clock runs an hour ahead"
            console(dirs[1], f"local b = require('node.broadcasts') "
                             f"b.advance(box.space.broadcast:get('{b.id}'), 'running')")
            version = f"return box.space.broadcast:get('{b.id}')[5]"
            assert console(dirs[1], version)[0] > console(dirs[0], version)[0] + 3000 * 10**6, \
                "n1's write carries the later version"
            clock.write_text("+0\n")
            await asyncio.sleep(1.5)
            for d in dirs:
                console(d, f"box.cfg{{replication = {{{', '.join(repr(u) for u in uris)}}}}}")

            async def cancelled_everywhere() -> bool:
                return [(await Broadcasts(s).get(b.id) or b).state for s in stores] == ["cancelled"] * 2

            assert await eventually(cancelled_everywhere, 15), "the cancel wins on both nodes"
        finally:
            for s in stores:
                await s.close()
    finally:
        for node in nodes:
            node.kill()


async def test_a_node_restarts_while_its_peers_are_down(tmp_path: Path) -> None:
    settings = cluster_settings(tmp_path, 2)
    nodes = [TarantoolProcess(s) for s in settings]
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            node.wait_ready()
        nodes[1].kill()
        nodes[0].stop()
        nodes[0].start()  # connect quorum 0 after the first start
        store = await connect(nodes[0])
        await store.close()
    finally:
        for node in nodes:
            node.kill()


async def test_peer_links_know_who_is_alive(cluster: list[TarantoolProcess]) -> None:
    from dispatcher.core.config import ClusterNode, ClusterSettings
    from dispatcher.work.peers import Peers

    nodes = [ClusterNode(name=n.settings.node.name, tarantool=n.settings.tarantool.address,
                         http=f"127.0.0.1:{free_port()}") for n in cluster]
    peers = Peers(ClusterSettings(nodes=nodes), "n0", cluster[0].settings.tarantool)
    peers.start()
    try:
        async def both_up() -> bool:
            return peers.alive() == ["n1", "n2"]

        assert await eventually(both_up)
        assert peers.next_alive() == "n1" and peers.next_alive("n1") == "n2" and peers.next_alive("n2") == "n0"
        task = await Queue(peers.store("n2")).tube("fanout").put({"b": "handed-over"})
        assert task.data == {"b": "handed-over"}
        cluster[1].kill()

        async def n1_gone() -> bool:
            return peers.alive() == ["n2"]

        assert await eventually(n1_gone)
        assert peers.next_alive() == "n2", "a dead neighbour is skipped"
        cluster[2].kill()

        async def all_gone() -> bool:
            return peers.alive() == []

        assert await eventually(all_gone)
        assert peers.next_alive() == "n0", "alone, the node hands to itself"
    finally:
        await peers.close()
