"""Send workers: take send tasks in batches from a platform's tube, send them,
and settle each task only after the gateway's verdict.

    delivered  -> ack
    dead token -> remove the device (the replicated, versioned write), then ack
    temporary  -> release with the backoff delay, attempt count kept in the task
    retries spent, or permanent -> bury, with a dead letter giving the reason
    expired    -> ack unsent, counted (never sent late)
    cancelled  -> ack unsent, counted

Stopping (SIGTERM): take nothing more, finish what is in flight, settle it.
Tasks taken and never settled (a crash) come back when the session ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Protocol

from dispatcher import metrics
from dispatcher.backoff import Backoff
from dispatcher.broadcasts import BroadcastCache, Broadcasts
from dispatcher.errors import StoreError
from dispatcher.messages import Message, apns_payload, fcm_message
from dispatcher.push import Outcome, Push, Verdict
from dispatcher.queue import Task, Tube
from dispatcher.store import Store
from dispatcher.subscribers import Subscribers
from dispatcher.tasks import SendTask

log = logging.getLogger(__name__)

EXPIRED, CANCELLED = "expired", "cancelled"


class Sender(Protocol):
    async def send(self, push: Push) -> Outcome: ...


@dataclass(slots=True)
class _Attempt:
    task: Task
    send: SendTask
    result: str  # a Verdict value, or EXPIRED / CANCELLED
    outcome: Outcome | None = None


class SendWorker:
    def __init__(self, platform: str, tube: Tube, sender: Sender, store: Store, broadcasts: Broadcasts,
                 backoff: Backoff, batch: int = 200, loops: int = 2) -> None:
        self.platform = platform
        self.tube = tube
        self.sender = sender
        self.store = store
        self.broadcasts = broadcasts
        self.cache = BroadcastCache(broadcasts)
        self._bodies: dict[str, dict[str, Any]] = {}  # broadcast id -> gateway body
        self.subscribers = Subscribers(store)
        self.backoff = backoff
        self.batch = batch
        self.loops = loops

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(self.loops):
                group.create_task(self._loop(stop))

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                tasks = await self.tube.take_many(self.batch, timeout_s=0.5)
            except StoreError as e:
                log.warning("%s worker: cannot take tasks: %s", self.platform, e)
                await asyncio.sleep(1)
                continue
            if tasks:
                attempts = await asyncio.gather(*(self._attempt(t) for t in tasks))
                # Bookkeeping is not to be cut short by a stop.
                await asyncio.shield(self._settle(attempts))

    def _body(self, message: dict[str, Any]) -> dict[str, Any]:
        m = Message.model_validate(message)
        return apns_payload(m) if self.platform == "ios" else fcm_message(m)

    async def _payload(self, send: SendTask) -> tuple[dict[str, Any], str | None] | None:
        """The gateway body and collapse key, or None if the broadcast is gone
        or cancelled. A broadcast's body is built once, not once per push."""
        if send.kind == "m":
            return self._body(send.ref["message"]), send.ref.get("collapse_key")
        broadcast = await self.cache.get(send.ref)
        if broadcast is None or broadcast.state == "cancelled":
            return None
        body = self._bodies.get(broadcast.id)
        if body is None:
            if len(self._bodies) > 10_000:
                self._bodies.clear()
            body = self._bodies[broadcast.id] = self._body(broadcast.spec["message"])
        return body, broadcast.spec.get("collapse_key")

    async def _attempt(self, task: Task) -> _Attempt:
        send = SendTask.from_wire(task.data)
        now = time.time()
        if now >= send.expires_at:
            return _Attempt(task, send, EXPIRED)
        resolved = await self._payload(send)
        if resolved is None:
            return _Attempt(task, send, CANCELLED)
        body, collapse_key = resolved
        push = Push(send.token, body, ttl_s=max(1, int(send.expires_at - now)), collapse_key=collapse_key)
        if not send.first_attempt_at:
            send.first_attempt_at = now
        metrics.IN_FLIGHT.labels(self.platform).inc()
        started = time.monotonic()
        try:
            outcome = await self.sender.send(push)
        finally:
            metrics.IN_FLIGHT.labels(self.platform).dec()
        metrics.GATEWAY_LATENCY.labels(self.platform).observe(time.monotonic() - started)
        return _Attempt(task, send, outcome.verdict.value, outcome)

    async def _settle(self, attempts: list[_Attempt]) -> None:
        acks: list[int] = []
        releases: list[tuple[int, float | None, Any]] = []
        buries: list[tuple[_Attempt, str]] = []
        dead_tokens: list[str] = []
        progress: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        now = time.time()
        for a in attempts:
            counts = progress[a.send.ref] if a.send.kind == "b" else defaultdict(int)
            result = a.result
            if result == Verdict.TEMPORARY:
                assert a.outcome is not None
                delay = self.backoff.next_delay_s(a.send.attempt + 1, now - a.send.first_attempt_at,
                                                  a.outcome.retry_after_s)
                if delay is not None and now + delay >= a.send.expires_at:
                    result = EXPIRED  # it would expire before the retry
                elif delay is not None:
                    a.send.attempt += 1
                    releases.append((a.task.id, delay, a.send.wire()))
                    counts["retries"] += 1
                    metrics.RETRIES.labels(self.platform).inc()
                    continue
                else:
                    buries.append((a, f"retries spent: {a.outcome.reason}"))
                    counts["failed"] += 1
                    continue
            if result == Verdict.PERMANENT:
                assert a.outcome is not None
                buries.append((a, a.outcome.reason))
                counts["failed"] += 1
                continue
            acks.append(a.task.id)
            if result == Verdict.DELIVERED:
                counts["delivered"] += 1
            elif result == Verdict.DEAD_TOKEN:
                dead_tokens.append(a.send.token)
                counts["dead_tokens"] += 1
            elif result == EXPIRED:
                counts["expired"] += 1
                metrics.EXPIRED.labels(self.platform).inc()
            else:
                counts["cancelled"] += 1
            metrics.PUSHES.labels(self.platform, result).inc()
        if dead_tokens:
            # Before the ack: a crash here removes a device twice, never zero times.
            removed = await self.subscribers.remove_many(dead_tokens)
            metrics.DEAD_TOKENS.labels(self.platform).inc(removed)
        bury_rows = [[a.task.id, reason, {"task_id": a.task.id, "task": a.send.wire()}] for a, reason in buries]
        release_rows = [[task_id, {"delay": delay, "data": data}] for task_id, delay, data in releases]
        deltas = {k: dict(v) for k, v in progress.items() if v}
        # One transaction: queue state and progress counters always agree.
        await self.store.call("node.settle", (self.tube.name, acks, release_rows, bury_rows, deltas))
        if buries:
            metrics.DEAD_LETTERS.labels(self.platform).inc(len(buries))
            metrics.PUSHES.labels(self.platform, "failed").inc(len(buries))
