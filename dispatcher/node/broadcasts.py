"""Broadcast records and their progress, through the node's stored functions."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dispatcher.node.store import Store

# Progress counters, summed over nodes.
COUNTERS = ("targeted", "enqueued", "delivered", "dead_tokens", "failed", "expired", "cancelled", "retries")
SETTLED = ("delivered", "dead_tokens", "failed", "expired", "cancelled")
# What a cascade's whole audience weighs (see lua/node/fanout.lua): a power
# of two, under 2^47 so that Tarantool hands it to Lua as a number, which
# parts can halve 46 times.
FANOUT_WEIGHT = 2**46


@dataclass(frozen=True, slots=True)
class Broadcast:
    id: str
    idempotency_key: str
    state: str
    created: float
    spec: dict[str, Any]

    @classmethod
    def from_row(cls, row: list[Any]) -> Broadcast:
        return cls(row[0], row[1], row[2], row[3], row[6])


def broadcast_id(idempotency_key: str) -> str:
    """Derived from the key, so any node creating "the same" broadcast writes
    the same record."""
    return "b_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]


class Broadcasts:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(self, idempotency_key: str, state: str, spec: dict[str, Any],
                     start_in_s: float = 0.0, home: str | None = None) -> tuple[Broadcast, bool]:
        """The broadcast for this key: created now (True) with its first fan-out
        task due in ``start_in_s``, or the one that was. The first task runs
        on node ``home`` (see Peers.home) when given, else here."""
        id_ = broadcast_id(idempotency_key)
        first: dict[str, Any] = {"b": id_, "after": None, "page": 0}
        if spec.get("strategy") == "cascade":
            first = {"b": id_, "range": [None, None, None, FANOUT_WEIGHT]}  # the whole index
        if home is not None:
            first["to"] = home
        first_task = [first, max(0.0, start_in_s)]
        body = await self._store.call("node.broadcast_create", (id_, idempotency_key, state, spec, first_task))
        return Broadcast.from_row(body[0]), bool(body[1])

    async def get(self, id_: str) -> Broadcast | None:
        body = await self._store.call("node.broadcast_get", (id_,))
        return Broadcast.from_row(body[0]) if body and body[0] is not None else None

    async def list(self, limit: int = 50, before: float | None = None) -> list[Broadcast]:
        body = await self._store.call("node.broadcast_list", (limit, before))
        return [Broadcast.from_row(r) for r in body[0]]

    async def set_state(self, id_: str, state: str) -> Broadcast:
        body = await self._store.call("node.broadcast_set_state", (id_, state))
        return Broadcast.from_row(body[0])

    async def progress(self, id_: str) -> dict[str, int]:
        body = await self._store.call("node.progress", (id_,))
        return _with_pending(body[0])

    async def progress_many(self, ids: Sequence[str]) -> Sequence[dict[str, int]]:
        body = await self._store.call("node.progress_many", (list(ids),))
        return [_with_pending(raw) for raw in body[0]]


def _with_pending(raw: dict[str, int] | None) -> dict[str, int]:
    total = {name: 0 for name in COUNTERS}
    total.update(raw or {})
    total["pending"] = max(0, total["enqueued"] - sum(total[name] for name in SETTLED))
    return total


def fanned_out(progress: dict[str, int]) -> bool:
    """Whether every slice of the audience has been enqueued, from counters
    summed over the nodes (see lua/node/fanout.lua)."""
    total = progress.get("fanout_total", 0)
    return total > 0 and progress.get("fanout_done", 0) >= total


def shown_state(broadcast: Broadcast, progress: dict[str, int]) -> str:
    """The state readers see: a running broadcast whose fan-out is over and
    whose pushes are all settled is done (computed, not stored, as every
    node contributes to it)."""
    if broadcast.state == "running" and fanned_out(progress) and progress["pending"] == 0:
        return "done"
    return broadcast.state


class BroadcastCache:
    """Broadcast records as send workers need them: looked up once per few
    seconds, so a cancel takes effect within ``ttl_s``; concurrent sends of
    one broadcast share one lookup."""

    def __init__(self, broadcasts: Broadcasts, ttl_s: float = 2.0) -> None:
        self._broadcasts = broadcasts
        self._ttl_s = ttl_s
        self._entries: dict[str, tuple[float, asyncio.Future[Broadcast | None]]] = {}

    async def get(self, id_: str) -> Broadcast | None:
        now = time.monotonic()
        entry = self._entries.get(id_)
        if entry is None or now - entry[0] > self._ttl_s or (entry[1].done() and entry[1].exception()):
            entry = (now, asyncio.ensure_future(self._broadcasts.get(id_)))
            self._entries[id_] = entry
        if entry[1].done():
            return entry[1].result()  # the common case: no await, no shield
        return await asyncio.shield(entry[1])
