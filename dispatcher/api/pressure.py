"""Back-pressure: the API refuses new work (429 with Retry-After) rather
than accept what the node cannot hold.

Two limits. Queued pushes (``api.queue_limit``), and memory: memtx's arena
in use (tuples and indexes: the node's arena_used) over
``api.memory_limit_share`` of memtx's quota. Memory is the one that
matters for one-off pushes, whose tasks carry their whole message. Not
quota_used: slabs once taken stay counted there when their tuples go.

The memory reading is at most MEMORY_MAX_AGE_S old, and every write admitted
since it is added to it at its estimated size, so a burst of requests
within one reading cannot overshoot the limit by more than the estimates
are wrong.
"""

from __future__ import annotations

import asyncio
import time

from dispatcher.api.problems import ApiError
from dispatcher.node.contract import Status
from dispatcher.node.tasks import SendBacklog

MEMORY_MAX_AGE_S = 0.1
# What a stored row costs beyond its fields (tuple header, index entries).
ROW_OVERHEAD_BYTES = 256


class Pressure:
    def __init__(self, status: Status, backlog: SendBacklog, queue_limit: int, memory_limit_share: float,
                 quota_bytes: int, retry_after_s: int) -> None:
        self._status = status
        self._backlog = backlog
        self._queue_limit = queue_limit
        self._share = memory_limit_share
        self._quota_bytes = quota_bytes
        self._retry_after = {"Retry-After": str(retry_after_s)}
        self._lock = asyncio.Lock()
        self._read_at = -1e9
        self._used_bytes = 0
        self._added_bytes = 0

    def _refuse(self, why: str) -> ApiError:
        return ApiError(429, f"{why}; retry later", headers=self._retry_after)

    async def admit(self, estimate_bytes: int, tasks: int = 0) -> None:
        """Admits a write of about ``estimate_bytes`` adding ``tasks`` send
        tasks, or raises a 429."""
        if tasks:
            depth = await self._backlog.count(recount_above=self._queue_limit)
            if depth + tasks > self._queue_limit:
                raise self._refuse(f"the node holds {depth} queued pushes, over its limit")
        used, quota = await self._memory()
        if used + estimate_bytes > self._share * quota:
            raise self._refuse(f"the node's memory is {100 * used / quota:.0f}% used, over its limit")
        self._added_bytes += estimate_bytes
        if tasks:
            self._backlog.added(tasks)

    async def _memory(self) -> tuple[int, int]:
        """Bytes in use (the last reading plus what was admitted since) and
        the quota."""
        if time.monotonic() - self._read_at > MEMORY_MAX_AGE_S:
            async with self._lock:
                if time.monotonic() - self._read_at > MEMORY_MAX_AGE_S:
                    memory = await self._status.memory()
                    self._used_bytes = int(memory["arena_used"])
                    # The node's own figure when it gives one (an operator may
                    # run Tarantool with another quota than our settings say).
                    self._quota_bytes = int(memory.get("quota_size") or self._quota_bytes)
                    self._added_bytes = 0
                    self._read_at = time.monotonic()
        return self._used_bytes + self._added_bytes, self._quota_bytes
