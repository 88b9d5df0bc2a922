"""Broadcast records as send workers need them: looked up once per few
seconds, so a cancel takes effect within ``ttl_s``; concurrent sends of one
broadcast share one lookup."""

from __future__ import annotations

import asyncio
import time

from dispatcher.node.contract import Broadcasts
from dispatcher.node.records import Broadcast


class BroadcastCache:
    def __init__(self, broadcasts: Broadcasts, ttl_s: float = 2.0) -> None:
        self._broadcasts = broadcasts
        self._ttl_s = ttl_s
        self._entries: dict[str, tuple[float, asyncio.Future[Broadcast | None]]] = {}

    async def get(self, id_: str) -> Broadcast | None:
        now = time.monotonic()
        entry = self._entries.get(id_)
        if entry is None or now - entry[0] > self._ttl_s or (entry[1].done() and entry[1].exception()):
            if len(self._entries) > 10_000:
                self._entries.clear()
            entry = (now, asyncio.ensure_future(self._broadcasts.get(id_)))
            self._entries[id_] = entry
        if entry[1].done():
            return entry[1].result()  # the common case: no await, no shield
        return await asyncio.shield(entry[1])
