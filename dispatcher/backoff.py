"""Retry policy: exponential backoff with full jitter, a cap, a most number
of attempts and a total deadline; a gateway's Retry-After wins."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float = 1.0
    cap_s: float = 300.0
    max_attempts: int = 8
    # From the first attempt: past this, stop retrying.
    deadline_s: float = 3600.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Pause before attempt number ``attempt + 1`` (attempts count from 1):
        uniform in [0, min(cap, base * 2**(attempt-1))], or Retry-After."""
        if retry_after_s is not None:
            return retry_after_s
        ceiling = min(self.cap_s, self.base_s * 2 ** max(attempt - 1, 0))
        return self.rng.uniform(0, ceiling)

    def next_delay_s(self, attempt: int, elapsed_s: float, retry_after_s: float | None = None) -> float | None:
        """The pause before the next attempt, or None when the policy gives up:
        ``attempt`` attempts are spent, or the next one would start past the
        deadline."""
        if attempt >= self.max_attempts:
            return None
        delay = self.delay_s(attempt, retry_after_s)
        if elapsed_s + delay > self.deadline_s:
            return None
        return delay
