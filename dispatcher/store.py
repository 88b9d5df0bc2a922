"""The dispatcher's one connection to its node's Tarantool.

Every call goes through :meth:`Store.call`, which turns asynctnt's errors into
the dispatcher's (see errors.py). asynctnt reconnects by itself after a
drop; calls made meanwhile fail fast with :class:`NodeUnavailable`.
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

from dispatcher.config import TarantoolSettings
from dispatcher.errors import NodeMisconfigured, NodeUnavailable, StoreRejected

log = logging.getLogger(__name__)

# The node's Lua schema version this code expects (lua/node/schema.lua).
SCHEMA_VERSION = 4

_AUTH_ERRORS = {ErrorCode.ER_PASSWORD_MISMATCH, ErrorCode.ER_NO_SUCH_USER}
_APP_MISSING = {ErrorCode.ER_NO_SUCH_PROC, ErrorCode.ER_ACCESS_DENIED}


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
    def connected(self) -> bool:
        return bool(self._conn.is_connected)

    async def connect(self) -> dict[str, Any]:
        """Connects, retrying until ``startup_timeout_s``, then checks that the
        other end is a dispatcher node with the expected schema. Returns its
        ``node.info``."""
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
        info = await self._node_info(where)
        if info.get("schema_version") != SCHEMA_VERSION:
            await self.close()
            raise NodeMisconfigured(
                f"{where} has schema version {info.get('schema_version')}, this dispatcher "
                f"needs {SCHEMA_VERSION}: run the same release of lua/ and dispatcher/"
            )
        return info

    async def _node_info(self, where: str) -> dict[str, Any]:
        try:
            response = await self._conn.call("node.info")
        except TarantoolDatabaseError as e:
            await self.close()
            if e.code in _APP_MISSING:
                raise NodeMisconfigured(
                    f"{where} does not run the dispatcher's node application "
                    f"(lua/init.lua): {e.message}"
                ) from None
            raise NodeMisconfigured(f"{where}: node.info failed: {e.message}") from None
        info: dict[str, Any] = response.body[0]
        return info

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
            if e.code in _APP_MISSING:
                raise NodeMisconfigured(f"Tarantool at {self.address}: {e.message}") from None
            raise StoreRejected(e.message) from None
        except (TarantoolNetworkError, ConnectionError, TimeoutError) as e:
            raise NodeUnavailable(f"Tarantool at {self.address}: {e or type(e).__name__}") from None
        except TarantoolError as e:
            raise NodeUnavailable(f"Tarantool at {self.address}: {e}") from None
        body: list[Any] = response.body
        return body
