"""Whether an app's gateway may be sent to now, and whether its dead-token
verdicts may remove devices.

A *gate* per app and platform is either sending or paused. It pauses when
the gateway says our credentials or settings are wrong (at once), when it
fails ``failures_to_pause`` pushes in a row (an outage: a circuit breaker),
or when the removal guard trips. While paused, nothing is sent but one
probe per interval (jittered, growing to a cap); the first probe the
gateway answers properly resumes it. Tasks that meet a paused gate go back
to the queue with a delay: they are never buried and no device is removed.

The *removal guard* counts dead-token verdicts among an app's last
``min_sends`` verdicts. At ``share`` of ``min_sends`` or more (200 of the
last 1,000 by default) it trips: removals stop and the gate pauses, since
that is what a sandbox/production or topic mix-up looks like.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from dispatcher.core import metrics
from dispatcher.core.backoff import Backoff
from dispatcher.gateways.push import Verdict

log = logging.getLogger(__name__)

Cause = Literal["config", "outage", "guard"]


class RemovalGuard:
    def __init__(self, share: float, min_sends: int) -> None:
        self.limit = max(1, round(share * min_sends))
        self._recent: deque[bool] = deque(maxlen=min_sends)
        self._dead = 0

    def reset(self) -> None:
        self._recent.clear()
        self._dead = 0

    def record(self, dead: bool) -> None:
        if len(self._recent) == self._recent.maxlen and self._recent[0]:
            self._dead -= 1
        self._recent.append(dead)
        self._dead += dead

    @property
    def tripped(self) -> bool:
        return self._dead >= self.limit

    @property
    def share(self) -> float:
        return self._dead / len(self._recent) if self._recent else 0.0


class Gate:
    def __init__(self, app: str, platform: str, backoff: Backoff, failures_to_pause: int, probe_s: float,
                 probe_cap_s: float, guard: RemovalGuard, clock: Callable[[], float] = time.monotonic) -> None:
        self.app, self.platform = app, platform
        self.backoff = backoff
        self.failures_to_pause = failures_to_pause
        self.probe_s, self.probe_cap_s = probe_s, probe_cap_s
        self.guard = guard
        self._clock = clock
        self.cause: Cause | None = None
        self.reason = ""
        self._failures = 0
        self._interval = probe_s
        self._probe_at = 0.0
        self._probing = False

    @property
    def paused(self) -> bool:
        return self.cause is not None

    def probe_in_s(self) -> float:
        """Seconds until a send may go out (0 when sending, or a probe is due)."""
        if self.cause is None:
            return 0.0
        if self._probing:  # its answer sets the next one
            return self._interval
        return max(0.0, self._probe_at - self._clock())

    def admit(self) -> bool:
        """May one push go out now? While paused, one probe at a time, once
        its interval has passed; the caller must then ``record`` it with
        ``probe=True``."""
        if self.cause is None:
            return True
        if self._probing or self._clock() < self._probe_at:
            return False
        self._probing = True
        metrics.GATE_PROBES.labels(self.app, self.platform).inc()
        return True

    def retry_in_s(self) -> float:
        """How long a task that met this gate paused waits in the queue: until
        the next probe has had time to be answered, so that tasks go out
        soon after the probe that resumes the gate, not an interval later."""
        return self.probe_in_s() + self.backoff.jittered(self.probe_s)

    def record(self, verdict: Verdict, reason: str, probe: bool = False, confirming: bool = False) -> None:
        """What the gateway said to one push. ``confirming``: a resend to a
        token already called dead once; the guard does not count it again
        (confirmations come back together and would trip it on their own)."""
        if probe:
            self._probing = False
            # A probe answered after the gate resumed (a push sent before the
            # pause came back fine) is an ordinary send.
            probe = self.cause is not None
        if verdict is Verdict.CONFIG:
            self.pause("config", reason, again=probe)
        elif verdict is Verdict.TEMPORARY:
            self._failures += 1
            if probe:
                self.pause(self.cause or "outage", reason, again=True)
            elif self._failures >= self.failures_to_pause and self.cause is None:
                self.pause("outage", f"{self._failures} failures in a row, the last {reason}")
        else:
            self._failures = 0
            dead = verdict is Verdict.DEAD_TOKEN
            if not confirming:
                self.guard.record(dead)
            if dead and self.guard.tripped:
                self.pause("guard", f"dead tokens in {self.guard.share:.0%} of the last verdicts", again=probe)
            elif self.cause == "guard":
                # Only a probe delivered says the mix-up is over; any other
                # answer to a probe waits out a longer interval.
                if probe and verdict is Verdict.DELIVERED:
                    self._resume()
                elif probe:
                    self.pause("guard", self.reason, again=True)
            elif self.cause is not None:
                self._resume()  # the gateway answers, and takes our credentials

    def pause(self, cause: Cause, reason: str, again: bool = False) -> None:
        """Pauses the gate (or, ``again``, keeps it paused after a failed
        probe, with a longer interval)."""
        if self.cause is not None and not again:
            return  # paused already; the first cause stands
        if self.cause is None:
            self._interval = self.probe_s
            log.error("%s %s gateway paused (%s): %s; tasks wait in the queue, no device is removed, "
                      "probing every %g s or so", self.app, self.platform, cause, reason, self._interval)
            metrics.GATE_PAUSES.labels(self.app, self.platform, cause).inc()
            if cause == "guard":
                metrics.GUARD_TRIPS.labels(self.app, self.platform).inc()
        else:
            self._interval = min(self.probe_cap_s, self._interval * 2)
            metrics.GATE_PAUSED.remove(self.app, self.platform, self.cause)
        self.cause, self.reason = cause, reason
        metrics.GATE_PAUSED.labels(self.app, self.platform, cause).set(1)
        self._probe_at = self._clock() + self.backoff.jittered(self._interval)

    def _resume(self) -> None:
        log.warning("%s %s gateway resumed after a pause (%s: %s)", self.app, self.platform, self.cause,
                    self.reason)
        assert self.cause is not None
        metrics.GATE_PAUSED.remove(self.app, self.platform, self.cause)
        if self.cause == "guard":
            # The dead verdicts that tripped it would trip it again at the
            # next ordinary dead token.
            self.guard.reset()
        self.cause, self.reason = None, ""
        self._failures = 0
        self._interval = self.probe_s
