"""Settling sent tasks: what each push came to goes to Tarantool in small
batches (``node.settle``, one transaction per batch), flushed by count or
by time, and sent again until it lands. Settling is idempotent on the Lua
side (an item counts only if this session still holds its task), so a batch
whose answer was lost is simply sent again."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from dispatcher.core import metrics
from dispatcher.core.errors import StoreError, StoreRejected
from dispatcher.node.contract import Pushes
from dispatcher.node.store import Store

log = logging.getLogger(__name__)

# {task_id, action, broadcast_id | None, counter | None, extra | None}
Item = list[Any]


def ack(task_id: int, broadcast: str | None, counter: str | None, remove: str | None = None) -> Item:
    return [task_id, "ack", broadcast, counter, {"remove": remove} if remove else None]


def release(task_id: int, broadcast: str | None, counter: str | None, delay_s: float,
            retry: dict[str, Any] | None = None) -> Item:
    """Back to the queue after ``delay_s``; ``retry`` (a send task's attempt,
    first_attempt_at, suspect) changes those fields of the task."""
    extra: dict[str, Any] = {"delay": delay_s}
    if retry is not None:
        extra["retry"] = retry
    return [task_id, "release", broadcast, counter, extra]


def bury(task_id: int, broadcast: str | None, reason: str) -> Item:
    """Buried, with a dead letter that keeps the task and says why."""
    return [task_id, "bury", broadcast, "failed" if broadcast else None, {"reason": reason}]


class Settler:
    """``on_landed(n)`` is called as each batch of n items has landed (or
    been refused: its tasks come back by ttr)."""

    def __init__(self, store: Store, tube: str, batch: int, interval_s: float,
                 on_landed: Callable[[int], None] = lambda n: None) -> None:
        self.store = store
        self.tube = tube
        self.batch = batch
        self.interval_s = interval_s
        self.on_landed = on_landed
        self._items: list[Item] = []
        self._due = asyncio.Event()
        self._landing: set[asyncio.Task[None]] = set()

    def add(self, item: Item) -> None:
        self._items.append(item)
        if len(self._items) >= self.batch:
            self._due.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Flushes every interval_s, or at once when a batch is full, until
        ``stop``; then flushes what is left."""
        while not stop.is_set():
            try:
                async with asyncio.timeout(self.interval_s):
                    await self._due.wait()
            except TimeoutError:
                pass
            self.flush()
        await self.drain()

    def flush(self) -> None:
        """Starts landing what has been added so far (in the background, so a
        stalled Tarantool holds up no sends)."""
        self._due.clear()
        while self._items:
            items, self._items = self._items[:self.batch], self._items[self.batch:]
            task = asyncio.create_task(self._land(items))
            self._landing.add(task)
            task.add_done_callback(self._landing.discard)

    async def drain(self) -> None:
        """Waits until everything added has landed (stopping, tests)."""
        self.flush()
        while self._landing:
            await asyncio.shield(asyncio.gather(*self._landing, return_exceptions=True))

    @property
    def unflushed(self) -> int:
        return len(self._items)

    async def _land(self, items: list[Item]) -> None:
        try:
            await land(self.store, self.tube, items)
        finally:
            self.on_landed(len(items))


RETRY_FIRST_S = 0.1
RETRY_CAP_S = 2.0


async def land(store: Store, tube: str, items: list[Item]) -> None:
    """Settles ``items`` of ``tube`` in one transaction, sent again until it
    lands (Tarantool stalled, read-only, out of memory for a while)."""
    wait = RETRY_FIRST_S
    first_failure = 0.0
    while True:
        try:
            await Pushes(store).settle(tube, items)
            if first_failure:
                log.warning("%s: a settle landed after %.1f s of retries", tube, time.monotonic() - first_failure)
            return
        except StoreRejected as e:
            # Our own bug: retrying cannot help. The tasks stay taken until
            # their ttr returns them to the queue.
            log.error("%s: Tarantool refused a settle of %d tasks: %s; they return after their ttr",
                      tube, len(items), e)
            return
        except StoreError as e:
            metrics.SETTLE_FAILURES.labels(tube).inc()
            if not first_failure:
                first_failure = time.monotonic()
                log.warning("%s: settling %d tasks failed (%s); sending it again until it lands",
                            tube, len(items), e)
            await asyncio.sleep(wait)
            wait = min(RETRY_CAP_S, wait * 2)
