"""The send task: small, queued once per device. It names the broadcast (whose
message is stored once) or carries a one-off message, plus the device, the
attempt count and when it stops being worth sending."""

from __future__ import annotations

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


async def send_backlog(queue: Queue) -> int:
    """Send tasks waiting on this node (ready or delayed): what the API's 429
    and the fan-out's high-water mark are measured against."""
    stats = await queue.statistics()
    return sum(stats[t]["tasks"]["ready"] + stats[t]["tasks"]["delayed"] for t in SEND_TUBES)
