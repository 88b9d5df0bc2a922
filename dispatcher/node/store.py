"""The dispatcher's one connection to its node's Tarantool.

Every call goes through :meth:`Store.call`, which turns asynctnt's errors into
the dispatcher's (see errors.py) by the error's code: ours (lua/node/errors.lua)
are refusals meant for the client, Tarantool's own are failures of the node.
asynctnt reconnects by itself after a drop; calls made meanwhile fail fast
with :class:`NodeUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asynctnt
from asynctnt.exceptions import (
    ErrorCode,
    TarantoolDatabaseError,
    TarantoolError,
    TarantoolNetworkError,
)

from dispatcher.core.config import TarantoolSettings
from dispatcher.core.errors import NodeMisconfigured, NodeUnavailable, StoreFailed, StoreRejected

log = logging.getLogger(__name__)

_AUTH_ERRORS = {ErrorCode.ER_PASSWORD_MISMATCH, ErrorCode.ER_NO_SUCH_USER}
# The stored function is not there, or this user may not call it: not a
# dispatcher node, or not this release's.
_APP_MISSING = {ErrorCode.ER_NO_SUCH_PROC, ErrorCode.ER_ACCESS_DENIED}
# Our codes (lua/node/errors.lua, lua/queue/state.lua): the request's fault.
_OUR_CODES = range(10000, 10100)
# Tarantool's codes for conditions that pass by themselves: the same call
# may succeed later. Any other code of Tarantool's (a Lua error in a stored
# function, a duplicate key, a bad field type) is a bug: retrying repeats it.
_PASSING = {
    ErrorCode.ER_MEMORY_ISSUE,  # memtx_memory full (until tasks are acked, rows removed)
    ErrorCode.ER_READONLY,  # box.cfg read_only, an orphan waiting for its peers
    ErrorCode.ER_NONMASTER,
    ErrorCode.ER_LOADING,  # still recovering or bootstrapping
    ErrorCode.ER_BOOTSTRAP_READONLY,
    ErrorCode.ER_WAL_IO,  # the disk failed a write (full, gone)
    ErrorCode.ER_CASCADE_ROLLBACK,  # rolled back with an earlier transaction whose WAL write failed
    ErrorCode.ER_TIMEOUT,
    ErrorCode.ER_TRANSACTION_CONFLICT,
    ErrorCode.ER_SYNC_QUORUM_TIMEOUT,
    ErrorCode.ER_SYNC_ROLLBACK,
}
# Tarantool's message goes to the log only; some quote whole tuples.
_MESSAGE_CHARS = 500


class Store:
    """One pipelined asynctnt connection; safe to share between coroutines."""

    def __init__(self, settings: TarantoolSettings) -> None:
        self._settings = settings
        self._conn = asynctnt.Connection(
            host=settings.host,
            port=settings.port,
            username=settings.user,
            password=settings.password.get_secret_value(),
            fetch_schema=False,
            auto_refetch_schema=False,
            connect_timeout=settings.connect_timeout_s,
            request_timeout=settings.request_timeout_s,
            reconnect_timeout=settings.reconnect_interval_s,
        )

    @property
    def address(self) -> str:
        return self._settings.address

    @property
    def startup_timeout_s(self) -> float:
        return self._settings.startup_timeout_s

    @property
    def connected(self) -> bool:
        return bool(self._conn.is_connected)

    async def connect(self) -> None:
        """Connects, retrying until ``startup_timeout_s``. Whether the other
        end is a dispatcher node of the right schema is the contract's
        check (node/contract.py ``connect``)."""
        where = f"Tarantool at {self.address}"
        try:
            async with asyncio.timeout(self._settings.startup_timeout_s):
                await self._conn.connect()
        except TimeoutError:
            self._conn.close()
            raise NodeUnavailable(
                f"{where} did not answer within {self._settings.startup_timeout_s:g} s: "
                "is the node running, and are tarantool.host and tarantool.port right?"
            ) from None
        except TarantoolDatabaseError as e:
            self._conn.close()
            if e.code in _AUTH_ERRORS:
                raise NodeMisconfigured(
                    f"{where} refused user {self._settings.user!r}: {e.message} "
                    "(tarantool.password must match the node's NODE_DISPATCHER_PASSWORD)"
                ) from None
            raise NodeMisconfigured(f"{where} refused the connection: {e.message}") from None

    async def close(self) -> None:
        if self._conn.is_connected:
            await self._conn.disconnect()
        else:
            self._conn.close()

    async def call(self, function: str, args: list[Any] | tuple[Any, ...] | None = None) -> list[Any]:
        """Calls a stored function and returns its results (a list, empty when
        the function returned nothing)."""
        try:
            response = await self._conn.call(function, args)
        except TarantoolDatabaseError as e:
            if e.code in _OUR_CODES:
                raise StoreRejected(e.message, e.code) from None
            if e.code in _APP_MISSING:
                raise NodeMisconfigured(
                    f"Tarantool at {self.address}: {e.message}: does it run this release's node "
                    "application (lua/init.lua)?") from None
            # Tarantool's message, never the call's arguments (tokens, messages).
            raise StoreFailed(f"{function} on Tarantool at {self.address} failed: {e.message[:_MESSAGE_CHARS]}",
                              e.code, retryable=e.code in _PASSING) from None
        except (TarantoolNetworkError, ConnectionError, TimeoutError) as e:
            raise NodeUnavailable(f"Tarantool at {self.address}: {e or type(e).__name__}") from None
        except TarantoolError as e:
            raise NodeUnavailable(f"Tarantool at {self.address}: {e}") from None
        body: list[Any] = response.body
        return body

