"""A small HTTP/2 server over TLS, the transport of both fake gateways (on
jh2, h2's API with HPACK in Rust, so the fakes cost less CPU in benchmarks).

It does what the real gateways' transport does and what clients trip on:
TLS with or without ALPN (aioapns offers none), SETTINGS with a
MAX_CONCURRENT_STREAMS limit, real flow control in both directions (it
acknowledges what it receives, and sends response bodies only as far as the
client's window allows, so a client that never acknowledges stalls as it
would against Apple), GOAWAY, connections dropped without a word, and
connections refused (closed as they arrive, before TLS).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

from jh2.config import H2Configuration
from jh2.connection import H2Connection
from jh2.errors import ErrorCodes
from jh2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from jh2.exceptions import ProtocolError, StreamClosedError
from jh2.settings import SettingCodes

log = logging.getLogger(__name__)


@dataclass
class Request:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: H2ServerProtocol

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def count(self, name: str) -> int:
        return sum(1 for key, _ in self.headers if key == name)


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class ConnectionFaults:
    """What happens to each connection: refused as it arrives, or GOAWAY or a
    silent drop once it has received so many requests (None: never)."""

    goaway_after: int | None = None
    drop_after: int | None = None
    refuse: bool = False


def server_tls(cert_chain_path: str, ca_path: str | None = None, alpn: list[str] | None = None) -> ssl.SSLContext:
    """TLS for a fake: our certificate, ALPN offered but not required (``alpn``,
    default h2), and client certificates checked against ``ca_path`` when a
    client sends one."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_chain_path)
    ctx.set_alpn_protocols(["h2"] if alpn is None else alpn)
    if ca_path is not None:
        ctx.load_verify_locations(ca_path)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


class H2ServerProtocol(asyncio.Protocol):
    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.transport: asyncio.Transport | None = None
        self.requests_seen = 0
        self.closing = False
        self.state: dict[str, Any] = {}  # per-connection state for the handler (JWT, ...)
        self._streams: dict[int, tuple[list[tuple[str, str]], bytearray]] = {}
        self._unsent: dict[int, bytearray] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def peer_certificate(self) -> dict[str, Any] | None:
        assert self.transport is not None
        cert: dict[str, Any] | None = self.transport.get_extra_info("peercert")
        return cert or None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is no asyncio.Transport subclass, but is one.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self.conn.initiate_connection()
        self.conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_concurrent_streams})
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        for task in self._tasks:
            task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as e:
            assert self.transport is not None
            log.info("fake gateway on port %s: protocol error from client %s: %s (%s)",
                     self.transport.get_extra_info("sockname")[1], self.transport.get_extra_info("peername"), e,
                     type(e).__name__)
            self._flush()
            self._close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                # header_encoding="utf-8": names and values arrive as str.
                headers = [(str(k), str(v)) for k, v in event.headers or []]
                self._streams[event.stream_id] = (headers, bytearray())
                # jh2's open_inbound_streams walks every stream (10% of the
                # fake's CPU a push at 1,000 in flight): asked only when our
                # own count (never lower while the connection serves) passes the peak.
                if len(self._streams) + len(self._tasks) + len(self._unsent) > self.server.peak_streams:
                    self.server.peak_streams = max(self.server.peak_streams, self.conn.open_inbound_streams)
            elif isinstance(event, DataReceived):
                if event.stream_id in self._streams:
                    self._streams[event.stream_id][1].extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                self._request_complete(event.stream_id)
            elif isinstance(event, StreamReset):
                self._streams.pop(event.stream_id, None)
                self._unsent.pop(event.stream_id, None)
            elif isinstance(event, WindowUpdated):
                self._send_unsent()
            elif isinstance(event, ConnectionTerminated):
                self._close()
        self._flush()

    def _request_complete(self, stream_id: int) -> None:
        headers, body = self._streams.pop(stream_id, ([], bytearray()))
        if self.closing:
            return
        self.requests_seen += 1
        faults = self.server.connection_faults()
        if faults.drop_after is not None and self.requests_seen >= faults.drop_after:
            log.info("fake gateway: dropping a connection after %d requests", self.requests_seen)
            self.server.dropped += 1
            self.closing = True
            assert self.transport is not None
            self.transport.abort()
            return
        pseudo = dict(headers)
        request = Request(pseudo.get(":method", ""), pseudo.get(":path", ""),
                          [(k, v) for k, v in headers if not k.startswith(":")], bytes(body), self)
        task = asyncio.create_task(self._serve(stream_id, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if faults.goaway_after is not None and self.requests_seen >= faults.goaway_after:
            self.goaway(last_stream_id=stream_id)

    async def _serve(self, stream_id: int, request: Request) -> None:
        try:
            response = await self.server.handler(request)
        except Exception:
            log.exception("fake gateway: handler failed")
            response = Response(500, body=b'{"reason":"InternalServerError"}')
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self.conn.send_headers(stream_id, [(":status", str(response.status)), *response.headers],
                                   end_stream=not response.body)
        except (StreamClosedError, ProtocolError):
            return
        if response.body:
            self._unsent[stream_id] = bytearray(response.body)
            self._send_unsent()
        self._flush()

    def _send_unsent(self) -> None:
        """Sends response bodies as far as the client's flow-control windows
        allow; the rest waits for its WINDOW_UPDATE."""
        for stream_id in list(self._unsent):
            data = self._unsent[stream_id]
            try:
                while data:
                    window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
                    if window <= 0:
                        break
                    chunk, data[:] = bytes(data[:window]), data[window:]
                    self.conn.send_data(stream_id, chunk, end_stream=not data)
            except (StreamClosedError, ProtocolError):
                data.clear()
            if not data:
                del self._unsent[stream_id]
        self._flush()

    def goaway(self, last_stream_id: int | None = None) -> None:
        """Graceful GOAWAY, as real servers do it: requests up to
        ``last_stream_id`` still get their answers, later ones are ignored,
        and the connection closes once the answers are out. (h2 itself closes
        its state machine on GOAWAY and would drop those answers, so the
        frame is written directly.)"""
        if self.closing or self.transport is None:
            return
        self.closing = True
        self.server.goaways += 1
        last = self.conn.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        payload = last.to_bytes(4, "big") + int(ErrorCodes.NO_ERROR).to_bytes(4, "big")
        # Frame header: length, type 0x7 (GOAWAY), no flags, stream 0.
        frame = len(payload).to_bytes(3, "big") + b"\x07\x00" + bytes(4) + payload
        self._flush()
        self.transport.write(frame)
        self._close_when_answered()

    def _close_when_answered(self, waited_s: float = 0.0) -> None:
        if (self._tasks or self._unsent) and waited_s < 5.0:
            asyncio.get_running_loop().call_later(0.05, self._close_when_answered, waited_s + 0.05)
        else:
            self._close()

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            data = self.conn.data_to_send()
            if data:
                self.transport.write(data)

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


class H2Server:
    """Serves ``handler`` over HTTP/2 and TLS on host:port (0: any free port)."""

    def __init__(
        self,
        handler: Handler,
        tls: ssl.SSLContext,
        connection_faults: Callable[[], ConnectionFaults],
        max_concurrent_streams: int = 1000,
    ) -> None:
        self.handler = handler
        self.tls = tls
        self.connection_faults = connection_faults
        self.max_concurrent_streams = max_concurrent_streams
        self.connections: set[H2ServerProtocol] = set()
        self.tcp_connections = 0  # every connection accepted, refused ones included
        self.refused = 0
        self.goaways = 0
        self.dropped = 0
        # The most streams a client had open at once on one connection.
        self.peak_streams = 0
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        # Our own accept loop rather than create_server(ssl=...), which starts
        # TLS on every connection: a refused one must close before TLS.
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        self._listener = socket.create_server((host, port), family=family, backlog=1024)
        self._listener.setblocking(False)
        self._spawn(self._accept(self._listener))
        bound: int = self._listener.getsockname()[1]
        return bound

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            self.tcp_connections += 1
            if self.connection_faults().refuse:
                self.refused += 1
                sock.close()
            else:
                self._spawn(self._handshake(sock))

    async def _handshake(self, sock: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: H2ServerProtocol(self), sock, ssl=self.tls, ssl_handshake_timeout=10)
        except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
            log.info("fake gateway: TLS handshake failed: %s", e)
            sock.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        await asyncio.sleep(0)  # lets the aborted transports close their sockets
