"""Broadcast fan-out, in two strategies chosen per broadcast. The steps that
touch subscribers run inside Tarantool (lua/node/fanout.lua): a step reads
its slice of the audience from the local replica and enqueues the send
tasks in one transaction, with the slice's marker, its progress and the ack
of the fan-out task, so a crash re-runs a step that left nothing behind and
a slice is enqueued once whichever node runs it. This worker decides where
the work goes.

*Baton* ``{"b", "after"}``: "the audience after this cursor". A step finds
where its page ends, hands the baton for the rest to the next live node in
the ring *before* enqueuing its page (if this node dies now the broadcast
goes on), then enqueues the page. The newest page marker is the checkpoint:
when no page has been done for ``baton_silence_s``, the ring successor of
the node that did the last one re-issues the baton from there.

*Cascade* ``{"b", "range": [after, upto, n, weight]}``: a range of about n
index rows. A small range becomes send tasks; a big one is cut into parts
(by position in the index, so skewed keys cut evenly) dealt round the live
nodes. Parts for other nodes wait in this node's tube as ``{..., "to"}``
until forwarded, so a cut commits all at once. Every part has a holder row;
the parts held by a node down for ``baton_silence_s`` are re-issued by its
ring successor (as is a broadcast's first task, whatever the strategy).

Fan-out waits while the send tubes are above the high-water mark, so a huge
broadcast never needs all of its tasks in memory at once. ``send_at``
delays the first fan-out task (not each push); ``local_time`` ("08:00")
delays each device's task to that hour in its own time zone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from dispatcher.core import metrics
from dispatcher.core.backoff import Backoff
from dispatcher.core.errors import StoreError
from dispatcher.node.broadcasts import Broadcast, Broadcasts, fanned_out
from dispatcher.node.queue import Queue, Task
from dispatcher.node.tasks import SendBacklog
from dispatcher.work import settle
from dispatcher.work.peers import Peers

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


@cache
def all_zones() -> list[str]:
    return sorted(available_timezones() | {"UTC"})


class FanoutWorker:
    def __init__(self, me: str, queue: Queue, broadcasts: Broadcasts, page_size: int = 1000,
                 high_water: int = 200_000, peers: Peers | None = None, baton_silence_s: float = 15.0,
                 cascade_parts: int = 64, backoff: Backoff | None = None, request_timeout_s: float = 10.0) -> None:
        self.me = me
        self.queue = queue
        self.tube = queue.tube("fanout")
        self.store = queue.store
        self.broadcasts = broadcasts
        self.page_size = page_size
        self.high_water = high_water
        self.peers = peers
        self.baton_silence_s = baton_silence_s
        self.cascade_parts = cascade_parts
        self._zone_at: dict[str, tuple[float, dict[str, float]]] = {}
        self._reissued: dict[tuple[str, Any], float] = {}
        self._backlog = SendBacklog(queue, max_age_s=0.25)
        self.backoff = backoff or Backoff(base_s=1.0, cap_s=60.0)
        self.request_timeout_s = request_timeout_s
        self._failures: dict[int, int] = {}  # task id -> steps failed in a row

    async def run(self, stop: asyncio.Event) -> None:
        next_watch = time.monotonic() + self.baton_silence_s / 3
        while not stop.is_set():
            try:
                tasks = await self.tube.take_many(1, timeout_s=0.5,
                                                  give_up_at=time.time() + self.request_timeout_s - 1)
                for task in tasks:
                    await self._try_step(task)
                if self.peers is not None and time.monotonic() >= next_watch:
                    next_watch = time.monotonic() + self.baton_silence_s / 3
                    await self._watch()
            except StoreError as e:
                log.warning("fan-out: %s", e)
                await asyncio.sleep(1)

    async def _try_step(self, task: Task) -> None:
        """One step; a step that fails goes back to the queue with backoff
        (the release sent until it lands, as a settle is)."""
        try:
            await self._step(task)
            self._failures.pop(task.id, None)
        except Exception as e:
            failures = self._failures[task.id] = self._failures.get(task.id, 0) + 1
            if len(self._failures) > 10_000:
                self._failures.clear()
            delay = self.backoff.delay_s(failures)
            if isinstance(e, StoreError):
                log.warning("fan-out: step of task %d failed (%s); again in %.1f s", task.id, e, delay)
            else:
                log.exception("fan-out: step of task %d failed; again in %.1f s", task.id, delay)
            await settle.land(self.store, self.tube.name, [settle.release(task.id, None, None, delay)])

    async def _call(self, function: str, *args: Any) -> list[Any]:
        return await self.store.call("node." + function, args)

    def _zones(self, broadcast: Broadcast) -> dict[str, float] | None:
        """For a local_time broadcast: when that hour next comes in each zone
        (epoch seconds), worked out once a minute."""
        local_time = broadcast.spec.get("local_time")
        if not local_time:
            return None
        now = time.time()
        at, zones = self._zone_at.get(local_time, (0.0, {}))
        if now - at > 60:
            zones = {z: now + local_delay_s(local_time, z, now) for z in all_zones()}
            self._zone_at[local_time] = (now, zones)
        return zones

    async def _step(self, task: Task) -> None:
        broadcast = await self.broadcasts.get(task.data["b"])
        if broadcast is None:
            # Broadcasts are never deleted: its record has not replicated
            # here yet (a task can travel faster than the row).
            log.info("fan-out: broadcast %s not here yet; waiting for replication", task.data["b"])
            await self.tube.release(task.id, delay_s=0.5)
            return
        if broadcast.state in ("cancelled", "done"):
            await self.tube.ack(task.id)
            return
        if "to" in task.data:
            await self._forward(task, broadcast)
            return
        if await self._backlog.count(recount_above=self.high_water) > self.high_water:
            await self.tube.release(task.id, delay_s=1.0)
            return
        if broadcast.state == "scheduled":
            await self.broadcasts.set_state(broadcast.id, "running")
            metrics.BROADCASTS.labels("started").inc()
        if "range" in task.data:
            opts = {"leaf": self.page_size, "parts": self.cascade_parts, "targets": self._targets(),
                    "zone_at": self._zones(broadcast)}
            put, finished = await self._call("fanout_range_step", task.id, broadcast.id, task.data, opts)
        else:
            put, finished = await self._baton(task, broadcast)
        for platform, n in (put or {}).items():
            metrics.ENQUEUED.labels(platform).inc(n)
            self._backlog.added(n)
        if finished and fanned_out(await self.broadcasts.progress(broadcast.id)):
            metrics.BROADCASTS.labels("fanned_out").inc()

    async def _baton(self, task: Task, broadcast: Broadcast) -> list[Any]:
        after = task.data.get("after")
        done, cursor = await self._call("fanout_next_cursor", broadcast.id, after, self.page_size)
        if done:  # this baton ran elsewhere already
            await self.tube.ack(task.id)
            return [None, False]
        opts: dict[str, Any] = {"zone_at": self._zones(broadcast)}
        if cursor is not None:
            baton = {"b": broadcast.id, "after": cursor, "page": task.data.get("page", 0) + 1}
            opts["next"] = baton
            target = self.peers.next_alive() if self.peers is not None else self.me
            if self.peers is not None and target != self.me:
                # The baton goes first: if this node dies now, the broadcast goes on.
                try:
                    await self.peers.queue(target).tube("fanout").put(baton)
                    opts = {**opts, "next": None, "handed": [target, baton]}
                except StoreError as e:
                    log.warning("fan-out: cannot hand the baton to %s (%s); keeping it", target, e)
        return await self._call("fanout_enqueue", task.id, broadcast.id, task.data, after, cursor, opts)

    def _targets(self) -> list[str]:
        """Where cascade parts go: this node, then the live peers in ring order."""
        if self.peers is None:
            return [self.me]
        ring = self.peers.ring
        start = ring.index(self.me)
        alive = set(self.peers.alive())
        return [self.me] + [n for n in ring[start + 1:] + ring[:start] if n in alive]

    async def _forward(self, task: Task, broadcast: Broadcast) -> None:
        """Sends a task waiting here (a cascade part, a first task) on to its
        node, or to the next live one, or keeps it when no peer takes it."""
        part = {k: v for k, v in task.data.items() if k != "to"}
        target = task.data["to"]
        if self.peers is not None and target != self.me and target not in self.peers.alive():
            target = self.peers.next_alive(target)
        if self.peers is not None and target != self.me:
            try:
                await self.peers.queue(target).tube("fanout").put(part)
            except StoreError as e:
                log.warning("fan-out: cannot forward a range to %s (%s); keeping it", target, e)
                target = self.me
        await self._call("fanout_forwarded", task.id, broadcast.id, part, target)

    async def _watch(self) -> None:
        """Re-issues fan-out work that stopped: the tasks held by a node down
        for baton_silence_s, and batons silent that long, each by the ring
        successor of the node it was left with."""
        assert self.peers is not None
        down = self.peers.down_for(self.baton_silence_s)
        for broadcast in await self.broadcasts.list(50):
            if broadcast.state not in ("scheduled", "running"):
                continue
            if down:
                for _, data, node, due in (await self._call("fanout_orphans", broadcast.id, down))[0]:
                    if self.peers.next_alive(node) == self.me:
                        log.warning("fan-out: %s held a task of %s and is down; re-issuing it here",
                                    node, broadcast.id)
                        metrics.FANOUT_TAKEN_OVER.labels("node_down").inc()
                        await self._call("fanout_reissue", broadcast.id, data, due)
            if broadcast.state == "running" and broadcast.spec.get("strategy") != "cascade":
                await self._watch_baton(broadcast)

    async def _watch_baton(self, broadcast: Broadcast) -> None:
        assert self.peers is not None
        body = await self._call("fanout_latest_page", broadcast.id)
        if not body or body[0] is None:
            return  # no page done yet
        latest = body[0]
        _, after, node, at, page = latest
        if after is None or time.time() - at <= self.baton_silence_s or self.peers.next_alive(node) != self.me:
            return
        key = (broadcast.id, tuple(after))
        now = time.monotonic()
        self._reissued = {k: at for k, at in self._reissued.items() if now - at <= self.baton_silence_s}
        if key in self._reissued:
            return  # re-issued here lately; it may be waiting for the send tubes
        self._reissued[key] = now
        log.warning("fan-out: baton of %s silent since %s left it; re-issuing it here", broadcast.id, node)
        metrics.FANOUT_TAKEN_OVER.labels("baton_silent").inc()
        baton = {"b": broadcast.id, "after": after, "page": (page or 0) + 1}
        await self._call("fanout_reissue", broadcast.id, baton, time.time())
