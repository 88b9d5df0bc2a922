"""APNs sender on aioapns 4, with its known weaknesses covered.

- aioapns has no request timeout: every send runs under ``request_timeout_s``,
  and a timed-out request is forgotten by its connection.
- aioapns never acknowledges DATA it receives, so after about 64 KiB of error
  bodies (a broadcast with many dead tokens) the connection's window is gone;
  a body then comes split and aioapns' per-frame JSON parsing kills the
  connection. Ours acknowledges each body and parses it whole.
- aioapns keeps the stream-to-request map of every successful push forever:
  ours drops it when the stream ends.
- aioapns runs on h2, whose pure-Python HPACK and framing took two thirds of
  the sender's CPU; ours runs the same protocol on jh2 (h2's API, Rust HPACK).
- aioapns mints a provider token per connection at random moments; ours share
  one, minted on period boundaries (``token_refresh_s``) so every connection
  and every node presents the same ``iat`` (no TooManyProviderTokenUpdates).
- After GOAWAY aioapns closes at once and resends every request in flight on
  another connection, so pushes the server had taken arrive twice. Ours
  fails only the requests the server did not take and waits for the rest.
- aioapns sends past the connection's flow-control window (beyond 64 KiB in
  flight the request dies with its headers sent) and numbers a stream before
  any wait; ours waits for the window and numbers the stream as it opens.
- aioapns leaves a timed-out request's stream open and its slot taken; ours
  resets the stream and gives the slot back.
- aioapns dials once per waiting push after a failed connect; ours waits
  out a jittered delay (backoff.ReconnectDelay), failing fast meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from functools import partial
from typing import Any

import jwt
from aioapns.common import NotificationRequest, NotificationResult, PushType
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsCertConnectionPool,
    APNsKeyConnectionPool,
    APNsTLSClientProtocol,
    AuthorizationHeaderProvider,
)
from aioapns.exceptions import ConnectionClosed, MaxAttemptsExceeded
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from jh2 import connection as jh2_connection
from jh2 import events as jh2_events
from jh2.errors import ErrorCodes
from jh2.exceptions import ProtocolError as H2ProtocolError

from dispatcher.backoff import ReconnectDelay
from dispatcher.config import ApnsSettings
from dispatcher.errors import ConfigError
from dispatcher.h2client import split_goaway
from dispatcher.push import Outcome, Push, no_answer
from dispatcher.verdicts import apns_outcome

log = logging.getLogger(__name__)

ENDPOINTS = {
    "production": ("api.push.apple.com", 443),
    "sandbox": ("api.development.push.apple.com", 443),
}


class SharedProviderToken(AuthorizationHeaderProvider):
    """One provider token for all connections. ``iat`` is the start of the
    current ``refresh_s`` period, so nodes that share the key mint tokens with
    the same ``iat``; a forced refresh (after ExpiredProviderToken) uses now."""

    def __init__(self, key: str, key_id: str, team_id: str, refresh_s: int) -> None:
        self._key, self._key_id, self._team_id = key, key_id, team_id
        self._refresh_s = refresh_s
        self._iat = 0
        self._header = ""
        self.minted = 0

    def get_header(self) -> str:
        now = int(time.time())
        iat = now - now % self._refresh_s
        if iat > self._iat:
            self._mint(iat)
        return self._header

    def force_refresh(self) -> None:
        self._mint(int(time.time()))

    def _mint(self, iat: int) -> None:
        token = jwt.encode({"iss": self._team_id, "iat": iat}, self._key, algorithm="ES256",
                           headers={"kid": self._key_id})
        self._iat, self._header = iat, f"bearer {token}"
        self.minted += 1


class _Protocol(APNsTLSClientProtocol):
    """aioapns' protocol with the fixes above; APNS_SERVER, APNS_PORT and
    INACTIVITY_TIME are set per sender on a subclass."""

    terminated = False
    # After GOAWAY, how long answers to requests the server did take may
    # still come before the connection is closed.
    GOAWAY_GRACE_S = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # jh2: h2's API with HPACK in Rust; h2 and hpack were two thirds of
        # the sender's CPU (bench/RESULTS.md).
        self.conn = jh2_connection.H2Connection()
        self._bodies: dict[int, bytearray] = {}
        self._inbound = bytearray()
        # Set when the server grants more send window (WINDOW_UPDATE, SETTINGS).
        self._window_opened = asyncio.Event()
        # Set by the server's first SETTINGS (or the connection's end).
        self._server_settings = asyncio.Event()
        self._failure_logged = False

    @property
    def is_busy(self) -> bool:
        # After GOAWAY the connection is closing: the pool must pick another.
        return self.terminated or super().is_busy

    def on_data_received(self, data: bytes, stream_id: int) -> None:
        # Give the window back, or the connection stalls after ~64 KiB; and
        # parse a body only once it is whole (aioapns parses each frame).
        self.conn.acknowledge_received_data(len(data), stream_id)
        self._bodies.setdefault(stream_id, bytearray()).extend(data)

    def on_stream_ended(self, stream_id: int) -> None:
        body = self._bodies.pop(stream_id, None)
        if stream_id not in self.request_streams:
            return  # reset by us after a timeout, its slot given back then
        if body:
            super().on_data_received(bytes(body), stream_id)
        self.request_streams.pop(stream_id, None)
        super().on_stream_ended(stream_id)
        if self.terminated and not self.requests:
            self.close()

    def data_received(self, data: bytes) -> None:
        # GOAWAY frames are taken out here and handled by _goaway: h2 closes
        # its state machine on GOAWAY and would then refuse the answers the
        # server still sends for streams it took.
        self._inbound.extend(data)
        for chunk, goaway in split_goaway(self._inbound):
            if chunk:
                self._dispatch(self.conn.receive_data(chunk))
            if goaway is not None:
                self._goaway(goaway)
        self.flush()

    def _dispatch(self, events: list[Any]) -> None:
        # aioapns' own loop matches h2's event classes; these are jh2's.
        for event in events:
            if isinstance(event, jh2_events.ResponseReceived):
                self.on_response_received(dict(event.headers))
            elif isinstance(event, jh2_events.DataReceived):
                self.on_data_received(event.data, event.stream_id)
            elif isinstance(event, jh2_events.StreamEnded):
                self.on_stream_ended(event.stream_id)
            elif isinstance(event, jh2_events.WindowUpdated):
                self._window_opened.set()
            elif isinstance(event, jh2_events.RemoteSettingsChanged):
                self.on_remote_settings_changed(event.changed_settings)
                self._window_opened.set()
                self._server_settings.set()
            elif isinstance(event, jh2_events.ConnectionTerminated):
                self.on_connection_terminated(event)

    def on_connection_terminated(self, event: Any) -> None:
        self._goaway(event.last_stream_id)

    def _goaway(self, last_stream_id: int) -> None:
        """Requests on streams after ``last_stream_id`` were not processed and
        fail now, so the pool resends them without duplicates; the others
        still get their answers before the connection closes (aioapns closes
        at once and resends them all)."""
        self.terminated = True
        self._server_settings.set()
        for stream_id, notification_id in list(self.request_streams.items()):
            if stream_id > last_stream_id:
                del self.request_streams[stream_id]
                future = self.requests.pop(notification_id, None)
                if future is not None and not future.done():
                    future.set_exception(ConnectionClosed("not processed before GOAWAY"))
        if self.requests:
            self.loop.call_later(self.GOAWAY_GRACE_S, self.close)
        else:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.terminated = True
        self._server_settings.set()
        super().connection_lost(exc)

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        if not self._server_settings.is_set():
            # aioapns opens up to 1,000 streams at once; a server holds a
            # client to its old limit (h2's 100) until the client has
            # acknowledged the server's SETTINGS. A new connection's burst
            # before them was a protocol error that killed the connection and
            # the pushes the server had taken (sent again: 74-177 duplicates
            # a broadcast in containers). Our acknowledgement goes out before
            # any stream opened after this wait.
            await self._server_settings.wait()
        if self.terminated:
            raise ConnectionClosed("connection received GOAWAY")
        await self.free_channels.acquire()  # a slot; its stream id is taken below
        sent = False
        try:
            data = json.dumps(request.message, ensure_ascii=False).encode()
            # aioapns sends whatever the window: past the connection's 64 KiB
            # (600 small pushes in flight) h2 refuses, and the request dies
            # with its headers already sent. Wait for the server's window.
            while self.conn.outbound_flow_control_window < len(data):
                self._window_opened.clear()
                await self._window_opened.wait()
                if self.terminated:
                    raise ConnectionClosed("connection received GOAWAY")
            # The id only now: streams must open in the order of their ids,
            # and waiters wake in any order.
            stream_id = self.conn.get_next_available_stream_id()
            self.conn.send_headers(stream_id=stream_id, headers=self._headers(request))
            self.conn.send_data(stream_id=stream_id, data=data, end_stream=True)
            self.flush()
            sent = True
        except H2ProtocolError as e:
            # The connection closed under us: the pool retries elsewhere.
            if not self._failure_logged:
                self._failure_logged = True
                log.warning("APNs connection failed: %s: %s", type(e).__name__, e)
            raise ConnectionClosed(str(e)) from None
        finally:
            if not sent:  # no stream will end to give the slot back
                self.free_channels.release()
        future: asyncio.Future[NotificationResult] = asyncio.get_running_loop().create_future()
        self.requests[request.notification_id] = future
        self.request_streams[stream_id] = request.notification_id
        try:
            return await future
        except asyncio.CancelledError:
            # Timed out: forget it, and reset its stream, or the stream would
            # count against the server's concurrency limit until the
            # connection dies of too many streams.
            self.requests.pop(request.notification_id, None)
            if self.request_streams.pop(stream_id, None) is not None:
                self._bodies.pop(stream_id, None)
                self.free_channels.release()  # a reset stream never ends
                with contextlib.suppress(H2ProtocolError):
                    self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
                    self.flush()
            raise

    def _headers(self, request: NotificationRequest) -> list[tuple[str, str]]:
        headers = [(":method", "POST"), (":scheme", "https"), (":path", f"/3/device/{request.device_token}"),
                   ("host", self.APNS_SERVER), ("apns-id", request.notification_id),
                   ("apns-topic", request.apns_topic or self.apns_topic)]
        if request.time_to_live is not None:
            headers.append(("apns-expiration", str(int(time.time()) + request.time_to_live)))
        if request.priority is not None:
            headers.append(("apns-priority", str(request.priority)))
        if request.collapse_key is not None:
            headers.append(("apns-collapse-id", request.collapse_key))
        if request.push_type is not None:
            headers.append(("apns-push-type", request.push_type.value))
        if self.auth_provider:
            headers.append(("authorization", self.auth_provider.get_header()))
        return headers


class _Dialler:
    """aioapns dials once per waiting push after a failed connect (a
    thousand pushes in flight make a thousand attempts): connects here wait
    out a jittered delay after a failure, failing at once meanwhile."""

    reconnect: ReconnectDelay

    async def create_connection(self) -> APNsBaseClientProtocol:
        return await self.reconnect.dial(
            self._dial, lambda wait: ApnsConnectionError(f"next connection attempt in {wait:.1f} s"))

    async def _dial(self) -> APNsBaseClientProtocol:
        raise NotImplementedError


class _CertPool(_Dialler, APNsCertConnectionPool):
    async def _dial(self) -> APNsBaseClientProtocol:
        return await APNsCertConnectionPool.create_connection(self)


class _KeyPool(_Dialler, APNsKeyConnectionPool):
    """aioapns' token-auth pool, with the shared provider token."""

    def __init__(self, provider: SharedProviderToken, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.provider = provider

    async def _dial(self) -> APNsBaseClientProtocol:
        # aioapns' own hints are off here (an optional topic, a NoReturn callback).
        factory = partial(self.protocol_class, self.apns_topic, self.loop,  # type: ignore[arg-type]
                          self.discard_connection, self.provider)  # type: ignore[arg-type]
        return await self._create_connection(factory)


class ApnsSender:
    def __init__(self, settings: ApnsSettings) -> None:
        self.settings = settings
        host, port = _endpoint(settings.endpoint)
        protocol = type("ApnsProtocol", (_Protocol,), {
            "APNS_SERVER": host, "APNS_PORT": port, "INACTIVITY_TIME": settings.idle_timeout_s,
        })
        tls = ssl.create_default_context(cafile=str(settings.ca_path) if settings.ca_path else None)
        self.provider: SharedProviderToken | None = None
        # Two attempts: a push the server did not take before GOAWAY goes
        # again on another connection; beyond that, retries are the
        # pipeline's, with backoff.
        common: dict[str, Any] = {"topic": settings.topic, "max_connections": settings.connections,
                                  "max_connection_attempts": 2, "ssl_context": tls}
        self.pool: _KeyPool | _CertPool
        if settings.cert_path is not None:
            try:
                self.pool = _CertPool(cert_file=str(settings.cert_path), **common)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"apns.cert_path: cannot load {settings.cert_path}: {e}") from None
        else:
            assert settings.key_path and settings.key_id and settings.team_id
            try:
                key = settings.key_path.read_text()
            except OSError as e:
                raise ConfigError(f"apns.key_path: cannot read {settings.key_path}: {e.strerror}") from None
            except UnicodeDecodeError:
                raise ConfigError(f"apns.key_path: {settings.key_path} is not an ES256 .p8 key: not PEM text "
                                  "(a DER or other binary file?)") from None
            self.provider = SharedProviderToken(key, settings.key_id, settings.team_id, settings.token_refresh_s)
            try:
                self.provider.get_header()
            except (ValueError, jwt.PyJWTError) as e:
                raise ConfigError(f"apns.key_path: {settings.key_path} is not an ES256 .p8 key: {e}") from None
            self.pool = _KeyPool(self.provider, key=key, key_id=settings.key_id, team_id=settings.team_id,
                                 **common)
        self.pool.protocol_class = protocol
        self.pool.reconnect = ReconnectDelay()
        self._slots = asyncio.Semaphore(settings.in_flight)

    async def send(self, push: Push) -> Outcome:
        """Sends one push and says what became of it. Never raises for a
        gateway's answer or a network fault: those are outcomes."""
        async with self._slots:
            outcome = await self._send_once(push)
            if outcome.reason == "ExpiredProviderToken" and self.provider is not None:
                self.provider.force_refresh()
                outcome = await self._send_once(push)
            return outcome

    async def _send_once(self, push: Push) -> Outcome:
        request = NotificationRequest(
            device_token=push.token,
            message=dict(push.payload),
            notification_id=push.push_id,
            time_to_live=push.ttl_s,
            priority=10 if push.priority == "high" else 5,
            collapse_key=push.collapse_key,
            push_type=PushType(push.push_type),
            apns_topic=push.topic,
        )
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                result = await self.pool.send_notification(request)
        except TimeoutError:
            return no_answer("timeout")
        except (ConnectionClosed, ApnsConnectionError, MaxAttemptsExceeded, OSError) as e:
            return no_answer(f"connection: {type(e).__name__}")
        return apns_outcome(int(result.status), result.description or "", None, self.settings.bad_token_removes)

    async def close(self) -> None:
        self.pool.close()


def _endpoint(endpoint: str) -> tuple[str, int]:
    if endpoint in ENDPOINTS:
        return ENDPOINTS[endpoint]
    host, _, port = endpoint.rpartition(":")
    return host, int(port)
