"""Fault injection for the fakes, set at start-up or changed at run time
(``POST /faults/<gateway>`` on the stats endpoint), and the counters of what
the fakes received."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dispatcher.fakes.h2server import ConnectionFaults


class Faults(BaseModel):
    """Shares are of requests (random), except ``dead_share``, which is of
    tokens (decided by a hash, so a token keeps its fate). ``*_first`` hit
    the first N requests after the faults were set: a burst a test can count."""

    model_config = ConfigDict(extra="forbid")

    dead_share: float = Field(0.0, ge=0, le=1)
    dead_tokens: set[str] = Field(default_factory=set)
    # token -> the reason (APNs) or errorCode (FCM) to answer it with.
    answers: dict[str, str] = Field(default_factory=dict)
    throttle_share: float = Field(0.0, ge=0, le=1)
    throttle_first: int = Field(0, ge=0)
    retry_after_s: int | None = Field(None, ge=0)
    error_share: float = Field(0.0, ge=0, le=1)
    error_first: int = Field(0, ge=0)
    error_status: int = Field(503, ge=500, le=599)
    slow_share: float = Field(0.0, ge=0, le=1)
    slow_s: float = Field(0.0, ge=0)
    goaway_after: int | None = Field(None, ge=1)
    drop_after: int | None = Field(None, ge=1)
    # Lifetime of what the gateway issues or accepts: FCM access tokens,
    # APNs provider tokens (Apple: one hour).
    token_ttl_s: int = Field(3600, ge=1)
    seed: int | None = None


class FaultState:
    """Faults in force, plus what they need to remember (a burst's count)."""

    def __init__(self, faults: Faults) -> None:
        self.set(faults)

    def set(self, faults: Faults) -> None:
        self.faults = faults
        self.seen = 0
        self.rng = random.Random(faults.seed)

    def next_request(self) -> int:
        self.seen += 1
        return self.seen

    def is_dead(self, token: str) -> bool:
        f = self.faults
        if token in f.dead_tokens:
            return True
        if f.dead_share <= 0:
            return False
        digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < f.dead_share

    def throttled(self, n: int) -> bool:
        return n <= self.faults.throttle_first or self.rng.random() < self.faults.throttle_share

    def failing(self, n: int) -> bool:
        return n <= self.faults.error_first or self.rng.random() < self.faults.error_share

    async def maybe_slow(self) -> None:
        if self.faults.slow_s > 0 and self.rng.random() < self.faults.slow_share:
            await asyncio.sleep(self.faults.slow_s)

    def connection_faults(self) -> ConnectionFaults:
        return ConnectionFaults(goaway_after=self.faults.goaway_after, drop_after=self.faults.drop_after)

    def retry_after_headers(self) -> list[tuple[str, str]]:
        if self.faults.retry_after_s is None:
            return []
        return [("retry-after", str(self.faults.retry_after_s))]


class Counters:
    """What a fake received: pushes accepted per token, rejections per reason."""

    def __init__(self) -> None:
        self.accepted: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.requests = 0

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "accepted_total": sum(self.accepted.values()),
            "accepted_tokens": len(self.accepted),
            "duplicates": sum(n - 1 for n in self.accepted.values() if n > 1),
            "rejected": dict(self.rejected),
        }
