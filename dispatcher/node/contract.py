"""The contract between the dispatcher and its node's Lua: the only place
that names the node's stored functions (``node.*``, lua/init.lua), with a
typed wrapper for each. The queue's own calls (tarantool/queue's API) are
named in node/queue.py. tests/test_contract.py runs every wrapper against
a real node."""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Sequence
from typing import Any

from dispatcher.core.errors import NodeMisconfigured, StoreFailed
from dispatcher.node.records import (
    MAX_LIMIT,
    Audience,
    Broadcast,
    Cursor,
    DeadLetter,
    Forward,
    Orphan,
    Page,
    Purged,
    Redriven,
    Registration,
    Scope,
    Step,
    Subscriber,
    broadcast_id,
    given,
)
from dispatcher.node.store import Store

# The node's Lua schema version this code expects (lua/node/schema.lua).
SCHEMA_VERSION = 7
# How often a node whose schema is behind is asked again while its replica
# set's first member has not migrated yet (it waits for every node to run
# this release: an upgrade in progress).
_SCHEMA_POLL_S = 0.5

log = logging.getLogger(__name__)


async def connect(store: Store) -> dict[str, Any]:
    """Connects, and checks that the other end is a dispatcher node of this
    release's schema; one whose schema is behind (an upgrade in progress) is
    waited for up to ``startup_timeout_s``. Returns its ``node.info``."""
    await store.connect()
    where = f"Tarantool at {store.address}"
    try:
        info = await Status(store).info()
    except NodeMisconfigured:
        await store.close()
        raise NodeMisconfigured(f"{where} does not run the dispatcher's node application (lua/init.lua)") from None
    except StoreFailed as e:
        await store.close()
        raise NodeMisconfigured(f"{where}: node.info failed: {e}") from None
    deadline = time.monotonic() + store.startup_timeout_s
    said = False
    while (version := info.get("schema_version")) != SCHEMA_VERSION:
        behind = isinstance(version, int) and version < SCHEMA_VERSION
        if not behind or time.monotonic() > deadline:
            await store.close()
            raise NodeMisconfigured(
                f"{where} has schema version {version}, this dispatcher needs {SCHEMA_VERSION}: run the same "
                "release of lua/ and dispatcher/ on every node (the replica set's first member migrates "
                "once all of them run it)"
            )
        if not said:
            log.info("%s has schema version %s, this dispatcher needs %s: waiting for the replica set's "
                     "first member to migrate (once every node says it runs this release)", where, version,
                     SCHEMA_VERSION)
            said = True
        await asyncio.sleep(_SCHEMA_POLL_S)
        info = await Status(store).info()
    return info


async def _one(store: Store, function: str, *args: Any) -> Any:
    """The first result of a stored function (None when it returned none)."""
    body = await store.call(function, args)
    return body[0] if body else None


class Status:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def info(self) -> dict[str, Any]:
        """name, schema_version, schema_latest, ro, status."""
        info: dict[str, Any] = await _one(self._store, "node.info")
        return info

    async def memory(self) -> dict[str, int]:
        """Bytes: arena_used, arena_size, quota_used, quota_size, data, index, lua."""
        memory: dict[str, int] = await _one(self._store, "node.memory")
        return memory


class Subscribers:
    """Device registrations (the replicated ``subscriber`` space)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def put(self, reg: Registration) -> Subscriber:
        return Subscriber.from_map(await _one(self._store, "node.subscriber_put", *reg.wire()))

    async def put_many(self, regs: Sequence[Registration]) -> int:
        count: int = await _one(self._store, "node.subscriber_put_many", [r.wire() for r in regs])
        return count

    async def get(self, token: str) -> Subscriber | None:
        found = await _one(self._store, "node.subscriber_get", token)
        return Subscriber.from_map(found) if found else None

    async def of_user(self, user_id: str) -> list[Subscriber]:
        return [Subscriber.from_map(m) for m in await _one(self._store, "node.subscribers_of_user", user_id)]

    async def remove(self, token: str) -> bool:
        """Removes the device; False if it was not registered."""
        return bool(await _one(self._store, "node.subscriber_remove", token))

    async def remove_many(self, tokens: Sequence[str]) -> int:
        """Removes many devices in one transaction; returns how many were registered."""
        removed: int = await _one(self._store, "node.subscriber_remove_many", list(tokens))
        return removed

    async def page(self, after: Cursor | None, limit: int,
                   audience: Audience | None = None) -> tuple[list[Subscriber], Cursor | None]:
        """Up to ``limit`` devices of the audience after ``after``, and the cursor
        to continue from (None at the end). A page may come back short, even
        empty, while the cursor is not None: the node bounds each scan."""
        page = await _one(self._store, "node.subscribers_page", list(after) if after else None, limit,
                          (audience or Audience()).wire())
        cursor = page.get("cursor")
        return [Subscriber.from_map(m) for m in page["devices"]], tuple(cursor) if cursor else None


class Broadcasts:
    """Broadcasts, their stored lifecycle and progress."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(self, idempotency_key: str, spec: dict[str, Any], *, start_in_s: float = 0.0,
                     home: str | None = None, zones: dict[str, float] | None = None) -> tuple[Broadcast, bool]:
        """The broadcast for this key: created now (True), scheduled, with its
        first fan-out task due in ``start_in_s`` on node ``home`` (None:
        this one); or the one that was. ``zones``: for a local_time
        broadcast, when that hour comes in each time zone (epoch s)."""
        opts: dict[str, Any] = {"strategy": spec.get("strategy", "baton"), "start_in_s": max(0.0, start_in_s)}
        if home is not None:
            opts["home"] = home
        if zones is not None:
            opts["zones"] = zones
        body = await self._store.call("node.broadcast_create", (broadcast_id(idempotency_key), idempotency_key,
                                                                 spec, opts))
        return Broadcast.from_map(body[0]), bool(body[1])

    async def get(self, id_: str) -> Broadcast | None:
        found = await _one(self._store, "node.broadcast_get", id_)
        return Broadcast.from_map(found) if found else None

    async def list(self, limit: int = 50, before: float | None = None) -> list[Broadcast]:
        """Newest first, created before ``before`` (epoch s) when given."""
        return [Broadcast.from_map(m) for m in await _one(self._store, "node.broadcast_list", limit, before)]

    async def cancel(self, id_: str) -> Broadcast:
        """Cancelled, whatever state it was in and whatever other nodes write."""
        return Broadcast.from_map(await _one(self._store, "node.broadcast_cancel", id_))

    async def progress(self, id_: str) -> dict[str, int]:
        """Counters summed over the nodes, with ``pending`` (enqueued, not settled)."""
        progress: dict[str, int] = await _one(self._store, "node.progress", id_)
        return progress

    async def progress_by_node(self, id_: str) -> dict[str, dict[str, int]]:
        by_node: dict[str, dict[str, int]] = await _one(self._store, "node.progress_by_node", id_)
        return by_node

    async def progress_many(self, ids: Sequence[str]) -> builtins.list[dict[str, int]]:
        progress: builtins.list[dict[str, int]] = await _one(self._store, "node.progress_many", list(ids))
        return progress


class Pushes:
    """Send tasks as the dispatcher makes and settles them."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def enqueue(self, tokens: Sequence[str], message: dict[str, Any], ttl_s: float) -> int:
        """A one-off push to these devices (those still registered): returns
        how many tasks were queued."""
        answer = await _one(self._store, "node.push_enqueue", list(tokens), message, ttl_s)
        return int(answer["enqueued"])

    async def settle(self, tube: str, items: list[list[Any]]) -> list[int]:
        """Settles taken tasks in one transaction (work/settle.py builds the
        items); returns the ids this session did not hold."""
        skipped: list[int] = await _one(self._store, "node.settle", tube, items)
        return skipped


class DeadLetters:
    """The pushes this node gave up on (node-local), for operators: a call
    takes at most MAX_LIMIT letters, newest first, in one transaction, and
    says where to go on (``next_before``)."""

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
        answer: dict[str, Any] = await _one(self._store, function, scope.wire(), given(opts))
        return answer


class Fanout:
    """Fan-out steps (lua/node/fanout.lua): one call each."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def step(self, *, page_size: int, leaf: int, parts: int, targets: Sequence[str], next_node: str,
                   high_water: int | None, timeout_s: float, forwards: int = 500) -> Step:
        """Takes the next fan-out task (waiting up to ``timeout_s``) and runs it;
        the answer carries the oldest ``forwards`` rows of the outbox."""
        opts = {"page_size": page_size, "leaf": leaf, "parts": parts, "targets": list(targets), "next": next_node,
                "high_water": high_water, "timeout_s": timeout_s, "forwards": forwards}
        return Step.from_map(await _one(self._store, "node.fanout_step", opts))

    async def outbox(self, limit: int) -> list[Forward]:
        return [Forward.from_map(m) for m in await _one(self._store, "node.fanout_outbox", limit)]

    async def outbox_done(self, ids: Sequence[int]) -> None:
        await self._store.call("node.fanout_outbox_done", (list(ids),))

    async def accept(self, forwards: Sequence[Forward], origin: str) -> int:
        """Puts forwarded tasks into this node's fan-out tube (this Fanout's
        node); a forward already accepted is not taken twice."""
        items = [{"data": f.data, "due": f.due, "fwd": f"{origin}:{f.id}"} for f in forwards]
        accepted: int = await _one(self._store, "node.fanout_accept", items)
        return accepted

    async def orphans(self, nodes: Sequence[str]) -> list[Orphan]:
        """Tasks of unfinished broadcasts held by these nodes and not done."""
        return [Orphan(m["broadcast"], m["data"], m["node"], m["due"])
                for m in await _one(self._store, "node.fanout_orphans", list(nodes))]

    async def reissue(self, orphans: Sequence[Orphan]) -> None:
        """This node takes these tasks over."""
        await self._store.call("node.fanout_reissue", ([{"data": o.data, "due": o.due} for o in orphans],))
