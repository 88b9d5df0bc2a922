"""HTTP/2 to one gateway origin through pyreqwest: hyper, h2 and rustls in
Rust on their own runtime thread, awaited natively from asyncio.

A pyreqwest client keeps one HTTP/2 connection per origin and multiplexes
every request over it; ``connections`` clients make that many connections,
used in turn. The Rust side does framing, HPACK, flow control (it gives the
window back as bodies arrive, and waits for the server's window), holds
requests past the server's MAX_CONCURRENT_STREAMS until a stream frees, and
after GOAWAY fails only the streams the server did not take. What it cannot
know is ours: the pace of reconnects after failures (ReconnectDelay) and
which failures are safe to send again at once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from pyreqwest.client import ClientBuilder
from pyreqwest.exceptions import (
    BuilderError,
    ConnectError,
    PyreqwestError,
    RequestTimeoutError,
)

from dispatcher.core.backoff import ReconnectDelay
from dispatcher.core.errors import ConfigError

# Seconds between pings on a busy connection, and for their answer: a
# connection that went silent (a NAT dropped it) fails within a minute
# instead of holding its streams until each one times out.
PING_EVERY_S = 30.0
PING_TIMEOUT_S = 20.0
# Sends of a request the server refused unprocessed (no duplicate possible).
ATTEMPTS = 3


class SendError(Exception):
    """No answer came. ``unprocessed``: the request certainly did not reach
    the gateway (no connection, or refused before it was processed), so it
    may go again at once without a duplicate."""

    def __init__(self, reason: str, unprocessed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unprocessed = unprocessed


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    retry_after: str | None


class Slots:
    """At most ``n`` holders at once, first come first served: what
    asyncio.Semaphore does, without its cost on the send path (Python
    3.11's ``Semaphore.acquire`` scans every waiter each time; it was 6% of
    the dispatcher's CPU in bench.e2e)."""

    def __init__(self, n: int) -> None:
        self.free = n
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot as it was cancelled: pass it on
            raise

    def release(self) -> None:
        """Hands the slot to the first waiter still waiting, or frees it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class Origin:
    """Requests to ``https://host:port`` over ``connections`` HTTP/2
    connections, at most ``in_flight`` at once."""

    def __init__(self, origin: str, *, connections: int, in_flight: int, timeout_s: float,
                 idle_timeout_s: float = 600.0, ca_path: Path | None = None, identity: bytes | None = None,
                 setting: str = "") -> None:
        """``identity``: a client certificate and its key, PEM; ``setting``
        names the setting a bad CA or identity comes from."""
        self.origin = origin.rstrip("/")
        self.reconnect = ReconnectDelay()
        self.slots = Slots(in_flight)
        ca = None
        if ca_path is not None:
            try:
                ca = ca_path.read_bytes()
                # pyreqwest skips what is not a certificate without a word.
                x509.load_pem_x509_certificates(ca)
            except OSError as e:
                raise ConfigError(f"{setting}ca_path: cannot read {ca_path}: {e.strerror}") from None
            except ValueError:
                raise ConfigError(f"{setting}ca_path: {ca_path} holds no PEM certificate") from None
        try:
            # A builder makes one client.
            self._clients = [self._builder(timeout_s, idle_timeout_s, ca, identity).build()
                             for _ in range(connections)]
        except (BuilderError, ValueError) as e:
            what = "cert_path" if identity is not None else "ca_path"
            raise ConfigError(f"{setting}{what}: not usable for TLS: {e}") from None
        self._next = itertools.cycle(self._clients)

    @staticmethod
    def _builder(timeout_s: float, idle_timeout_s: float, ca: bytes | None, identity: bytes | None) -> ClientBuilder:
        builder = (ClientBuilder()
                .http2_prior_knowledge()
                .https_only(True)
                .follow_redirects(False)
                .timeout(timedelta(seconds=timeout_s))
                .connect_timeout(timedelta(seconds=min(timeout_s, 10.0)))
                .pool_idle_timeout(timedelta(seconds=idle_timeout_s))
                .http2_keep_alive_interval(timedelta(seconds=PING_EVERY_S))
                .http2_keep_alive_timeout(timedelta(seconds=PING_TIMEOUT_S))
                .tcp_nodelay(True))
        if ca is not None:
            builder = builder.add_root_certificate_pem(ca)
        if identity is not None:
            builder = builder.identity_pem(identity)
        return builder

    async def post(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        """One POST; raises SendError when no answer came. A request the
        server refused before processing it goes again at once (up to
        ATTEMPTS in all: each may meet another connection's GOAWAY). The
        body of a 2xx answer is not read: neither gateway says anything in
        it that a sender needs."""
        await self.slots.acquire()
        try:
            return await self._post(self.origin + path, headers, body)
        finally:
            self.slots.release()

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> Answer:
        for attempt in range(1, ATTEMPTS + 1):
            trial = False
            if not self.reconnect.up:
                trial, why = await self.reconnect.admit(asyncio.get_running_loop().time)
                if why is not None:
                    raise SendError("connection: " + why, unprocessed=True)
            try:
                response = await next(self._next).post(url).headers(headers).body_bytes(body).build().send()
                status = response.status
                data = b"" if status < 300 else bytes(await response.bytes())
            except RequestTimeoutError:
                raise SendError("timeout") from None
            except PyreqwestError as e:
                error = self._failure(e)
                if attempt == ATTEMPTS or not error.unprocessed or self.reconnect.failing:
                    raise error from None
                continue
            finally:
                if trial:
                    self.reconnect.tried()
            if not self.reconnect.up:
                self.reconnect.attempted(asyncio.get_running_loop().time(), ok=True)
            return Answer(status, data, response.get_header("retry-after"))
        raise AssertionError("unreachable")

    def _failure(self, e: PyreqwestError) -> SendError:
        causes = _causes(e)
        if isinstance(e, ConnectError) and "client error (Connect)" in causes:
            # Dialling failed: nothing was sent.
            self.reconnect.dial_failed(asyncio.get_running_loop().time())
            return SendError(f"connection: {causes[-1]}", unprocessed=True)
        # Refused before the server processed it: a REFUSED_STREAM reset, or
        # a stream above the last id of the server's GOAWAY, which h2 fails
        # with "connection error received"; these go again at once.
        # Otherwise the connection failed under the request (the server may
        # have taken it), or before it was sent ("request was canceled": it
        # waited on a dial that failed; sent again at once, each such request
        # would dial again).
        unprocessed = any("REFUSED_STREAM" in c or "refused stream" in c.lower() or "connection error received" in c
                          for c in causes)
        return SendError(f"connection: {causes[-1]}", unprocessed=unprocessed)

    async def close(self) -> None:
        for client in self._clients:
            await client.close()


def _causes(error: PyreqwestError) -> list[str]:
    """The chain of what went wrong, outermost first (pyreqwest's details)."""
    details = getattr(error, "details", None) or {}
    causes = [str(c.get("message", ""))[:200] for c in details.get("causes") or []]
    return causes or [str(error)[:200] or type(error).__name__]
