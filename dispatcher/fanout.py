"""Broadcast fan-out on one node: a fan-out task ``{"b": id, "after": cursor}``
in the ``fanout`` tube stands for "the rest of the audience after cursor".
A step reads one page of the audience, enqueues its send tasks, puts the
task for the next page and acks its own. Fan-out waits while the send
tubes are above the high-water mark, so a huge broadcast never needs all of
its tasks in memory at once.

Scheduling: ``send_at`` delays the first fan-out task (not each push);
``local_time`` ("08:00") delays each device's task to that hour in its own
time zone, one ``put_many`` per (platform, zone) of a page.

A step (the page's send tasks, the progress counters, the next step's task
and this step's ack) is one Tarantool transaction, so a crash re-runs a
step that left nothing behind: each page is enqueued once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import defaultdict
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dispatcher import metrics
from dispatcher.broadcasts import Broadcasts
from dispatcher.errors import StoreError
from dispatcher.queue import Queue, Task
from dispatcher.subscribers import Audience, Subscribers
from dispatcher.tasks import SendTask

log = logging.getLogger(__name__)


def local_delay_s(local_time: str, tz: str, now: float) -> float:
    """Seconds from ``now`` until the next ``local_time`` (HH:MM) in ``tz``
    (UTC when the zone is unknown)."""
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    hour, minute = (int(part) for part in local_time.split(":"))
    here = dt.datetime.fromtimestamp(now, zone)
    target = here.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if target <= here:
        target = (here + dt.timedelta(days=1)).replace(hour=hour, minute=minute, second=0, microsecond=0)
    return target.timestamp() - now


class FanoutWorker:
    def __init__(self, queue: Queue, subscribers: Subscribers, broadcasts: Broadcasts,
                 page_size: int = 1000, high_water: int = 200_000) -> None:
        self.queue = queue
        self.tube = queue.tube("fanout")
        self.subscribers = subscribers
        self.broadcasts = broadcasts
        self.page_size = page_size
        self.high_water = high_water

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                task = await self.tube.take(0.5)
                if task is not None:
                    await self._step(task)
            except StoreError as e:
                log.warning("fan-out: %s", e)
                await asyncio.sleep(1)

    async def _send_tubes_full(self) -> bool:
        stats = await self.queue.statistics()
        ready = sum(stats[name]["tasks"]["ready"] + stats[name]["tasks"]["delayed"] for name in ("ios", "android"))
        return bool(ready > self.high_water)

    async def _step(self, task: Task) -> None:
        broadcast = await self.broadcasts.get(task.data["b"])
        if broadcast is None or broadcast.state in ("cancelled", "done"):
            await self.tube.ack(task.id)
            return
        if await self._send_tubes_full():
            await self.tube.release(task.id, delay_s=1.0)
            return
        if broadcast.state == "scheduled":
            await self.broadcasts.set_state(broadcast.id, "running")
            metrics.BROADCASTS.labels("started").inc()
        spec = broadcast.spec
        after = tuple(task.data["after"]) if task.data.get("after") else None
        audience = Audience(spec["audience"].get("app"), spec["audience"].get("platform"),
                            tuple(spec["audience"].get("topics") or ()))
        rows, cursor = await self.subscribers.page(after, self.page_size, audience)
        now = time.time()
        groups: dict[tuple[str, float], list[Any]] = defaultdict(list)
        delays: dict[str, float] = {}
        for sub in rows:
            delay = 0.0
            if spec.get("local_time"):
                if sub.tz not in delays:
                    delays[sub.tz] = local_delay_s(spec["local_time"], sub.tz, now)
                delay = delays[sub.tz]
            expires_at = now + delay + spec["ttl_s"]
            groups[(sub.platform, delay)].append(
                SendTask("b", broadcast.id, sub.token, sub.platform, expires_at).wire())
        batches: list[tuple[str, float, list[Any]]] = [(p, d, items) for (p, d), items in groups.items()]
        counts = {"targeted": len(rows), "enqueued": len(rows)}
        if cursor is None:
            counts["fanout_done"] = 1
        next_task = {"b": broadcast.id, "after": list(cursor)} if cursor is not None else None
        # One transaction: the page's tasks, the progress, the next step and
        # this step's ack; a crash re-runs the step with nothing enqueued.
        await self.queue.store.call("node.fanout_step", (task.id, batches, {broadcast.id: counts}, next_task))
        for platform, _, items in batches:
            metrics.ENQUEUED.labels(platform).inc(len(items))
        if cursor is None:
            metrics.BROADCASTS.labels("fanned_out").inc()
