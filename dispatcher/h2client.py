"""A lean HTTP/2 client for one origin, on jh2 (h2's API with HPACK in
Rust): a few persistent connections, requests spread over them, flow
control respected, and GOAWAY honoured the way the gateways mean it.

Written for FCM, where httpx + httpcore + anyio + h2 cost ~1.2 ms of CPU a
push (bench/RESULTS.md); the per-request work here is one header block and
one DATA frame.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

from jh2 import config as jh2_config
from jh2 import connection as jh2_connection
from jh2 import events as jh2_events
from jh2 import exceptions as jh2_exceptions
from jh2 import settings as jh2_settings

from dispatcher.backoff import ReconnectDelay

log = logging.getLogger(__name__)

_FRAME_HEADER = 9
_GOAWAY = 0x7


class H2Error(Exception):
    """The request got no answer: the connection failed or closed under it.
    Safe to resend only when ``unprocessed`` (the server said so)."""

    def __init__(self, message: str, unprocessed: bool = False) -> None:
        super().__init__(message)
        self.unprocessed = unprocessed


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class _Stream:
    future: asyncio.Future[Response]
    body: memoryview  # what is left to send
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    received: bytearray = field(default_factory=bytearray)


def split_goaway(buffer: bytearray) -> list[tuple[bytes, int | None]]:
    """Consumes the complete HTTP/2 frames at the head of ``buffer``: runs of
    frames to pass on, each followed by the last_stream_id of the GOAWAY that
    ended it (None for the final run). An incomplete frame stays buffered.

    GOAWAY frames are taken out before h2 sees them: h2 closes its state
    machine on GOAWAY and would refuse the answers the server still sends
    for the streams it took."""
    out: list[tuple[bytes, int | None]] = []
    start = pos = 0
    while len(buffer) - pos >= _FRAME_HEADER:
        length = int.from_bytes(buffer[pos:pos + 3], "big")
        end = pos + _FRAME_HEADER + length
        if end > len(buffer):
            break
        if buffer[pos + 3] == _GOAWAY and length >= 8:
            last = int.from_bytes(buffer[pos + 9:pos + 13], "big") & 0x7FFFFFFF
            out.append((bytes(buffer[start:pos]), last))
            start = end
        pos = end
    out.append((bytes(buffer[start:pos]), None))
    del buffer[:pos]
    return out


class _Connection(asyncio.Protocol):
    # After GOAWAY, how long answers to streams the server took may still come.
    GOAWAY_GRACE_S = 5.0

    def __init__(self) -> None:
        self.h2 = jh2_connection.H2Connection(jh2_config.H2Configuration(client_side=True,
                                                                         header_encoding="utf-8"))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.max_streams = 100
        self.closing = False
        self._inbound = bytearray()
        self._blocked: set[int] = set()  # streams waiting for flow-control window

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.closing and len(self.streams) < self.max_streams

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio's classes
        tls = transport.get_extra_info("ssl_object")
        if tls is not None and tls.selected_alpn_protocol() != "h2":
            log.error("h2: the server did not agree to HTTP/2 (ALPN %r); closing", tls.selected_alpn_protocol())
            self._close()
            return
        self.h2.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.transport = None
        self._fail(lambda _: True, H2Error(f"connection lost: {exc or 'closed'}"))

    def request(self, headers: list[tuple[str, str]], body: bytes) -> asyncio.Future[Response]:
        if not self.usable:
            raise H2Error("connection is closing", unprocessed=True)
        stream_id = self.h2.get_next_available_stream_id()
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        # A caller that gave up (stopping, a timeout) no longer awaits it:
        # its failure when the connection closes is expected, not "never
        # retrieved".
        future.add_done_callback(_retrieved)
        self.h2.send_headers(stream_id, headers, end_stream=not body)
        self.streams[stream_id] = _Stream(future, memoryview(body))
        self._send_body(stream_id)
        self._flush()
        return future

    def forget(self, future: asyncio.Future[Response]) -> None:
        """A caller gave up (timeout): reset its stream so its slot frees."""
        for stream_id, stream in list(self.streams.items()):
            if stream.future is future:
                del self.streams[stream_id]
                self._blocked.discard(stream_id)
                try:
                    self.h2.reset_stream(stream_id)
                    self._flush()
                except jh2_exceptions.H2Error:
                    pass

    def _send_body(self, stream_id: int) -> None:
        stream = self.streams[stream_id]
        while stream.body:
            window = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            if window <= 0:
                self._blocked.add(stream_id)
                return
            chunk, stream.body = stream.body[:window], stream.body[window:]
            self.h2.send_data(stream_id, bytes(chunk), end_stream=not stream.body)
        self._blocked.discard(stream_id)

    def data_received(self, data: bytes) -> None:
        self._inbound.extend(data)
        try:
            for chunk, goaway in split_goaway(self._inbound):
                if chunk:
                    self._handle(self.h2.receive_data(chunk))
                if goaway is not None:
                    self._goaway(goaway)
        except jh2_exceptions.ProtocolError as e:
            log.warning("h2: protocol error from the server: %s", e)
            self._close()
        self._flush()

    def _handle(self, events: list[Any]) -> None:
        for event in events:
            stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, jh2_events.ResponseReceived) and stream is not None:
                headers = {k if isinstance(k, str) else k.decode(): v if isinstance(v, str) else v.decode()
                           for k, v in event.headers}
                stream.status = int(headers.pop(":status", "0"))
                stream.headers = headers
            elif isinstance(event, jh2_events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if stream is not None:
                    stream.received.extend(event.data)
            elif isinstance(event, jh2_events.StreamEnded) and stream is not None:
                del self.streams[event.stream_id]
                if not stream.future.done():
                    stream.future.set_result(Response(stream.status, stream.headers, bytes(stream.received)))
            elif isinstance(event, jh2_events.StreamReset) and stream is not None:
                del self.streams[event.stream_id]
                self._blocked.discard(event.stream_id)
                refused = event.error_code == jh2_exceptions.ErrorCodes.REFUSED_STREAM
                if not stream.future.done():
                    stream.future.set_exception(H2Error(f"stream reset ({event.error_code})", unprocessed=refused))
            elif isinstance(event, jh2_events.WindowUpdated):
                for stream_id in list(self._blocked):
                    if stream_id in self.streams:
                        self._send_body(stream_id)
            elif isinstance(event, jh2_events.RemoteSettingsChanged):
                changed = event.changed_settings.get(jh2_settings.SettingCodes.MAX_CONCURRENT_STREAMS)
                if changed is not None:
                    self.max_streams = changed.new_value
            elif isinstance(event, jh2_events.ConnectionTerminated):
                self._goaway(event.last_stream_id or 0)
        if self.closing and not self.streams:
            self._close()

    def _goaway(self, last_stream_id: int) -> None:
        """Streams after ``last_stream_id`` were not processed: they fail as
        safe to resend. The others still get their answers, for a while."""
        self.closing = True
        self._fail(lambda sid: sid > last_stream_id,
                   H2Error("not processed before GOAWAY", unprocessed=True))
        if self.streams:
            asyncio.get_running_loop().call_later(self.GOAWAY_GRACE_S, self._close)
        else:
            self._close()

    def _fail(self, which: Any, error: H2Error) -> None:
        for stream_id in [s for s in self.streams if which(s)]:
            stream = self.streams.pop(stream_id)
            self._blocked.discard(stream_id)
            if not stream.future.done():
                stream.future.set_exception(error)

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


class H2Client:
    """Requests to one origin (``https://host[:port]``) over up to
    ``connections`` HTTP/2 connections, opened on demand and replaced when
    they close."""

    def __init__(self, origin: str, connections: int = 2, timeout_s: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        url = urlsplit(origin)
        self.host = url.hostname or "localhost"
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.authority = url.netloc
        self.scheme = url.scheme
        self.timeout_s = timeout_s
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
            self._ssl.set_alpn_protocols(["h2"])
        self._size = connections
        self._connections: list[_Connection] = []
        self._opening: asyncio.Task[_Connection] | None = None
        self.reconnect = ReconnectDelay()

    async def _connection(self) -> _Connection:
        self._connections = [c for c in self._connections if c.transport is not None or not c.closing]
        usable = [c for c in self._connections if c.usable]
        if usable and (len(self._connections) >= self._size or min(len(c.streams) for c in usable) == 0):
            return min(usable, key=lambda c: len(c.streams))
        if self._opening is None:
            self._opening = asyncio.create_task(self._open())
        opening = self._opening
        try:
            return await asyncio.shield(opening)
        finally:
            if self._opening is opening and opening.done():
                self._opening = None

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await self.reconnect.dial(
                lambda: asyncio.wait_for(loop.create_connection(
                    _Connection, self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None), self.timeout_s),
                lambda wait: H2Error(f"cannot connect to {self.authority}: next attempt in {wait:.1f} s",
                                     unprocessed=True))
        except (OSError, TimeoutError, ssl.SSLError) as e:
            raise H2Error(f"cannot connect to {self.authority}: {e}", unprocessed=True) from None
        self._connections.append(conn)
        return conn

    async def post(self, path: str, body: bytes, headers: list[tuple[str, str]]) -> Response:
        """One request; raises TimeoutError after timeout_s, H2Error when the
        connection fails under it."""
        conn = await self._connection()
        request = [(":method", "POST"), (":scheme", self.scheme), (":authority", self.authority),
                   (":path", path), ("content-length", str(len(body))), *headers]
        try:
            future = conn.request(request, body)
        except jh2_exceptions.H2Error as e:
            raise H2Error(f"connection refused the request: {e}", unprocessed=True) from None
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            conn.forget(future)
            raise

    async def close(self) -> None:
        for conn in self._connections:
            conn._close()
        self._connections = []


def _retrieved(future: asyncio.Future[Response]) -> None:
    if not future.cancelled():
        future.exception()
