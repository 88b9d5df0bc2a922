"""Retry policy: exponential backoff with full jitter and a cap, bounded by
time (the push's ttl and a deadline from its first attempt), not by a count:
a gateway down for an hour delivers everything still worth delivering when
it heals. A gateway's Retry-After is honoured, capped, with jitter on top so
the pushes it deferred do not all come back in the same instant."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field

# Retry-After gets up to this share of itself added at random; other waits
# (probes, pauses) this much either way.
JITTER = 0.2


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float = 1.0
    cap_s: float = 300.0
    # From the first attempt: past this, stop retrying.
    deadline_s: float = 3600.0
    retry_after_cap_s: float = 600.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Pause before attempt number ``attempt + 1`` (attempts count from 1):
        uniform in [0, min(cap, base * 2**(attempt-1))]; or Retry-After
        (at most retry_after_cap_s) plus up to a fifth of it."""
        if retry_after_s is not None:
            wait = min(retry_after_s, self.retry_after_cap_s)
            return wait * (1 + self.rng.uniform(0, JITTER))
        ceiling = min(self.cap_s, self.base_s * 2 ** max(attempt - 1, 0))
        return self.rng.uniform(0, ceiling)

    def next_delay_s(self, attempt: int, elapsed_s: float, retry_after_s: float | None = None) -> float | None:
        """The pause before the next attempt, or None when the next attempt
        would start past the deadline. (The push's own ttl is the caller's
        to check: past it the push is expired, not failed.)"""
        delay = self.delay_s(attempt, retry_after_s)
        if elapsed_s + delay > self.deadline_s:
            return None
        return delay

    def jittered(self, seconds: float) -> float:
        """``seconds`` give or take a fifth: spreads waits that would
        otherwise end together (probes, pauses)."""
        return seconds * self.rng.uniform(1 - JITTER, 1 + JITTER)


class ReconnectDelay:
    """Connection attempts to one gateway. Until an attempt has succeeded
    (at first, and after a failure) one request at a time tries: at first
    the others wait for its outcome; after a failure they fail at once, and
    the next try waits out an exponential, jittered delay. A thousand
    waiting pushes over K connections make one attempt, not a thousand (the
    HTTP client dials again for every request queued on a failed dial)."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 10.0, rng: random.Random | None = None) -> None:
        self.base_s, self.cap_s = base_s, cap_s
        self._rng = rng or random.Random()
        self._failures = 0
        self._retry_at = 0.0
        self._trying = False
        self._tried = asyncio.Event()
        self.up = False  # the last attempt succeeded
        self.attempts = 0

    @property
    def failing(self) -> bool:
        """The last attempt failed."""
        return self._failures > 0

    def wait_s(self, now: float) -> float:
        """Seconds before the next attempt may be made (0: now)."""
        return max(0.0, self._retry_at - now)

    async def admit(self, clock: Callable[[], float]) -> tuple[bool, str | None]:
        """While not up: (True, None) for the request that tries now (call
        ``tried`` when it is over); (False, None) once another's try
        succeeded; (False, why) when it may not go."""
        while not self.up:
            wait = self.wait_s(clock())
            if wait > 0:
                return False, f"next attempt in {wait:.1f} s"
            if not self._trying:
                self._trying = True
                self._tried.clear()
                return True, None
            if self.failing:
                return False, "reconnecting"
            await self._tried.wait()
        return False, None

    def tried(self) -> None:
        """The request that tried is over, whatever came of it."""
        self._trying = False
        self._tried.set()

    def dial_failed(self, now: float) -> None:
        """A connection attempt failed. The requests that waited on the same
        attempt fail with it: one failure, not one per request."""
        if self.wait_s(now) == 0:
            self.attempted(now, ok=False)

    def attempted(self, now: float, ok: bool) -> None:
        self.attempts += 1
        self.up = ok
        if ok:
            self._failures = 0
            self._retry_at = 0.0
            return
        self._failures += 1
        ceiling = min(self.cap_s, self.base_s * 2 ** (self._failures - 1))
        self._retry_at = now + self._rng.uniform(ceiling / 2, ceiling)
