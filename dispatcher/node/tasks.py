"""The send task: small, queued once per device. It names the broadcast (whose
message is stored once) or carries a one-off message, plus the device and
its app, the attempt count and when it stops being worth sending. The node
builds it (lua/node/send_tasks.lua); the dispatcher reads it, and says what
changes for another try (``retry``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from dispatcher.node.queue import Queue

Platform = Literal["ios", "android"]
_ARRAYS = (list, tuple)
_NUMBERS = (int, float)  # bool is neither, as type() sees it


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
    # The device's app; None in tasks queued before apps were recorded
    # (a broadcast's audience names it then).
    app: str | None = None
    # The gateway called the token dead once; a second verdict, later,
    # removes the device (the mass-removal guard's confirmation).
    suspect: bool = False

    @property
    def broadcast(self) -> str | None:
        """The broadcast's id, or None for a one-off push."""
        return self.ref if self.kind == "b" else None

    def retry(self) -> dict[str, Any]:
        """What changes in the task for another try (the node rebuilds it)."""
        return {"attempt": self.attempt, "first_attempt_at": self.first_attempt_at, "suspect": self.suspect}

    @classmethod
    def from_wire(cls, data: Any) -> SendTask:
        """Raises ValueError naming what is wrong with a task that is not one
        of ours (put by hand, or by a buggy version)."""
        # Exact type checks (what msgpack decodes to): once per push, and
        # several times cheaper than isinstance with unions.
        if type(data) not in _ARRAYS or not 7 <= len(data) <= 9:
            raise ValueError("a send task is an array of 7 to 9 fields")
        kind, ref, token, platform, expires_at, attempt, first = data[:7]
        app = data[7] if len(data) > 7 else None
        if kind == "b":
            if type(ref) is not str:
                raise ValueError("field 2 (broadcast id) must be a string")
        elif kind == "m":
            if type(ref) is not dict:
                raise ValueError("field 2 (message) must be a map")
        else:
            raise ValueError(f"field 1 (kind) must be 'b' or 'm', got {kind!r}")
        if type(token) is not str or not token:
            raise ValueError("field 3 (token) must be a non-empty string")
        if platform != "ios" and platform != "android":
            raise ValueError(f"field 4 (platform) must be ios or android, got {platform!r}")
        if type(expires_at) not in _NUMBERS or type(attempt) not in _NUMBERS or type(first) not in _NUMBERS:
            i = 5 if type(expires_at) not in _NUMBERS else 6 if type(attempt) not in _NUMBERS else 7
            raise ValueError(f"field {i} must be a number")
        if app is not None and type(app) is not str:
            raise ValueError("field 8 (app) must be a string")
        return cls(kind, ref, token, platform, float(expires_at), int(attempt), float(first), app,
                   bool(data[8]) if len(data) > 8 else False)


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
