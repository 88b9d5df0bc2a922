"""The peers a benchmark row compares against, each sending one APNs push
the way its users write it, pointed at a fake APNs:

- ``bare_aioapns``: aioapns' ``APNs(...)`` and ``send_notification``;
- ``CurlApns``: libcurl (nghttp2) through pycurl's multi interface on the
  asyncio loop, the alternative compiled HTTP/2 client to pyreqwest.
"""

from __future__ import annotations

import asyncio
import io
import ssl
from typing import Any

from aioapns import APNs
from aioapns.connection import APNsTLSClientProtocol

from dispatcher.core.config import ApnsSettings
from dispatcher.gateways.apns import SharedProviderToken


def bare_aioapns(settings: ApnsSettings) -> APNs:
    """An aioapns client with ``settings``' key, topic, connections and CA.
    aioapns dials Apple's hosts only: the address is set on its protocol
    class, the way its own sandbox switch does."""
    host, _, port = settings.endpoint.rpartition(":")
    tls = ssl.create_default_context(cafile=str(settings.ca_path) if settings.ca_path else None)
    assert settings.key_path is not None
    client = APNs(key=settings.key_path.read_text(), key_id=settings.key_id, team_id=settings.team_id,
                  topic=settings.topic, max_connections=settings.connections, ssl_context=tls)
    client.pool.protocol_class = type("ToFake", (APNsTLSClientProtocol,), {"APNS_SERVER": host,
                                                                           "APNS_PORT": int(port)})
    return client


class CurlApns:
    """APNs pushes through one pycurl CurlMulti driven by the asyncio loop
    (socket and timer callbacks): HTTP/2 multiplexed over at most
    ``settings.connections`` connections, one easy handle per request."""

    def __init__(self, settings: ApnsSettings) -> None:
        import pycurl  # the bench extra

        self.pycurl = pycurl
        assert settings.key_path and settings.key_id and settings.team_id
        self.provider = SharedProviderToken(settings.key_path.read_text(), settings.key_id, settings.team_id, 3000)
        self.base = f"https://{settings.endpoint}/3/device/"
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
        self.multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, settings.connections)
        self.multi.setopt(pycurl.M_SOCKETFUNCTION, self._watch)
        self.multi.setopt(pycurl.M_TIMERFUNCTION, self._timer)
        self._timeout: asyncio.TimerHandle | None = None
        self._waiting: dict[Any, asyncio.Future[None]] = {}
        self._watched: dict[int, tuple[bool, bool]] = {}
        self._idle: list[Any] = []

    def _watch(self, what: int, fd: int, _multi: Any, _data: Any) -> None:
        pc = self.pycurl
        reading, writing = self._watched.pop(fd, (False, False))
        if reading:
            self.loop.remove_reader(fd)
        if writing:
            self.loop.remove_writer(fd)
        if what == pc.POLL_REMOVE:
            return
        reading, writing = what in (pc.POLL_IN, pc.POLL_INOUT), what in (pc.POLL_OUT, pc.POLL_INOUT)
        if reading:
            self.loop.add_reader(fd, self._act, fd, pc.CSELECT_IN)
        if writing:
            self.loop.add_writer(fd, self._act, fd, pc.CSELECT_OUT)
        self._watched[fd] = (reading, writing)

    def _timer(self, ms: int) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        if ms >= 0:
            self._timeout = self.loop.call_later(ms / 1000, self._act, self.pycurl.SOCKET_TIMEOUT, 0)

    def _act(self, fd: int, events: int) -> None:
        while self.multi.socket_action(fd, events)[0] == self.pycurl.E_CALL_MULTI_PERFORM:
            pass
        while True:
            left, done, failed = self.multi.info_read()
            for handle in done:
                self.multi.remove_handle(handle)
                self._waiting.pop(handle).set_result(None)
            for handle, code, message in failed:
                self.multi.remove_handle(handle)
                self._waiting.pop(handle).set_exception(OSError(code, message))
            if not left:
                break

    def _handle(self) -> Any:
        if self._idle:
            return self._idle.pop()
        pc, handle = self.pycurl, self.pycurl.Curl()
        if self.settings.ca_path:
            handle.setopt(pc.CAINFO, str(self.settings.ca_path))
        handle.setopt(pc.HTTP_VERSION, pc.CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE)
        handle.setopt(pc.PIPEWAIT, 1)
        handle.setopt(pc.TIMEOUT_MS, int(self.settings.request_timeout_s * 1000))
        handle.setopt(pc.POST, 1)
        return handle

    async def send(self, token: str, body: bytes) -> int:
        """One push; its HTTP status."""
        pc, handle, answer = self.pycurl, self._handle(), io.BytesIO()
        handle.setopt(pc.URL, self.base + token)
        handle.setopt(pc.HTTPHEADER, ["authorization: " + self.provider.get_header(),
                                      "apns-topic: " + str(self.settings.topic), "apns-push-type: alert"])
        handle.setopt(pc.POSTFIELDS, body)
        handle.setopt(pc.WRITEDATA, answer)
        done = self.loop.create_future()
        self._waiting[handle] = done
        self.multi.add_handle(handle)
        try:
            await done
            return int(handle.getinfo(pc.RESPONSE_CODE))
        finally:
            self._idle.append(handle)

    def close(self) -> None:
        for handle in self._idle:
            handle.close()
        self.multi.close()
