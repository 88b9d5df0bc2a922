"""What the node's stored functions take and answer, as Python sees it. Each
answer is a map with named fields (lua/node/*.lua ``to_map``); nothing is
read by position."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

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
    """A stored registration with its version (microseconds, writing node)."""

    token: str
    user_id: str
    platform: Platform
    app: str
    topics: tuple[str, ...]
    tz: str
    locale: str
    created: float
    updated_us: int
    origin: str

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> Subscriber:
        return cls(m["token"], m["user_id"], m["platform"], m["app"], tuple(m["topics"]), m["tz"], m["locale"],
                   m["created"], m["updated_us"], m["origin"])


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
    error: str | None

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> Step:
        return cls(m["outcome"], m.get("broadcast"), m.get("put") or {}, bool(m.get("started")),
                   bool(m.get("fanned_out")), m.get("outbox", 0), m.get("error"))


@dataclass(frozen=True, slots=True)
class Forward:
    """A fan-out task waiting in this node's outbox for node ``to``."""

    id: int
    to: str
    due: float
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Orphan:
    """A fan-out task, not done, held by a node that is down."""

    broadcast: str
    data: dict[str, Any]
    node: str
    due: float
