"""The send task: small, queued once per device. It names the broadcast (whose
message is stored once) or carries a one-off message, plus the device, the
attempt count and when it stops being worth sending."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from dispatcher.queue import Queue

Platform = Literal["ios", "android"]


@dataclass(slots=True)
class SendTask:
    # "b": ref is a broadcast id; "m": ref is a one-off message (a dict).
    kind: Literal["b", "m"]
    ref: Any
    token: str
    platform: Platform
    expires_at: float  # epoch seconds
    attempt: int = 0
    first_attempt_at: float = 0.0  # epoch seconds, 0 until the first try

    def wire(self) -> list[Any]:
        return [self.kind, self.ref, self.token, self.platform, self.expires_at, self.attempt, self.first_attempt_at]

    @classmethod
    def from_wire(cls, data: list[Any]) -> SendTask:
        return cls(data[0], data[1], data[2], data[3], data[4], data[5], data[6])


SEND_TUBES = ("ios", "android")


class SendBacklog:
    """Send tasks waiting on this node (ready or delayed): what the API's 429
    and the fan-out's high-water mark are measured against. The queue keeps
    its counts, so a count is cheap, but still a round trip: it serves for up
    to ``max_age_s``, plus what the caller says it added since (an estimate
    that can only be high), so a page or a request does not pay one each."""

    def __init__(self, queue: Queue, max_age_s: float) -> None:
        self._queue = queue
        self._max_age_s = max_age_s
        self._at, self._count = -1e9, 0

    async def count(self, recount_above: int | None = None) -> int:
        """The backlog; counted afresh when the last count is stale, or when
        the estimate is above ``recount_above`` (so a limit is judged on a
        real count, not on the estimate)."""
        stale = time.monotonic() - self._at > self._max_age_s
        if stale or (recount_above is not None and self._count > recount_above):
            stats = await self._queue.statistics()
            self._count = sum(stats[t]["tasks"]["ready"] + stats[t]["tasks"]["delayed"] for t in SEND_TUBES)
            self._at = time.monotonic()
        return self._count

    def added(self, n: int) -> None:
        self._count += n
