"""Dead letters: the pushes a node gave up on (a permanent gateway error,
retries spent, a malformed task), kept on that node (node-local) for
operators to list, re-drive or purge (lua/node/dead_letters.lua).

The one module that calls the dead-letter stored functions; each answers a
map. A call takes at most MAX_LIMIT letters, newest first, in one
transaction, and says where to go on (``next_before``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dispatcher.node.store import Store
from dispatcher.node.tasks import SendTask

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
        return _given(out)


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


class DeadLetters:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def list(self, scope: Scope | None = None, before: int | None = None, limit: int = 50) -> Page:
        """Letters of ``scope`` (default: all), newest first, below ``before``."""
        m = await self._call("node.dead_letter_list", scope or Scope(), {"before": before, "limit": limit})
        return Page([DeadLetter.from_map(letter) for letter in m["letters"]], m["next"])

    async def redrive(self, scope: Scope, default_ttl_s: float, ttl_s: float | None = None,
                      before: int | None = None, limit: int = MAX_LIMIT) -> Redriven:
        """Puts each letter's push back into its tube as a fresh task (no
        attempt made), living ``ttl_s`` from now, else its broadcast's
        ttl_s, else ``default_ttl_s``; the letters go."""
        m = await self._call("node.dead_letter_redrive", scope, {"before": before, "limit": limit, "ttl_s": ttl_s,
                                                                  "default_ttl_s": default_ttl_s})
        return Redriven(m["redriven"], m["unsendable"], m["missing"], m["next"])

    async def purge(self, scope: Scope, before: int | None = None, limit: int = MAX_LIMIT) -> Purged:
        m = await self._call("node.dead_letter_purge", scope, {"before": before, "limit": limit})
        return Purged(m["purged"], m["missing"], m["next"])

    async def _call(self, function: str, scope: Scope, opts: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = (await self._store.call(function, (scope.wire(), _given(opts))))[0]
        return answer


def _given(m: dict[str, Any]) -> dict[str, Any]:
    """Without the keys whose value is None (absent, to the Lua side)."""
    return {k: v for k, v in m.items() if v is not None}
