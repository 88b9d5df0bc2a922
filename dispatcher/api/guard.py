"""Slow clients and too many connections.

aiohttp bounds how long a handler may take but not how long a client may
take to send a request's headers: a client that sends one header byte a
second (slowloris) holds its connection for ever. The guard wraps each
connection's protocol (aiohttp's RequestHandler):

- a timer starts when the connection opens and again after each response;
  a request reaching the API's middleware stops it; when it fires the
  connection is closed. So a request's headers must arrive within
  ``header_timeout_s`` of the connection opening or of the previous
  response, which also bounds an idle keep-alive. (The body has its own
  timeout, where it is read: inputs.read_json.)
- connections beyond ``max_connections`` are closed as they arrive, before
  aiohttp sees them.

GuardedSite is a TCPSite whose connections get the guarded protocol; the
app runner stops it and closes its connections as it would a TCPSite's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler


class ConnectionGuard:
    def __init__(self, header_timeout_s: float, max_connections: int) -> None:
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.open = 0
        self.refused = 0
        self.timed_out = 0

    @staticmethod
    def request_arrived(request: web.BaseRequest) -> None:
        """Called by the middleware: the request's headers are in."""
        protocol = request.protocol
        if isinstance(protocol, GuardedRequestHandler):
            protocol.stop_timer()


class GuardedRequestHandler(RequestHandler):
    def __init__(self, guard: ConnectionGuard, manager: web.Server, loop: asyncio.AbstractEventLoop,
                 **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._guard = guard
        self._guard_loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._guard.open >= self._guard.max_connections:
            # Refused before aiohttp starts anything for it.
            self._guard.refused += 1
            transport.close()
            return
        self._guard.open += 1
        self._counted = True
        super().connection_made(transport)
        self._start_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._counted:
            return
        self._counted = False
        self._guard.open -= 1
        self.stop_timer()
        super().connection_lost(exc)

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            # The next request's headers are due within the timeout from now.
            if self._counted:
                self._start_timer()

    def _start_timer(self) -> None:
        self.stop_timer()
        self._timer = self._guard_loop.call_later(self._guard.header_timeout_s, self._expired)

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        self._guard.timed_out += 1
        self.force_close()


class GuardedSite(web.BaseSite):
    """Listens on host:port like web.TCPSite, with guarded connections."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard,
                 backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._app_runner = runner
        self._host, self._port = host, port
        self._guard = guard
        self._listener: asyncio.Server | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        if self._listener is None or not self._listener.sockets:
            return self._port
        return int(self._listener.sockets[0].getsockname()[1])

    async def start(self) -> None:
        await super().start()
        server = self._app_runner.server
        assert server is not None, "the runner is set up first"
        loop = asyncio.get_running_loop()

        def protocol() -> GuardedRequestHandler:
            return GuardedRequestHandler(self._guard, server, loop, access_log=None)

        self._listener = await loop.create_server(protocol, self._host, self._port, backlog=self._backlog,
                                                  reuse_address=True)
        # BaseSite.stop closes what it holds here.
        self._server = self._listener
