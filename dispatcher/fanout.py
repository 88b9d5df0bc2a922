"""Broadcast fan-out: a fan-out task ``{"b": id, "after": cursor}`` in a
node's ``fanout`` tube stands for "the rest of the audience after cursor".
A step reads one page of the audience from the local replica, enqueues its
send tasks, and hands on the task for the next page. Fan-out waits while the
send tubes are above the high-water mark, so a huge broadcast never needs
all of its tasks in memory at once.

In a cluster the next-page task is a baton: it goes to the next live node
in the ring *before* this node enqueues its page, so the broadcast moves on
even if this node dies now. A replicated marker per page makes pages
idempotent (a page whose baton ran twice is enqueued once), and the newest
marker is the checkpoint: when no page has been done for ``baton_silence_s``,
the ring successor of the node that did the last one re-issues the baton
from there.

Scheduling: ``send_at`` delays the first fan-out task (not each push);
``local_time`` ("08:00") delays each device's task to that hour in its own
time zone, one ``put_many`` per (platform, zone) of a page.

A step (the page's send tasks, the progress counters, the next step's task
when it stays here, the page marker and this step's ack) is one Tarantool
transaction, so a crash re-runs a step that left nothing behind.
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
from dispatcher.peers import Peers
from dispatcher.queue import Queue, Task
from dispatcher.subscribers import Audience, Cursor, Subscribers
from dispatcher.tasks import SendTask, send_backlog

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


def page_key(cursor: Cursor | None) -> str:
    """A page's name in the markers: the cursor before it ("^" at the start)."""
    return "^" if cursor is None else f"{cursor[0]}\x00{cursor[1]}"


def page_cursor(key: str) -> Cursor | None:
    if key == "^":
        return None
    user_id, _, token = key.partition("\x00")
    return (user_id, token)


class FanoutWorker:
    def __init__(self, queue: Queue, subscribers: Subscribers, broadcasts: Broadcasts,
                 page_size: int = 1000, high_water: int = 200_000, peers: Peers | None = None,
                 baton_silence_s: float = 15.0) -> None:
        self.queue = queue
        self.tube = queue.tube("fanout")
        self.store = queue.store
        self.subscribers = subscribers
        self.broadcasts = broadcasts
        self.page_size = page_size
        self.high_water = high_water
        self.peers = peers
        self.baton_silence_s = baton_silence_s

    async def run(self, stop: asyncio.Event) -> None:
        next_watch = time.monotonic() + self.baton_silence_s / 3
        while not stop.is_set():
            try:
                task = await self.tube.take(0.5)
                if task is not None:
                    await self._step(task)
                if self.peers is not None and time.monotonic() >= next_watch:
                    next_watch = time.monotonic() + self.baton_silence_s / 3
                    await self._watch_batons()
            except StoreError as e:
                log.warning("fan-out: %s", e)
                await asyncio.sleep(1)

    async def _watch_batons(self) -> None:
        """Re-issues the baton of a running broadcast whose fan-out has not
        moved for baton_silence_s, if this node is the ring successor of the
        node that moved it last."""
        assert self.peers is not None
        for broadcast in await self.broadcasts.list(50):
            if broadcast.state != "running":
                continue
            latest = (await self.store.call("node.fanout_latest_page", (broadcast.id,)))
            if not latest or latest[0] is None:
                continue
            _, next_key, node, at = latest[0]
            silent = time.time() - at > self.baton_silence_s
            if not next_key or not silent or self.peers.next_alive(node) != self.peers.me:
                continue
            if (await self.store.call("node.fanout_page_done", (broadcast.id, next_key)))[0]:
                continue
            log.warning("fan-out: baton of %s silent since %s left it; re-issuing it here", broadcast.id, node)
            after = page_cursor(next_key)
            await self.tube.put({"b": broadcast.id, "after": list(after) if after else None})

    async def _send_tubes_full(self) -> bool:
        return await send_backlog(self.queue) > self.high_water

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
        after: Cursor | None = tuple(task.data["after"]) if task.data.get("after") else None
        key = page_key(after)
        if (await self.store.call("node.fanout_page_done", (broadcast.id, key)))[0]:
            await self.tube.ack(task.id)  # this baton ran elsewhere already
            return
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
        if next_task is not None and self.peers is not None:
            # The baton goes first: if this node dies now, the broadcast goes on.
            target = self.peers.next_alive()
            if target != self.peers.me:
                try:
                    await self.peers.queue(target).tube("fanout").put(next_task)
                    next_task = None
                except StoreError as e:
                    log.warning("fan-out: cannot hand the baton to %s (%s); keeping it", target, e)
        # One transaction: the page's tasks, the progress, the next step (if
        # kept here), the page's marker and this step's ack.
        page = [key, page_key(cursor) if cursor is not None else "", broadcast.id]
        done = await self.store.call("node.fanout_step", (task.id, batches, {broadcast.id: counts}, next_task, page))
        if not done[0]:
            return  # another node did this page meanwhile
        for platform, _, items in batches:
            metrics.ENQUEUED.labels(platform).inc(len(items))
        if cursor is None:
            metrics.BROADCASTS.labels("fanned_out").inc()
