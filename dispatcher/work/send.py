"""The send pipeline of one platform: take send tasks from its tube, keep up
to the platform's window of pushes in flight (taking more as slots free,
never waiting for the slowest of a batch), and settle each task only after
its gateway's verdict, in small batches (dispatcher/work/settle.py).

    delivered   -> ack
    dead token  -> first verdict: back to the queue, marked suspect, for
                   guard_confirm_s; second verdict, guard not tripped:
                   remove the device and ack (one transaction)
    temporary   -> back to the queue after a backoff delay, for as long as
                   the push's ttl and the retry deadline allow
    our mistake -> (auth, certificate, topic, project) the app's gateway
                   pauses; the task goes back to the queue, untouched
    permanent   -> bury, with a dead letter giving the reason
    expired     -> ack unsent, counted (never sent late)
    cancelled   -> ack unsent, counted

A task that cannot be sent for a reason of its own (malformed, a message
that no longer validates, a bug) is buried with that reason; no other task
is touched. A task whose broadcast cannot be read now (Tarantool busy) goes
back to the queue. Stopping: take nothing more, finish what is in flight,
settle it. Whatever stays taken (a crash, a stall) comes back by ttr.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pydantic import ValidationError

from dispatcher.core import metrics
from dispatcher.core.backoff import Backoff
from dispatcher.core.config import DispatchSettings
from dispatcher.core.errors import StoreError
from dispatcher.gateways.messages import Message, apns_payload, fcm_message
from dispatcher.gateways.push import Push, Verdict, encode
from dispatcher.node.contract import Broadcasts
from dispatcher.node.queue import Task, Tube
from dispatcher.node.store import Store
from dispatcher.node.tasks import SendTask
from dispatcher.work.apps import Apps, Route
from dispatcher.work.broadcast_cache import BroadcastCache
from dispatcher.work.settle import Item, Settler, ack, bury, release

log = logging.getLogger(__name__)

# A task whose broadcast cannot be read now comes back this much later.
STORE_RETRY_S = 1.0
# When every gate of the platform is paused, look again at least this often.
IDLE_CHECK_S = 0.5


class SendPipeline:
    def __init__(self, platform: str, tube: Tube, apps: Apps, store: Store, broadcasts: Broadcasts,
                 backoff: Backoff, dispatch: DispatchSettings, request_timeout_s: float) -> None:
        self.platform = platform
        self.metrics = metrics.SendMetrics.bind(platform)
        self.tube = tube
        self.apps = apps
        self.store = store
        self.cache = BroadcastCache(broadcasts)
        self._bodies: dict[str, bytes] = {}  # broadcast id -> its gateway body, encoded
        self.backoff = backoff
        self.batch = dispatch.batch
        self.confirm_s = dispatch.guard_confirm_s
        self.window = max(1, apps.window(platform))
        # Take when this many slots are free (or the pipeline is empty): not
        # a round trip per freed slot, not lockstep either.
        self.take_at = max(1, min(self.batch, self.window // 10))
        self.request_timeout_s = request_timeout_s
        self.settler = Settler(store, tube.name, dispatch.settle_batch, dispatch.settle_interval_s, self._landed)
        self._in_flight: set[asyncio.Task[None]] = set()
        # Tasks taken and not yet settled (in flight, or sent and waiting for
        # their settle to land): the window bounds these, so a crash sends
        # at most a window's worth twice.
        self._held = 0
        self._slot_freed = asyncio.Event()
        # Tasks in a row that met a paused gate: at a take's worth, the
        # queue holds the paused apps' tasks, and taking them only to put
        # them back is churn. Then take as when every gate is paused.
        self._met_paused = 0

    async def run(self, stop: asyncio.Event) -> None:
        # The settler outlives the sends: what they conclude still lands.
        sends_over = asyncio.Event()
        settling = asyncio.create_task(self.settler.run(sends_over))
        try:
            await self._take_loop(stop)
            if self._in_flight:
                await asyncio.gather(*self._in_flight, return_exceptions=True)
        finally:
            sends_over.set()
            await settling

    async def _take_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            free = self.window - self._held
            if free < self.take_at and self._held:
                self._slot_freed.clear()
                if self.settler.unflushed:
                    self.settler.flush()  # the window is full: settle now, not at the next tick
                await _first(self._slot_freed.wait(), stop.wait())
                continue
            gates = self.apps.gates(self.platform)
            paused = [g for g in gates if g.paused]
            if paused and (len(paused) == len(gates) or self._met_paused >= self.take_at):
                # Take nothing but one task at a time: a probe when one is due.
                wait = min(g.probe_in_s() for g in paused)
                await _first(asyncio.sleep(min(wait, IDLE_CHECK_S)), stop.wait())
                if stop.is_set():
                    break
                free = 1
            try:
                tasks = await self.tube.take_many(min(free, self.batch), timeout_s=0.5,
                                                  give_up_at=time.time() + self.request_timeout_s - 1)
            except StoreError as e:
                log.warning("%s: cannot take tasks: %s", self.platform, e)
                await _first(asyncio.sleep(1), stop.wait())
                continue
            self._held += len(tasks)
            for task in tasks:
                handling = asyncio.create_task(self._handle(task))
                self._in_flight.add(handling)
                handling.add_done_callback(self._done)

    def _done(self, handling: asyncio.Task[None]) -> None:
        self._in_flight.discard(handling)

    def _landed(self, n: int) -> None:
        self._held -= n
        self._slot_freed.set()

    async def _handle(self, task: Task) -> None:
        try:
            send = SendTask.from_wire(task.data)
        except ValueError as e:
            self._bury(task, None, f"malformed task: {e}")
            return
        broadcast = send.broadcast
        try:
            item = await self._attempt(task, send)
        except StoreError as e:
            log.warning("%s: task %d: %s; back to the queue", self.platform, task.id, e)
            item = release(task.id, broadcast, None, STORE_RETRY_S)
        except (ValidationError, ValueError) as e:
            self._bury(task, broadcast, f"message no longer valid: {_first_line(e)}")
            return
        except Exception as e:  # a bug: this task is buried, the others go on
            log.exception("%s: task %d failed", self.platform, task.id)
            self._bury(task, broadcast, f"internal error: {type(e).__name__}: {_first_line(e)}")
            return
        self.settler.add(item)

    def _bury(self, task: Task, broadcast: str | None, reason: str) -> None:
        self.settler.add(self._dead_letter(task, broadcast, reason))

    def _dead_letter(self, task: Task, broadcast: str | None, reason: str) -> Item:
        """Buries the task with ``reason``, counted as failed."""
        self.metrics.dead_letters.inc()
        self.metrics.failed.inc()
        return bury(task.id, broadcast, reason)

    def _message_body(self, message: dict[str, Any]) -> bytes:
        m = Message.model_validate(message)
        return encode(apns_payload(m) if self.platform == "ios" else fcm_message(m))

    async def _payload(self, send: SendTask) -> tuple[bytes, str | None, str | None] | None:
        """The gateway body, collapse key and app, or None if the broadcast
        is gone or cancelled. A broadcast's body is built once, not per push."""
        if send.kind == "m":
            return self._message_body(send.ref["message"]), send.ref.get("collapse_key"), send.app
        broadcast = await self.cache.get(send.ref)
        if broadcast is None or broadcast.state == "cancelled":
            return None
        body = self._bodies.get(broadcast.id)
        if body is None:
            if len(self._bodies) > 10_000:
                self._bodies.clear()
            body = self._bodies[broadcast.id] = self._message_body(broadcast.spec["message"])
        app = send.app or (broadcast.spec.get("audience") or {}).get("app")
        return body, broadcast.spec.get("collapse_key"), app

    async def _attempt(self, task: Task, send: SendTask) -> Item:
        b = send.broadcast
        now = time.time()
        if now >= send.expires_at:
            return self._expired(task, b)
        resolved = await self._payload(send)
        if resolved is None:
            self.metrics.cancelled.inc()
            return ack(task.id, b, "cancelled")
        body, collapse_key, app = resolved
        route = self.apps.route(app or self.apps.sole_app(self.platform) or "", self.platform)
        if route is None:
            # Configuration changed under queued tasks (or another node
            # knows an app this one does not): they wait, never lost.
            log.warning("%s: no credentials for app %r here; task %d waits", self.platform, app, task.id)
            return self._later(task, send, b, self.backoff.jittered(60.0), now)
        probe = route.gate.paused
        if not route.gate.admit():
            self._met_paused += 1
            return self._later(task, send, b, route.gate.retry_in_s(), now)
        if not probe:
            self._met_paused = 0
        push = Push(send.token, body, ttl_s=max(1, int(send.expires_at - now)), collapse_key=collapse_key,
                    topic=route.topic)
        if not send.first_attempt_at:
            send.first_attempt_at = now
        m = self.metrics
        m.in_flight.inc()
        started = time.monotonic()
        try:
            outcome = await route.sender.send(push)
        finally:
            m.in_flight.dec()
        m.latency.observe(time.monotonic() - started)
        route.gate.record(outcome.verdict, outcome.reason, probe=probe, confirming=send.suspect)
        return self._verdict(task, send, b, route, outcome.verdict, outcome.reason, outcome.retry_after_s)

    def _verdict(self, task: Task, send: SendTask, b: str | None, route: Route, verdict: Verdict, reason: str,
                 retry_after_s: float | None) -> Item:
        now = time.time()
        if verdict is Verdict.DELIVERED:
            self.metrics.delivered.inc()
            return ack(task.id, b, "delivered")
        if verdict is Verdict.DEAD_TOKEN:
            if route.gate.guard.tripped:
                return self._later(task, send, b, route.gate.retry_in_s(), now)
            if not send.suspect:
                send.suspect = True
                return self._later(task, send, b, self.backoff.jittered(self.confirm_s), now)
            self.metrics.dead_token.inc()
            self.metrics.dead_tokens.inc()
            return ack(task.id, b, "dead_tokens", remove=send.token)
        if verdict is Verdict.CONFIG:
            return self._later(task, send, b, route.gate.retry_in_s(), now)
        if verdict is Verdict.TEMPORARY:
            delay = self.backoff.next_delay_s(send.attempt + 1, now - send.first_attempt_at, retry_after_s)
            if delay is None:
                return self._dead_letter(task, b, f"retry deadline passed: {reason}")
            send.attempt += 1
            self.metrics.retries.inc()
            return self._later(task, send, b, delay, now)
        return self._dead_letter(task, b, reason)

    def _later(self, task: Task, send: SendTask, b: str | None, delay_s: float, now: float) -> Item:
        """Back to the queue for ``delay_s``; expired instead when the push
        would be past its ttl by then."""
        if now + delay_s >= send.expires_at:
            return self._expired(task, b)
        return release(task.id, b, "retries", delay_s, send.retry())

    def _expired(self, task: Task, b: str | None) -> Item:
        self.metrics.expired.inc()
        self.metrics.expired_push.inc()
        return ack(task.id, b, "expired")


async def _first(*aws: Any) -> None:
    """Waits for the first of these to finish and cancels the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:300] if str(e) else type(e).__name__
