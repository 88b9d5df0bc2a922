"""What the node's stored functions take and answer, as Python sees it. Each
answer is a map with named fields (lua/node/*.lua ``to_map``); nothing is
read by position."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from dispatcher.node.tasks import SendTask

Platform = Literal["ios", "android"]
# A position in the audience's (user_id, token) order.
Cursor = tuple[str, str]

# Progress counters, summed over nodes (lua/node/broadcasts.lua).
COUNTERS = ("targeted", "enqueued", "delivered", "dead_tokens", "failed", "expired", "cancelled", "retries")
SETTLED = ("delivered", "dead_tokens", "failed", "expired", "cancelled")
STATES = ("scheduled", "running", "fanned_out", "done", "cancelled")


@dataclass(frozen=True, slots=True)
class Registration:
    """What a backend registers for a device."""

    token: str
    user_id: str
    platform: Platform
    app: str
    topics: tuple[str, ...] = ()
    tz: str = "UTC"
    locale: str = ""

    def wire(self) -> list[Any]:
        return [self.token, self.user_id, self.platform, self.app, list(self.topics), self.tz, self.locale]


@dataclass(frozen=True, slots=True)
class Subscriber:
    """A stored registration with its version (microseconds, the writing node's replica id)."""

    token: str
    user_id: str
    platform: Platform
    app: str
    topics: tuple[str, ...]
    tz: str
    locale: str
    updated_us: int
    origin: int

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> Subscriber:
        return cls(m["token"], m["user_id"], m["platform"], m["app"], tuple(m["topics"]), m["tz"], m["locale"],
                   m["updated_us"], m["origin"])


@dataclass(frozen=True, slots=True)
class Audience:
    """Which devices a broadcast reaches: every given condition must hold;
    with topics, a device subscribed to any of them."""

    app: str | None = None
    platform: Platform | None = None
    topics: tuple[str, ...] = field(default=())

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.app is not None:
            out["app"] = self.app
        if self.platform is not None:
            out["platform"] = self.platform
        if self.topics:
            out["topics"] = list(self.topics)
        return out


@dataclass(frozen=True, slots=True)
class Broadcast:
    id: str
    idempotency_key: str
    state: str  # one of STATES, as stored
    created: float
    finished: float | None
    spec: dict[str, Any]

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> Broadcast:
        return cls(m["id"], m["idempotency_key"], m["state"], m["created"], m.get("finished"), m["spec"])


def broadcast_id(idempotency_key: str) -> str:
    """Derived from the key, so any node creating "the same" broadcast writes
    the same record."""
    return "b_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class Step:
    """What one fan-out step did (lua/node/fanout.lua ``step``)."""

    outcome: str  # idle, done, dropped, not_here, backlog, failed
    broadcast: str | None
    put: dict[str, int]  # send tasks enqueued, per platform
    started: bool  # the broadcast went from scheduled to running
    fanned_out: bool  # this step finished the broadcast's fan-out
    outbox: int  # fan-out tasks waiting here for other nodes
    forwards: list[Forward]  # the oldest of them
    error: str | None

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> Step:
        return cls(m["outcome"], m.get("broadcast"), m.get("put") or {}, bool(m.get("started")),
                   bool(m.get("fanned_out")), m.get("outbox", 0),
                   [Forward.from_map(f) for f in m.get("forwards") or ()], m.get("error"))


@dataclass(frozen=True, slots=True)
class Forward:
    """A fan-out task waiting in this node's outbox for node ``to``."""

    id: int
    to: str
    due: float
    data: dict[str, Any]

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> Forward:
        return cls(m["id"], m["to"], m["due"], m["data"])


@dataclass(frozen=True, slots=True)
class Orphan:
    """A fan-out task, not done, held by a node that is down."""

    broadcast: str
    data: dict[str, Any]
    node: str
    due: float


# Letters a call takes at most (MAX_LIMIT in lua/node/dead_letters.lua).
MAX_LIMIT = 1000
# Letter ids stay below this: Tarantool hands integers from 1e14 on to Lua
# as cdata, which its checks refuse.
MAX_ID = 10**14


@dataclass(frozen=True, slots=True)
class Scope:
    """Which letters: those of ``ids`` (when given) that match the filters,
    or every letter of the filters. A re-drive or a purge of every letter
    must say ``all``; a listing with no filter lists them all."""

    ids: tuple[int, ...] = ()
    broadcast: str | None = None
    reason: str | None = None
    all: bool = False

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"broadcast": self.broadcast, "reason": self.reason}
        if self.ids:
            out["ids"] = list(self.ids)
        if self.all:
            out["all"] = True
        return given(out)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    created: float  # epoch seconds
    tube: str  # the send tube: its platform
    reason: str
    broadcast: str | None  # None: a one-off push
    task_id: int | None  # its task, buried in the tube
    task: SendTask | None  # None: not a send task (a malformed one was buried)

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> DeadLetter:
        try:
            task: SendTask | None = SendTask.from_wire(m["task"])
        except ValueError:
            task = None
        return cls(m["id"], m["created_ms"] / 1000, m["tube"], m["reason"], m["broadcast"], m["task_id"], task)


@dataclass(frozen=True, slots=True)
class Page:
    letters: list[DeadLetter]
    next_before: int | None  # more below: ask again with before=next_before


@dataclass(frozen=True, slots=True)
class Redriven:
    redriven: int
    unsendable: list[int]  # letters left as they were: no send task to send
    missing: list[int]  # ids not found (in the scope)
    next_before: int | None


@dataclass(frozen=True, slots=True)
class Purged:
    purged: int
    missing: list[int]
    next_before: int | None


def given(m: dict[str, Any]) -> dict[str, Any]:
    """Without the keys whose value is None (absent, to the Lua side)."""
    return {k: v for k, v in m.items() if v is not None}
