"""Links to the other nodes' Tarantool, for hand-offs between nodes (batons,
ranges): one connection per peer, kept up in the background, and which
peers answer right now. A peer that is down is skipped, never waited for."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from dispatcher.core.config import ClusterSettings, TarantoolSettings
from dispatcher.core.errors import NodeMisconfigured, StoreError
from dispatcher.node.contract import connect
from dispatcher.node.store import Store

log = logging.getLogger(__name__)


class Peers:
    def __init__(self, cluster: ClusterSettings, me: str, tarantool: TarantoolSettings) -> None:
        self.me = me
        self.ring = [n.name for n in cluster.nodes]  # the order batons travel in
        self._stores: dict[str, Store] = {}
        for node in cluster.nodes:
            if node.name != me:
                host, _, port = node.tarantool.rpartition(":")
                self._stores[node.name] = Store(tarantool.model_copy(update={"host": host, "port": int(port)}))
        self._tasks: list[asyncio.Task[None]] = []
        self._down_since: dict[str, float] = {}

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._keep_connected(name, store))
                       for name, store in self._stores.items()]

    async def _keep_connected(self, name: str, store: Store) -> None:
        while not store.connected:
            try:
                await connect(store)
                log.info("peer %s: connected (%s)", name, store.address)
            except NodeMisconfigured as e:
                # Also what a peer still joining the replica set says (no
                # users yet): keep trying, but say so.
                log.warning("peer %s: %s; trying again", name, e)
                await asyncio.sleep(2)
            except StoreError as e:
                log.info("peer %s: not reachable yet: %s", name, e)
        # From here asynctnt reconnects by itself.

    def alive(self) -> list[str]:
        """Peers whose connection is up, in ring order."""
        return [n for n in self.ring if n in self._stores and self._stores[n].connected]

    def down_for(self, min_s: float) -> list[str]:
        """Peers seen down on every look for at least ``min_s`` seconds."""
        now = time.monotonic()
        up = set(self.alive())
        for name in self._stores:
            if name in up:
                self._down_since.pop(name, None)
            else:
                self._down_since.setdefault(name, now)
        return [n for n, since in self._down_since.items() if now - since >= min_s]

    def home(self, broadcast_id: str) -> str:
        """The node a broadcast's first fan-out task goes to, fixed by its id:
        if two nodes create one broadcast at once (before either record has
        replicated), both first tasks meet on one node, and its marker lets
        only one run."""
        digest = hashlib.sha256(broadcast_id.encode()).digest()
        return self.ring[int.from_bytes(digest[:4], "big") % len(self.ring)]

    def next_alive(self, after: str | None = None) -> str:
        """The next node after ``after`` (default: this one) in ring order whose
        link is up; this node itself when no peer answers."""
        start = self.ring.index(after or self.me)
        for step in range(1, len(self.ring) + 1):
            name = self.ring[(start + step) % len(self.ring)]
            if name == self.me or name in self.alive():
                return name
        return self.me

    def store(self, name: str) -> Store:
        return self._stores[name]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for store in self._stores.values():
            await store.close()
