"""Client of the node's queue (lua/queue): tarantool/queue's calls plus batches.

Times are seconds, as in tarantool/queue. Batch calls move many tasks in one
round trip and one Tarantool transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from dispatcher.node.store import Store

READY, TAKEN, DONE, BURIED, DELAYED = "r", "t", "-", "!", "~"


class Task(NamedTuple):
    id: int
    status: str
    data: Any


def _options(**opts: Any) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if v is not None}


class Tube:
    """One tube of the node's queue: ``queue.tube.<name>`` on the Lua side."""

    def __init__(self, store: Store, name: str) -> None:
        self.name = name
        self._store = store
        self._fn = {
            m: f"queue.tube.{name}:{m}"
            for m in (
                "put", "take", "ack", "release", "peek", "bury", "kick", "delete",
                "touch", "truncate", "put_many", "take_many", "ack_many", "release_many",
            )
        }

    async def _task(self, method: str, *args: Any) -> Task:
        body = await self._store.call(self._fn[method], args)
        return Task(*body[0])

    async def put(
        self,
        data: Any,
        *,
        pri: int | None = None,
        ttl_s: float | None = None,
        ttr_s: float | None = None,
        delay_s: float | None = None,
        utube: str | None = None,
    ) -> Task:
        opts = _options(pri=pri, ttl=ttl_s, ttr=ttr_s, delay=delay_s, utube=utube)
        return await self._task("put", data, opts)

    async def put_many(
        self,
        items: Sequence[Any],
        *,
        pri: int | None = None,
        ttl_s: float | None = None,
        ttr_s: float | None = None,
        delay_s: float | None = None,
    ) -> list[int]:
        """Puts every item with the same options; returns their task ids."""
        opts = _options(pri=pri, ttl=ttl_s, ttr=ttr_s, delay=delay_s)
        body = await self._store.call(self._fn["put_many"], (list(items), opts))
        ids: list[int] = body[0]
        return ids

    async def take(self, timeout_s: float | None = None) -> Task | None:
        """The next ready task, waiting up to ``timeout_s`` (None: forever)."""
        args = () if timeout_s is None else (timeout_s,)
        body = await self._store.call(self._fn["take"], args)
        return Task(*body[0]) if body else None

    async def take_many(self, count: int, timeout_s: float = 0, give_up_at: float | None = None) -> list[Task]:
        """Up to ``count`` ready tasks, waiting up to ``timeout_s`` for the
        first. ``give_up_at`` (epoch seconds): Tarantool takes nothing after
        then, so a call this client has stopped waiting for (its request
        timeout) cannot hold tasks that nobody sees."""
        args: tuple[Any, ...] = (count, timeout_s)
        if give_up_at is not None:
            args = (count, timeout_s, {"give_up_at": give_up_at})
        body = await self._store.call(self._fn["take_many"], args)
        return [Task(*t) for t in body[0]]

    async def ack(self, task_id: int) -> Task:
        return await self._task("ack", task_id)

    async def ack_many(self, task_ids: Iterable[int]) -> list[int]:
        """Acks the tasks this session holds; returns the ids it did not hold."""
        body = await self._store.call(self._fn["ack_many"], (list(task_ids),))
        skipped: list[int] = body[1]
        return skipped

    async def release(self, task_id: int, *, delay_s: float | None = None, data: Any = None) -> Task:
        """Returns a taken task, after ``delay_s``; ``data`` replaces its data."""
        return await self._task("release", task_id, _options(delay=delay_s, data=data))

    async def release_many(
        self, items: Iterable[int | tuple[int, float | None, Any]], *, delay_s: float | None = None
    ) -> list[int]:
        """Releases tasks; an item is an id, or (id, delay_s, data) for a task of
        its own delay and new data. Returns the ids this session did not hold."""
        wire: list[Any] = []
        for item in items:
            if isinstance(item, tuple):
                task_id, own_delay, data = item
                wire.append([task_id, _options(delay=own_delay, data=data)])
            else:
                wire.append(item)
        body = await self._store.call(self._fn["release_many"], (wire, _options(delay=delay_s)))
        skipped: list[int] = body[1]
        return skipped

    async def peek(self, task_id: int) -> Task:
        return await self._task("peek", task_id)

    async def bury(self, task_id: int) -> Task:
        return await self._task("bury", task_id)

    async def kick(self, count: int) -> int:
        body = await self._store.call(self._fn["kick"], (count,))
        kicked: int = body[0]
        return kicked

    async def delete(self, task_id: int) -> Task:
        return await self._task("delete", task_id)

    async def touch(self, task_id: int, delta_s: float) -> Task:
        return await self._task("touch", task_id, delta_s)

    async def truncate(self) -> None:
        await self._store.call(self._fn["truncate"])

    async def statistics(self) -> dict[str, Any]:
        body = await self._store.call("queue.statistics", (self.name,))
        stats: dict[str, Any] = body[0]
        return stats


class Queue:
    """The node's tubes, by name."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._tubes: dict[str, Tube] = {}

    def tube(self, name: str) -> Tube:
        if name not in self._tubes:
            self._tubes[name] = Tube(self.store, name)
        return self._tubes[name]

    async def statistics(self) -> dict[str, Any]:
        body = await self.store.call("queue.statistics")
        stats: dict[str, Any] = body[0]
        return stats
