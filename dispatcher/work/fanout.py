"""Broadcast fan-out, in two strategies chosen per broadcast. Each step is
one stored-function call (lua/node/fanout.lua ``step``): it takes a fan-out
task, reads its slice of the audience from the local replica, enqueues the
send tasks and writes what comes next, all in one transaction, so a crash
re-runs a step that left nothing behind and a slice is enqueued once
whichever node runs it. This worker decides where work goes:

*Baton* ``{b, after, page}``: "the audience after this cursor". A step
enqueues its page and hands the baton for the rest to the next live node in
the ring.

*Cascade* ``{b, range}``: a range of about n index rows. A small range
becomes send tasks; a big one is cut into parts (by position in the index,
so skewed keys cut evenly) dealt round the live nodes.

What a step writes for another node waits in this node's outbox, held (a
holder row) by this node, until the worker forwards it in batches; the
receiving node then holds it. The one watchdog: the tasks held by a node
down for ``baton_silence_s`` are re-issued by its ring successor, whatever
the strategy.

Fan-out waits while more send tasks are ready than the high-water mark
(delayed ones, such as a local_time broadcast's, do not count), so a huge
broadcast never needs all of its tasks in memory at once. ``send_at``
delays the first fan-out task; ``local_time`` ("08:00") delays each
device's task to that hour in its own time zone, worked out per zone once
when the broadcast is created (``zones_for``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from dispatcher.core import metrics
from dispatcher.core.errors import StoreError
from dispatcher.node.contract import Fanout
from dispatcher.node.records import Forward, Step
from dispatcher.node.store import Store
from dispatcher.work.peers import Peers

log = logging.getLogger(__name__)

# A step waits this long for a fan-out task; the outbox is looked at between.
TAKE_WAIT_S = 0.1
# Outbox rows forwarded per round.
FORWARD_BATCH = 500


def next_local_time(local_time: str, tz: str, start: float) -> float:
    """The epoch second of the first ``local_time`` (HH:MM) in zone ``tz``
    (UTC when the zone is unknown) at or after ``start``."""
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    hour, minute = (int(part) for part in local_time.split(":"))
    here = dt.datetime.fromtimestamp(start, zone)
    target = here.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if target.timestamp() < start:
        target = (here + dt.timedelta(days=1)).replace(hour=hour, minute=minute, second=0, microsecond=0)
    return target.timestamp()


@cache
def all_zones() -> list[str]:
    return sorted(available_timezones() | {"UTC"})


def zones_for(local_time: str, start: float) -> dict[str, float]:
    """When ``local_time`` next comes in every time zone, from ``start``."""
    return {z: next_local_time(local_time, z, start) for z in all_zones()}


class FanoutWorker:
    def __init__(self, me: str, store: Store, page_size: int = 1000, high_water: int = 200_000,
                 peers: Peers | None = None, baton_silence_s: float = 15.0, cascade_parts: int = 64) -> None:
        self.me = me
        self.fanout = Fanout(store)
        self.page_size = page_size
        self.high_water = high_water
        self.peers = peers
        self.baton_silence_s = baton_silence_s
        self.cascade_parts = cascade_parts

    async def run(self, stop: asyncio.Event) -> None:
        next_watch = time.monotonic() + self.baton_silence_s / 3
        while not stop.is_set():
            try:
                step = await self.fanout.step(page_size=self.page_size, leaf=self.page_size,
                                              parts=self.cascade_parts, targets=self._targets(),
                                              next_node=self._next(), high_water=self.high_water,
                                              timeout_s=TAKE_WAIT_S, forwards=FORWARD_BATCH)
                self._count(step)
                if step.forwards:
                    await self._forward(step.forwards)
                if self.peers is not None and time.monotonic() >= next_watch:
                    next_watch = time.monotonic() + self.baton_silence_s / 3
                    await self._watch()
            except StoreError as e:
                log.warning("fan-out: %s", e)
                await asyncio.sleep(1)

    @staticmethod
    def _count(step: Step) -> None:
        for platform, n in step.put.items():
            metrics.ENQUEUED.labels(platform).inc(n)
        if step.started:
            metrics.BROADCASTS.labels("started").inc()
        if step.fanned_out:
            metrics.BROADCASTS.labels("fanned_out").inc()
        if step.outcome == "failed":
            log.error("fan-out: a step of %s failed (again later): %s", step.broadcast, step.error)
        elif step.outcome == "not_here":
            log.info("fan-out: broadcast %s not here yet; waiting for replication", step.broadcast)

    def _next(self) -> str:
        """Where the next baton goes: the next live node in the ring."""
        return self.peers.next_alive() if self.peers is not None else self.me

    def _targets(self) -> list[str]:
        """Where cascade parts go: this node, then the live peers in ring order."""
        if self.peers is None:
            return [self.me]
        ring = self.peers.ring
        start = ring.index(self.me)
        alive = set(self.peers.alive())
        return [self.me] + [n for n in ring[start + 1:] + ring[:start] if n in alive]

    async def _forward(self, waiting: list[Forward]) -> None:
        """Sends rows of the outbox on (every step's answer carries the
        oldest), a batch per node: to the node each task was meant for, or
        the next live one, or keeps them here when no peer answers."""
        by_target: dict[str, list[Forward]] = {}
        for forward in waiting:
            by_target.setdefault(self._target(forward), []).append(forward)
        for target, forwards in by_target.items():
            where = self.fanout if target == self.me or self.peers is None else Fanout(self.peers.store(target))
            try:
                await where.accept(forwards, origin=self.me)
            except StoreError as e:
                log.warning("fan-out: cannot forward %d tasks to %s (%s); trying again", len(forwards), target, e)
                continue
            await self.fanout.outbox_done([f.id for f in forwards])

    def _target(self, forward: Forward) -> str:
        if self.peers is None:
            return self.me
        if forward.to == self.me or forward.to in self.peers.alive():
            return forward.to
        instead = self.peers.next_alive(forward.to)
        log.warning("fan-out: %s does not answer; a task of %s meant for it goes to %s instead",
                    forward.to, forward.data.get("b"), instead)
        return instead

    async def _watch(self) -> None:
        """Re-issues the fan-out tasks held by nodes down for baton_silence_s,
        each by the ring successor of the node that held it."""
        assert self.peers is not None
        down = self.peers.down_for(self.baton_silence_s)
        if not down:
            return
        mine = [o for o in await self.fanout.orphans(down) if self.peers.next_alive(o.node) == self.me]
        if mine:
            for o in mine:
                log.warning("fan-out: %s held a task of %s and is down; re-issuing it here", o.node, o.broadcast)
            metrics.FANOUT_TAKEN_OVER.labels("node_down").inc(len(mine))
            await self.fanout.reissue(mine)
