"""The API's routes and their handlers.

ROUTES, at the end, is the one table of what the API serves: method, path,
handler, scope, parameters (with the constraints the handler enforces),
request model, answers per status and links. It builds aiohttp's router
(Api.app) and the OpenAPI document (openapi.py); the middleware reads
each request's inputs from it before the handler runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from dispatcher.api import docs
from dispatcher.api.auth import Keys
from dispatcher.api.guard import ConnectionGuard, GuardedSite
from dispatcher.api.inputs import Param, check_headers, read_json, validate
from dispatcher.api.models import (
    ANY_TOKEN,
    BROADCAST_ID,
    IDEMPOTENCY_KEY,
    MAX_IDEMPOTENCY_KEY,
    MAX_REASON,
    PUSH_TTL_S,
    TOKEN_PATTERNS,
    TOKEN_RULES,
    BroadcastIn,
    BroadcastListOut,
    BroadcastOut,
    DeadLetterListOut,
    DeadLettersIn,
    DeviceIn,
    DeviceOut,
    ErrorOut,
    HealthOut,
    PurgeOut,
    PushIn,
    PushOut,
    ReadyOut,
    RedriveIn,
    RedriveOut,
)
from dispatcher.api.pressure import ROW_OVERHEAD_BYTES, Pressure
from dispatcher.api.problems import ApiError, for_exception, invalid
from dispatcher.core import metrics
from dispatcher.core.config import ApiSettings
from dispatcher.core.errors import StoreError
from dispatcher.node.contract import Broadcasts, DeadLetters, Pushes, Status, Subscribers
from dispatcher.node.queue import Queue
from dispatcher.node.records import (
    COUNTERS,
    MAX_ID,
    SETTLED,
    Broadcast,
    DeadLetter,
    Registration,
    Scope,
    Subscriber,
    broadcast_id,
)
from dispatcher.node.tasks import SendBacklog
from dispatcher.work.fanout import zones_for
from dispatcher.work.peers import Peers

log = logging.getLogger("dispatcher.api")

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
# /metrics reports the running broadcasts among this many newest (a
# horoscope's local-time broadcast runs a day; hundreds a day are not usual).
RECENT_BROADCASTS = 200


@dataclass(frozen=True, slots=True)
class Args:
    """A request's inputs, read and checked as its route declares."""

    params: dict[str, Any]
    body: BaseModel | None = None
    body_bytes: int = 0

    def model(self, cls: type[M]) -> M:
        assert isinstance(self.body, cls), f"route body is {type(self.body).__name__}, not {cls.__name__}"
        return self.body


Handler = Callable[["Api", web.Request, Args], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Answer:
    """One documented answer of a route."""

    description: str
    model: type[BaseModel] | None = None
    media_type: str = "application/json"
    # Response headers always sent with it.
    headers: tuple[str, ...] = ()
    # OpenAPI links: name -> {"operationId": ..., "parameters": {...}}.
    links: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    name: str  # the OpenAPI operationId
    summary: str
    handler: Handler
    answers: Mapping[int, Answer]
    scope: str | None = None
    params: tuple[Param, ...] = ()
    body: type[BaseModel] | None = None
    # Adds work or data: refused with 429 when the node is full.
    writes: bool = False
    # Store errors reach the client: 503 when the store cannot serve.
    store_errors: bool = True


class _SingleFlight:
    """Callers that come while a call is under way share its result, so a
    crowd of scrapes makes one round of store calls, not one each."""

    def __init__(self) -> None:
        self._running: asyncio.Future[Any] | None = None

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(call())
        result: T = await asyncio.shield(self._running)
        return result


class Api:
    def __init__(self, settings: ApiSettings, keys: dict[str, set[str]], queue: Queue,
                 subscribers: Subscribers, broadcasts: Broadcasts, peers: Peers | None = None,
                 apps: Mapping[str, frozenset[str]] | None = None,
                 memtx_quota_bytes: int = 256 * 2**20) -> None:
        self.settings = settings
        # app -> the platforms it has credentials for
        self.apps = apps if apps is not None else {"news": frozenset({"ios", "android"})}
        self.peers = peers
        self.keys = Keys(keys)
        self.queue = queue
        self.subscribers = subscribers
        self.broadcasts = broadcasts
        self.pushes = Pushes(queue.store)
        self.status = Status(queue.store)
        self.dead_letters = DeadLetters(queue.store)
        self.pressure = Pressure(self.status, SendBacklog(queue, max_age_s=1.0), settings.queue_limit,
                                 settings.memory_limit_share, memtx_quota_bytes, settings.retry_after_s)
        self.guard = ConnectionGuard(settings.header_timeout_s, settings.max_connections)
        self._routes: dict[web.AbstractRoute, Route] = {}
        self._scrape = _SingleFlight()
        self._readiness = _SingleFlight()
        self._document: bytes | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024)
        for route in ROUTES:
            self._routes[app.router.add_route(route.method, route.path, self._unused)] = route
        return app

    def site(self, runner: web.AppRunner) -> GuardedSite:
        """Where the runner listens: api.host and api.port, guarded."""
        return GuardedSite(runner, self.settings.host, self.settings.port, self.guard)

    @staticmethod
    async def _unused(request: web.Request) -> web.StreamResponse:
        raise AssertionError("the middleware serves every route")

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        ConnectionGuard.request_arrived(request)
        route = self._routes.get(request.match_info.route)
        label = route.path if route is not None else "unmatched"
        try:
            if route is None:
                response = await handler(request)  # the router's 404 or 405
            else:
                response = await self._serve(route, request)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            response = for_exception(e, label)
        metrics.API_REQUESTS.labels(label, str(response.status)).inc()
        return response

    async def _serve(self, route: Route, request: web.Request) -> web.StreamResponse:
        if route.scope is not None:
            self.keys.require(request.headers.get("Authorization"), route.scope)
        check_headers(request)
        params = {p.name: p.read(request) for p in route.params}
        if route.body is None:
            return await route.handler(self, request, Args(params))
        value, size = await read_json(request, self.settings.body_timeout_s)
        return await route.handler(self, request, Args(params, validate(route.body, value), size))

    # --- devices ---

    async def put_device(self, request: web.Request, args: Args) -> web.StreamResponse:
        device = args.model(DeviceIn)
        token: str = args.params["token"]
        self._check_app(device.app, device.platform)
        if not re.fullmatch(TOKEN_PATTERNS[device.platform], token):
            raise invalid("token", TOKEN_RULES[device.platform])
        await self.pressure.admit(args.body_bytes + len(token) + ROW_OVERHEAD_BYTES)
        stored = await self.subscribers.put(Registration(token, device.user_id, device.platform, device.app,
                                                         tuple(device.topics), device.tz, device.locale))
        return web.json_response(_device(stored))

    async def delete_device(self, request: web.Request, args: Args) -> web.StreamResponse:
        if not await self.subscribers.remove(args.params["token"]):
            raise ApiError(404, "no such device", [("token", "not registered")])
        return web.Response(status=204)

    # --- pushes ---

    async def post_push(self, request: web.Request, args: Args) -> web.StreamResponse:
        push = args.model(PushIn)
        if push.token is not None:
            device = await self.subscribers.get(push.token)
            devices = [device] if device else []
        else:
            assert push.user_id is not None
            devices = await self.subscribers.of_user(push.user_id)
        if not devices:
            target = "token" if push.token is not None else "user_id"
            raise ApiError(404, "no registered device for this user or token", [(target, "no device registered")])
        # Each device's task carries the whole message.
        await self.pressure.admit(len(devices) * (args.body_bytes + 2 * ROW_OVERHEAD_BYTES), tasks=len(devices))
        ref = {"message": push.message.model_dump(), "collapse_key": push.collapse_key}
        enqueued = await self.pushes.enqueue([d.token for d in devices], ref, push.ttl_s)
        return web.json_response({"enqueued": enqueued}, status=202)

    # --- broadcasts ---

    async def post_broadcast(self, request: web.Request, args: Args) -> web.StreamResponse:
        key: str = args.params["Idempotency-Key"]
        spec = args.model(BroadcastIn)
        self._check_app(spec.audience.app, spec.audience.platform, field="audience.app")
        await self.pressure.admit(2 * (args.body_bytes + ROW_OVERHEAD_BYTES), tasks=1)
        start_in_s = max(0.0, spec.send_at.timestamp() - time.time()) if spec.send_at else 0.0
        stored = json.loads(spec.model_dump_json())
        home = self.peers.home(broadcast_id(key)) if self.peers is not None else None
        zones = zones_for(spec.local_time, time.time() + start_in_s) if spec.local_time else None
        broadcast, created = await self.broadcasts.create(key, stored, start_in_s=start_in_s, home=home, zones=zones)
        if created:
            metrics.BROADCASTS.labels("created").inc()
        return web.json_response(await self._status(broadcast))

    def _check_app(self, app: str, platform: str | None, field: str = "app") -> None:
        """Refuses an app this node has no credentials for, or a platform
        the app has none for: its pushes could never go out."""
        platforms = self.apps.get(app)
        if platforms is None:
            raise invalid(field, f"no app {app!r} is configured on this node; apps: " + ", ".join(sorted(self.apps)))
        if platform is not None and platform not in platforms:
            raise invalid("platform", f"app {app!r} has no {platform} credentials on this node; it sends to "
                                      + ", ".join(sorted(platforms)))

    async def _status(self, b: Broadcast, progress: dict[str, int] | None = None) -> dict[str, Any]:
        if progress is None:
            progress = await self.broadcasts.progress(b.id)
        audience = b.spec.get("audience") or {}
        return {"id": b.id, "idempotency_key": b.idempotency_key, "state": b.state,
                "created": b.created, "finished": b.finished,
                "audience": {"app": audience.get("app", ""), "platform": audience.get("platform"),
                             "topics": list(audience.get("topics") or [])},
                "send_at": b.spec.get("send_at"), "local_time": b.spec.get("local_time"),
                "strategy": b.spec.get("strategy", "baton"),
                "progress": {name: int(progress.get(name, 0)) for name in (*COUNTERS, "pending")}}

    async def _broadcast(self, id_: str) -> Broadcast:
        broadcast = await self.broadcasts.get(id_)
        if broadcast is None:
            raise ApiError(404, "no such broadcast", [("id", "no broadcast has this id")])
        return broadcast

    async def get_broadcast(self, request: web.Request, args: Args) -> web.StreamResponse:
        return web.json_response(await self._status(await self._broadcast(args.params["id"])))

    async def list_broadcasts(self, request: web.Request, args: Args) -> web.StreamResponse:
        listed = await self.broadcasts.list(args.params["limit"], args.params["before"])
        progress = await self.broadcasts.progress_many([b.id for b in listed])
        items = [await self._status(b, p) for b, p in zip(listed, progress, strict=True)]
        return web.json_response({"broadcasts": items})

    async def cancel_broadcast(self, request: web.Request, args: Args) -> web.StreamResponse:
        broadcast = await self._broadcast(args.params["id"])
        broadcast = await self.broadcasts.cancel(broadcast.id)
        metrics.BROADCASTS.labels("cancelled").inc()
        return web.json_response(await self._status(broadcast))

    # --- dead letters: this node's own (node-local) ---

    async def list_dead_letters(self, request: web.Request, args: Args) -> web.StreamResponse:
        p = args.params
        page = await self.dead_letters.list(Scope(broadcast=p["broadcast"], reason=p["reason"]), p["before"],
                                            p["limit"])
        return web.json_response({"dead_letters": [_dead_letter(d) for d in page.letters],
                                  "next_before": page.next_before})

    async def redrive_dead_letters(self, request: web.Request, args: Args) -> web.StreamResponse:
        body = args.model(RedriveIn)
        await self.pressure.admit(0, tasks=len(body.ids) if body.ids else body.limit)
        done = await self.dead_letters.redrive(_scope(body), PUSH_TTL_S, body.ttl_s, body.before, body.limit)
        metrics.DEAD_LETTERS_HANDLED.labels("redriven").inc(done.redriven)
        return web.json_response(asdict(done))

    async def purge_dead_letters(self, request: web.Request, args: Args) -> web.StreamResponse:
        body = args.model(DeadLettersIn)
        done = await self.dead_letters.purge(_scope(body), body.before, body.limit)
        metrics.DEAD_LETTERS_HANDLED.labels("purged").inc(done.purged)
        return web.json_response(asdict(done))

    # --- monitoring: public, and a fixed number of store calls per request
    # whatever the load (concurrent requests share one round) ---

    async def metrics(self, request: web.Request, args: Args) -> web.StreamResponse:
        if self.peers is not None:
            metrics.PEERS_ALIVE.set(len(self.peers.alive()))
            metrics.PEERS_CONFIGURED.set(len(self.peers.ring) - 1)
        try:
            await self._scrape.run(self._gather_metrics)
        except StoreError as e:
            log.warning("metrics: the store's figures are unavailable: %s", e)
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _gather_metrics(self) -> None:
        """Four store calls: the queue's counts (maintained, not counted per
        call), the memory figures, and the progress of the running
        broadcasts among the newest RECENT_BROADCASTS."""
        for tube, stats in (await self.queue.statistics()).items():
            for state in ("ready", "taken", "delayed", "buried"):
                metrics.QUEUE_DEPTH.labels(tube, state).set(stats["tasks"][state])
            metrics.QUEUE_OLDEST.labels(tube).set(stats["tasks"].get("oldest_ready_age", 0))
        memory = await self.status.memory()
        for kind in ("data", "index", "arena_used", "quota_used", "quota_size"):
            metrics.TARANTOOL_MEMORY.labels(kind).set(memory[kind])
        running = [b for b in await self.broadcasts.list(RECENT_BROADCASTS) if b.state in ("running", "fanned_out")]
        progress = await self.broadcasts.progress_many([b.id for b in running]) if running else []
        metrics.BROADCAST_PROGRESS.clear()  # a finished broadcast's series end
        for b, p in zip(running, progress, strict=True):
            for name in (*COUNTERS, "pending"):
                metrics.BROADCAST_PROGRESS.labels(b.id, name).set(p[name])
            metrics.BROADCAST_PROGRESS.labels(b.id, "settled").set(sum(p[name] for name in SETTLED))

    async def healthz(self, request: web.Request, args: Args) -> web.StreamResponse:
        return web.json_response({"ok": True})

    async def readyz(self, request: web.Request, args: Args) -> web.StreamResponse:
        """Ready when the store answers: one cheap call (node.info)."""
        try:
            await self._readiness.run(self.status.info)
        except StoreError as e:
            log.warning("readyz: the store does not answer: %s", e)
            return web.json_response({"ready": False, "why": "the node's store does not answer"}, status=503,
                                     headers={"Retry-After": "5"})
        body: dict[str, Any] = {"ready": True}
        if self.peers is not None:
            body["peers_alive"] = self.peers.alive()
        return web.json_response(body)

    # --- documentation ---

    async def openapi(self, request: web.Request, args: Args) -> web.StreamResponse:
        if self._document is None:
            from dispatcher.api.openapi import document

            self._document = json.dumps(document(ROUTES, self.apps)).encode()
        return web.Response(body=self._document, content_type="application/json")

    async def docs_page(self, request: web.Request, args: Args) -> web.StreamResponse:
        return web.Response(text=docs.PAGE, content_type="text/html")

    async def docs_asset(self, request: web.Request, args: Args) -> web.StreamResponse:
        name = request.path.rsplit("/", 1)[1]
        return web.Response(body=docs.asset(name), content_type=docs.ASSETS[name],
                            headers={"Cache-Control": "public, max-age=86400"})


def _device(s: Subscriber) -> dict[str, Any]:
    return {"token": s.token, "user_id": s.user_id, "platform": s.platform, "app": s.app,
            "topics": list(s.topics), "tz": s.tz, "locale": s.locale}


def _dead_letter(d: DeadLetter) -> dict[str, Any]:
    task = d.task
    return {"id": d.id, "created": d.created, "tube": d.tube, "reason": d.reason, "broadcast": d.broadcast,
            "token": task and task.token, "app": task and task.app, "attempt": task and task.attempt,
            "redrivable": task is not None}


def _scope(body: DeadLettersIn) -> Scope:
    return Scope(tuple(body.ids or ()), body.broadcast, body.reason, bool(body.all))


def curl_example(base_url: str, key: str) -> str:
    """A command that starts a broadcast to the demo app, as the banners print it."""
    spec = '{"message": {"title": "Hello", "body": "from the dispatcher"}, "audience": {"app": "news"}}'
    return (f"curl -s -X POST {base_url}/v1/broadcasts -H 'Authorization: Bearer {key}' "
            f"-H 'Idempotency-Key: demo-1' -H 'Content-Type: application/json' -d '{spec}'")


# --- the table ---

TOKEN = Param("token", "path", "string", "The device token (APNs: hex; FCM: registration token)",
              pattern=ANY_TOKEN, min_length=1, max_length=4096)
BROADCAST = Param("id", "path", "string", "The broadcast's id", pattern=BROADCAST_ID)
IDEMPOTENCY = Param("Idempotency-Key", "header", "string",
                    "Names the broadcast: a repeat (on any node) returns the same broadcast",
                    pattern=IDEMPOTENCY_KEY, min_length=1, max_length=MAX_IDEMPOTENCY_KEY)
LIMIT = Param("limit", "query", "integer", "How many, newest first", required=False, default=50,
              minimum=1, maximum=500)
BEFORE = Param("before", "query", "number", "Only those created before this time (epoch seconds)",
               required=False, minimum=0, maximum=1e11)

DEAD_LETTERS_BY = (
    Param("broadcast", "query", "string", "Only this broadcast's letters", required=False, pattern=BROADCAST_ID),
    Param("reason", "query", "string", "Only letters with this reason", required=False, min_length=1,
          max_length=MAX_REASON),
    Param("before", "query", "integer", "Only letters older than this id: the last page's next_before",
          required=False, minimum=1, maximum=MAX_ID - 1),
    LIMIT,
)

_TEXT = "text/plain"


def _linked(description: str, model: type[BaseModel], **links: Mapping[str, Any]) -> Answer:
    return Answer(description, model, links=links)


_BY_ID = {"id": "$response.body#/id"}

ROUTES: tuple[Route, ...] = (
    Route("PUT", "/v1/devices/{token}", "putDevice", "Register or update a device", Api.put_device,
          {200: _linked("Stored", DeviceOut,
                        DeleteDevice={"operationId": "deleteDevice", "parameters": {"token": "$request.path.token"}})},
          scope="backend", params=(TOKEN,), body=DeviceIn, writes=True),
    Route("DELETE", "/v1/devices/{token}", "deleteDevice", "Remove a device", Api.delete_device,
          {204: Answer("Removed"), 404: Answer("No such device")}, scope="backend", params=(TOKEN,)),
    Route("POST", "/v1/pushes", "postPush", "Push to every device of a user, or to one device", Api.post_push,
          {202: Answer("Queued", PushOut), 404: Answer("No device registered for that user or token")},
          scope="backend", body=PushIn, writes=True),
    Route("POST", "/v1/broadcasts", "postBroadcast",
          "Start a broadcast (or get the one this Idempotency-Key started)", Api.post_broadcast,
          {200: _linked("Stored with its first fan-out task", BroadcastOut,
                        GetBroadcast={"operationId": "getBroadcast", "parameters": _BY_ID},
                        CancelBroadcast={"operationId": "cancelBroadcast", "parameters": _BY_ID})},
          scope="admin", params=(IDEMPOTENCY,), body=BroadcastIn, writes=True),
    Route("GET", "/v1/broadcasts", "listBroadcasts", "Broadcasts, newest first", Api.list_broadcasts,
          {200: Answer("The broadcasts", BroadcastListOut)}, scope="admin", params=(LIMIT, BEFORE)),
    Route("GET", "/v1/broadcasts/{id}", "getBroadcast", "A broadcast's state and progress", Api.get_broadcast,
          {200: _linked("The broadcast", BroadcastOut,
                        CancelBroadcast={"operationId": "cancelBroadcast", "parameters": _BY_ID}),
           404: Answer("No such broadcast")},
          scope="admin", params=(BROADCAST,)),
    Route("POST", "/v1/broadcasts/{id}/cancel", "cancelBroadcast",
          "Cancel a broadcast: its fan-out stops, its queued pushes are dropped", Api.cancel_broadcast,
          {200: Answer("The broadcast, cancelled", BroadcastOut), 404: Answer("No such broadcast")},
          scope="admin", params=(BROADCAST,)),
    Route("GET", "/v1/dead-letters", "listDeadLetters", "This node's dead letters, newest first",
          Api.list_dead_letters, {200: Answer("The letters", DeadLetterListOut)}, scope="admin",
          params=DEAD_LETTERS_BY),
    Route("POST", "/v1/dead-letters/redrive", "redriveDeadLetters",
          "Send this node's dead letters again: each push back into its tube as a fresh task, its letter gone",
          Api.redrive_dead_letters, {200: Answer("What was re-driven", RedriveOut)}, scope="admin", body=RedriveIn,
          writes=True),
    Route("POST", "/v1/dead-letters/purge", "purgeDeadLetters", "Delete this node's dead letters",
          Api.purge_dead_letters, {200: Answer("What was purged", PurgeOut)}, scope="admin", body=DeadLettersIn),
    Route("GET", "/metrics", "metrics", "Prometheus metrics", Api.metrics,
          {200: Answer("Metrics in Prometheus' text format", media_type=_TEXT)}, store_errors=False),
    Route("GET", "/healthz", "healthz", "Liveness", Api.healthz, {200: Answer("Alive", HealthOut)},
          store_errors=False),
    Route("GET", "/readyz", "readyz", "Readiness: the node's store answers", Api.readyz,
          {200: Answer("Ready", ReadyOut), 503: Answer("Not ready", ReadyOut, headers=("Retry-After",))},
          store_errors=False),
    Route("GET", "/v1/openapi.json", "openapi", "This document", Api.openapi,
          {200: Answer("OpenAPI 3.1")}, store_errors=False),
    Route("GET", "/v1/docs", "docs", "The API's documentation page", Api.docs_page,
          {200: Answer("Swagger UI", media_type="text/html")}, store_errors=False),
    *(Route("GET", f"/v1/docs/{name}", "docs_" + name.replace("-", "_").replace(".", "_"),
            "A file of the documentation page", Api.docs_asset,
            {200: Answer(name, media_type=media_type)}, store_errors=False)
      for name, media_type in docs.ASSETS.items()),
)


def error_answer(status: int) -> Answer:
    """The answers every route may give, as problems.py makes them."""
    descriptions = {
        400: "Bad input; `fields` names each field at fault",
        401: "Missing, malformed or unknown API key",
        403: "The key lacks this route's scope",
        404: "Not found",
        408: "The body did not arrive within api.body_timeout_s",
        409: "Conflicts with the stored state",
        413: "The body is over 64 KiB",
        415: "The body is not JSON in UTF-8",
        429: "The node is full (queued pushes or memory); retry after Retry-After seconds",
        500: "Internal error (logged on the node)",
        503: "The node's store cannot serve now; retry after Retry-After seconds",
    }
    headers = {401: ("WWW-Authenticate",), 429: ("Retry-After",), 503: ("Retry-After",)}.get(status, ())
    return Answer(descriptions[status], ErrorOut, headers=headers)


def answers(route: Route) -> dict[int, Answer]:
    """Every status a route can answer: its own, and the errors the
    middleware and problems.py give."""
    statuses = {400, 500}  # 400: any route, for a header that is not UTF-8
    if route.scope is not None:
        statuses |= {401, 403}
    if route.body is not None:
        statuses |= {408, 413, 415}
    if route.writes:
        statuses |= {429}
    if route.store_errors:
        statuses |= {503}
    out = {status: error_answer(status) for status in statuses}
    for status, answer in route.answers.items():
        if status >= 400 and answer.model is None:
            answer = replace(error_answer(status), description=answer.description)
        out[status] = answer
    return dict(sorted(out.items()))
