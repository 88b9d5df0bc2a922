"""Device registrations, stored in the node's replicated ``subscriber`` space."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dispatcher.node.store import Store

Platform = Literal["ios", "android"]


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
    def from_row(cls, row: Sequence[Any]) -> Subscriber:
        return cls(row[0], row[1], row[2], row[3], tuple(row[4]), row[5], row[6], row[7], row[8], row[9])


# A position in the audience's (user_id, token) order.
Cursor = tuple[str, str]


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


class Subscribers:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def put(self, reg: Registration) -> Subscriber:
        body = await self._store.call("node.subscriber_put", reg.wire())
        return Subscriber.from_row(body[0])

    async def put_many(self, regs: Sequence[Registration]) -> int:
        body = await self._store.call("node.subscriber_put_many", ([r.wire() for r in regs],))
        count: int = body[0]
        return count

    async def get(self, token: str) -> Subscriber | None:
        body = await self._store.call("node.subscriber_get", (token,))
        return Subscriber.from_row(body[0]) if body else None

    async def of_user(self, user_id: str) -> list[Subscriber]:
        body = await self._store.call("node.subscribers_of_user", (user_id,))
        return [Subscriber.from_row(r) for r in body[0]]

    async def remove(self, token: str) -> bool:
        """Removes the device; False if it was not registered."""
        body = await self._store.call("node.subscriber_remove", (token,))
        removed: bool = body[0]
        return removed

    async def remove_many(self, tokens: Sequence[str]) -> int:
        """Removes many devices in one transaction; returns how many were registered."""
        body = await self._store.call("node.subscriber_remove_many", (list(tokens),))
        removed: int = body[0]
        return removed

    async def page(
        self, after: Cursor | None, limit: int, audience: Audience | None = None
    ) -> tuple[list[Subscriber], Cursor | None]:
        """Up to ``limit`` devices of the audience after ``after``, and the cursor
        to continue from (None at the end). A page may come back short, even
        empty, while the cursor is not None: the node bounds each scan."""
        args = (list(after) if after else None, limit, (audience or Audience()).wire())
        body = await self._store.call("node.subscribers_page", args)
        rows = [Subscriber.from_row(r) for r in body[0]]
        cursor = tuple(body[1]) if len(body) > 1 and body[1] is not None else None
        return rows, cursor
