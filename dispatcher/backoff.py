"""Retry policy: exponential backoff with full jitter and a cap, bounded by
time (the push's ttl and a deadline from its first attempt), not by a count:
a gateway down for an hour delivers everything still worth delivering when
it heals. A gateway's Retry-After is honoured, capped, with jitter on top so
the pushes it deferred do not all come back in the same instant."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

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
    """Connection attempts to one gateway after a failure wait out an
    exponential, jittered delay; until then a sender fails at once instead
    of dialling (a thousand waiting pushes make one attempt, not a
    thousand)."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 10.0, rng: random.Random | None = None) -> None:
        self.base_s, self.cap_s = base_s, cap_s
        self._rng = rng or random.Random()
        self._failures = 0
        self._retry_at = 0.0
        self.attempts = 0

    @property
    def failing(self) -> bool:
        """The last attempt failed."""
        return self._failures > 0

    def wait_s(self, now: float) -> float:
        """Seconds before the next attempt may be made (0: now)."""
        return max(0.0, self._retry_at - now)

    async def dial(self, connect: Callable[[], Awaitable[T]], waiting: Callable[[float], Exception]) -> T:
        """``connect()``, unless the delay after the last failure is still
        running: then ``waiting(seconds left)`` is raised at once. A connect
        that raises counts as a failure."""
        loop = asyncio.get_running_loop()
        wait = self.wait_s(loop.time())
        if wait > 0:
            raise waiting(wait)
        try:
            connection = await connect()
        except Exception:
            self.attempted(loop.time(), ok=False)
            raise
        self.attempted(loop.time(), ok=True)
        return connection

    def attempted(self, now: float, ok: bool) -> None:
        self.attempts += 1
        if ok:
            self._failures = 0
            self._retry_at = 0.0
            return
        self._failures += 1
        ceiling = min(self.cap_s, self.base_s * 2 ** (self._failures - 1))
        self._retry_at = now + self._rng.uniform(ceiling / 2, ceiling)
