"""Both fakes together, as tests, the demo and ``dispatcher fake-gateways``
run them: fake APNs, fake FCM, FCM's OAuth endpoint, and a plain-HTTP stats
endpoint (``GET /stats``, ``POST /faults/{apns,fcm}``, ``POST /reset``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from dispatcher.fakes.apns import FakeApns
from dispatcher.fakes.credentials import FakeCredentials, make_credentials
from dispatcher.fakes.faults import Counters, Faults
from dispatcher.fakes.fcm import FakeFcm
from dispatcher.fakes.h2server import H2Server, server_tls


class FakeGateways:
    def __init__(self, directory: Path, *, host: str = "127.0.0.1", apns_faults: Faults | None = None,
                 fcm_faults: Faults | None = None, ports: dict[str, int] | None = None,
                 public_host: str | None = None, apns_ids: tuple[str | None, str | None] = (None, None)) -> None:
        """``public_host``: the name clients reach these fakes by when it is
        not ``host`` (a container's name); ``apns_ids``: fixed APNs key and
        team ids, random when None."""
        self.directory = directory
        self.host = host
        self.public_host = public_host or host
        self.ports = {"apns": 0, "fcm": 0, "oauth": 0, "stats": 0, **(ports or {})}
        hosts = tuple(dict.fromkeys((self.public_host, host, "127.0.0.1", "localhost")))
        self.credentials: FakeCredentials = make_credentials(directory, hosts=hosts, apns_ids=apns_ids)
        self.apns = FakeApns(self.credentials, apns_faults)
        self.fcm = FakeFcm(self.credentials, fcm_faults)
        self._runners: list[web.AppRunner] = []

    async def start(self) -> None:
        self.ports["apns"] = await self.apns.server.start(self.host, self.ports["apns"])
        self.ports["fcm"] = await self.fcm.server.start(self.host, self.ports["fcm"])
        oauth = web.Application()
        oauth.router.add_post("/token", self.fcm.oauth_token)
        tls = server_tls(str(self.credentials.server_cert_path), alpn=["http/1.1"])
        self.ports["oauth"] = await self._serve(oauth, self.ports["oauth"], tls)
        self.fcm.token_uri = f"https://{self.public_host}:{self.ports['oauth']}/token"
        self.credentials.set_token_uri(self.fcm.token_uri)
        stats = web.Application()
        stats.router.add_get("/stats", self._stats)
        stats.router.add_post("/faults/{gateway}", self._set_faults)
        stats.router.add_post("/reset", self._reset)
        self.ports["stats"] = await self._serve(stats, self.ports["stats"], None)

    async def _serve(self, app: web.Application, port: int, tls: Any) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, port, ssl_context=tls)
        await site.start()
        self._runners.append(runner)
        server = site._server
        assert server is not None
        bound: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return bound

    async def stop(self) -> None:
        await self.apns.server.stop()
        await self.fcm.server.stop()
        for runner in self._runners:
            await runner.cleanup()

    def stats(self) -> dict[str, Any]:
        return {
            "apns": {**self._gateway_stats(self.apns.counters, self.apns.server),
                     "accepted_by_topic": dict(self.apns.counters.accepted_by_app)},
            "fcm": {**self._gateway_stats(self.fcm.counters, self.fcm.server),
                    "accepted_by_project": dict(self.fcm.counters.accepted_by_app),
                    "oauth_tokens_issued": self.fcm.tokens_issued},
        }

    @staticmethod
    def _gateway_stats(counters: Counters, server: H2Server) -> dict[str, Any]:
        return {**counters.snapshot(), "goaways": server.goaways, "dropped_connections": server.dropped,
                "connections": server.tcp_connections, "refused_connections": server.refused}

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _set_faults(self, request: web.Request) -> web.Response:
        gateway = request.match_info["gateway"]
        if gateway not in ("apns", "fcm"):
            return web.json_response({"error": f"no gateway {gateway!r}; apns or fcm"}, status=404)
        try:
            faults = Faults.model_validate(await request.json(), context={"gateway": gateway})
        except (ValueError, ValidationError) as e:
            return web.json_response({"error": str(e)}, status=400)
        (self.apns if gateway == "apns" else self.fcm).faults.set(faults)
        return web.json_response(json.loads(faults.model_dump_json()))

    async def _reset(self, request: web.Request) -> web.Response:
        self.apns.counters.reset()
        self.fcm.counters.reset()
        return web.json_response({"reset": True})

    def describe(self) -> str:
        c = self.credentials
        return "\n".join([
            f"fake APNs:  https://{self.public_host}:{self.ports['apns']}  (key {c.apns_key_path}, "
            f"key id {c.apns_key_id}, team id {c.apns_team_id})",
            # Every project on this one line: readers of this output count lines.
            f"fake FCM:   https://{self.public_host}:{self.ports['fcm']}  ("
            + "; ".join(f"project {p}, service account {path}" for p, path in c.fcm_projects.items()) + ")",
            f"OAuth:      {self.fcm.token_uri}",
            f"CA:         {c.ca_path}",
            f"stats:      http://{self.public_host}:{self.ports['stats']}/stats",
        ])
