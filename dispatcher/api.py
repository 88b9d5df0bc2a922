"""The HTTP API (aiohttp), JSON under /v1, with an OpenAPI document.

Keys and scopes: "backend" registers devices and sends one-off pushes,
"admin" runs broadcasts. Every bad input is a 400 naming the field at fault;
a node whose queues are over their limit answers 429 with Retry-After.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dispatcher import metrics
from dispatcher.broadcasts import Broadcast, Broadcasts, broadcast_id, shown_state
from dispatcher.config import ApiSettings
from dispatcher.errors import StoreError, StoreRejected
from dispatcher.messages import Message
from dispatcher.peers import Peers
from dispatcher.queue import Queue
from dispatcher.subscribers import Registration, Subscriber, Subscribers
from dispatcher.tasks import SendBacklog, SendTask

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_TTL_S = 28 * 86400


def _check_tz(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r} (an IANA name such as 'Europe/Paris')") from None
    return tz


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(..., min_length=1, max_length=128)
    platform: Literal["ios", "android"]
    app: str = Field(..., min_length=1, max_length=64)
    topics: list[str] = Field(default_factory=list, max_length=100)
    tz: str = "UTC"
    locale: str = Field("", max_length=16)

    _tz = field_validator("tz")(_check_tz)


class PushIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(None, min_length=1, max_length=128)
    token: str | None = Field(None, min_length=1, max_length=4096)
    message: Message
    ttl_s: int = Field(3600, ge=1, le=MAX_TTL_S)
    collapse_key: str | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _one_target(self) -> PushIn:
        if (self.user_id is None) == (self.token is None):
            raise ValueError("give exactly one of user_id and token")
        return self


class AudienceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app: str = Field(..., min_length=1, max_length=64)
    platform: Literal["ios", "android"] | None = None
    topics: list[str] = Field(default_factory=list, max_length=100)


class BroadcastIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: Message
    audience: AudienceIn
    # When the fan-out starts (default: now); an aware timestamp.
    send_at: dt.datetime | None = None
    # "HH:MM": each device gets the push at that hour in its own time zone.
    local_time: str | None = Field(None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    ttl_s: int = Field(86400, ge=1, le=MAX_TTL_S)
    collapse_key: str | None = Field(None, max_length=64)
    strategy: Literal["baton", "cascade"] = "baton"

    @field_validator("send_at")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-11-23T08:00:00Z")
        return value


class ApiError(Exception):
    def __init__(self, status: int, error: str, fields: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status, self.error, self.fields, self.headers = status, error, fields or [], headers or {}


def _fields(error: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in e["loc"]) or "body", "problem": e["msg"]} for e in error.errors()]


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    try:
        raw = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON", [{"field": "body", "problem": "not JSON"}]) from None
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ApiError(400, "invalid request", _fields(e)) from None


def _device(s: Subscriber) -> dict[str, Any]:
    return {"token": s.token, "user_id": s.user_id, "platform": s.platform, "app": s.app,
            "topics": list(s.topics), "tz": s.tz, "locale": s.locale}


class Api:
    ROUTE_SCOPES = {"devices": "backend", "pushes": "backend", "broadcasts": "admin"}

    def __init__(self, settings: ApiSettings, keys: dict[str, set[str]], queue: Queue,
                 subscribers: Subscribers, broadcasts: Broadcasts, peers: Peers | None = None) -> None:
        self.settings = settings
        self.peers = peers
        self.keys = keys
        self.queue = queue
        self.subscribers = subscribers
        self.broadcasts = broadcasts
        self._backlog = SendBacklog(queue, max_age_s=1.0)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024)
        app.router.add_put("/v1/devices/{token}", self.put_device)
        app.router.add_delete("/v1/devices/{token}", self.delete_device)
        app.router.add_post("/v1/pushes", self.post_push)
        app.router.add_post("/v1/broadcasts", self.post_broadcast)
        app.router.add_get("/v1/broadcasts", self.list_broadcasts)
        app.router.add_get("/v1/broadcasts/{id}", self.get_broadcast)
        app.router.add_post("/v1/broadcasts/{id}/cancel", self.cancel_broadcast)
        app.router.add_get("/v1/openapi.json", self.openapi)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        try:
            self._authorize(request)
            response = await handler(request)
        except ApiError as e:
            response = web.json_response({"error": e.error, "fields": e.fields}, status=e.status, headers=e.headers)
        except web.HTTPException as e:
            response = web.json_response({"error": e.reason}, status=e.status)
        except StoreRejected as e:
            response = web.json_response({"error": str(e)}, status=400)
        except StoreError as e:
            log.warning("api: store unavailable: %s", e)
            response = web.json_response({"error": "the node's store is unavailable, try again"}, status=503,
                                         headers={"Retry-After": "5"})
        metrics.API_REQUESTS.labels(route, str(response.status)).inc()
        return response

    def _authorize(self, request: web.Request) -> None:
        parts = request.path.split("/")
        scope = self.ROUTE_SCOPES.get(parts[2]) if len(parts) > 2 and parts[1] == "v1" else None
        if scope is None:
            return
        header = request.headers.get("Authorization", "")
        key = header[7:] if header.lower().startswith("bearer ") else request.headers.get("X-Api-Key", "")
        scopes = next((s for k, s in self.keys.items() if key and hmac.compare_digest(k, key)), None)
        if scopes is None:
            raise ApiError(401, "missing or unknown API key (Authorization: Bearer <key>)",
                           headers={"WWW-Authenticate": "Bearer"})
        if scope not in scopes:
            raise ApiError(403, f"this key lacks the {scope!r} scope")

    async def _refuse_if_full(self) -> None:
        depth = await self._backlog.count()
        if depth > self.settings.queue_limit:
            raise ApiError(429, f"the node holds {depth} queued pushes, over its limit; retry later",
                           headers={"Retry-After": str(self.settings.retry_after_s)})

    async def put_device(self, request: web.Request) -> web.Response:
        device: DeviceIn = await _body(request, DeviceIn)
        token = request.match_info["token"]
        stored = await self.subscribers.put(Registration(token, device.user_id, device.platform, device.app,
                                                         tuple(device.topics), device.tz, device.locale))
        return web.json_response(_device(stored))

    async def delete_device(self, request: web.Request) -> web.Response:
        if not await self.subscribers.remove(request.match_info["token"]):
            raise ApiError(404, "no such device")
        return web.Response(status=204)

    async def post_push(self, request: web.Request) -> web.Response:
        push: PushIn = await _body(request, PushIn)
        await self._refuse_if_full()
        if push.token is not None:
            device = await self.subscribers.get(push.token)
            devices = [device] if device else []
        else:
            assert push.user_id is not None
            devices = await self.subscribers.of_user(push.user_id)
        if not devices:
            raise ApiError(404, "no registered device for this user or token")
        ref = {"message": push.message.model_dump(), "collapse_key": push.collapse_key}
        expires_at = time.time() + push.ttl_s
        for platform in ("ios", "android"):
            items = [SendTask("m", ref, d.token, d.platform, expires_at).wire() for d in devices
                     if d.platform == platform]
            if items:
                await self.queue.tube(platform).put_many(items)
        return web.json_response({"enqueued": len(devices)}, status=202)

    async def post_broadcast(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        if not 1 <= len(key) <= 200:
            raise ApiError(400, "invalid request", [{"field": "Idempotency-Key",
                                                     "problem": "required header, 1 to 200 characters"}])
        spec: BroadcastIn = await _body(request, BroadcastIn)
        await self._refuse_if_full()
        start_in_s = max(0.0, spec.send_at.timestamp() - time.time()) if spec.send_at else 0.0
        stored = json.loads(spec.model_dump_json())
        home = self.peers.home(broadcast_id(key)) if self.peers is not None else None
        broadcast, created = await self.broadcasts.create(key, "scheduled", stored, start_in_s, home)
        if created:
            metrics.BROADCASTS.labels("created").inc()
        return web.json_response(await self._status(broadcast), status=200)

    async def _status(self, b: Broadcast, progress: dict[str, int] | None = None) -> dict[str, Any]:
        if progress is None:
            progress = await self.broadcasts.progress(b.id)
        state = shown_state(b, progress)
        progress.pop("fanout_done", None)
        progress.pop("fanout_total", None)
        return {"id": b.id, "idempotency_key": b.idempotency_key, "state": state, "created": b.created,
                "audience": b.spec.get("audience"), "send_at": b.spec.get("send_at"),
                "local_time": b.spec.get("local_time"), "strategy": b.spec.get("strategy"), "progress": progress}

    async def get_broadcast(self, request: web.Request) -> web.Response:
        broadcast = await self.broadcasts.get(request.match_info["id"])
        if broadcast is None:
            raise ApiError(404, "no such broadcast")
        return web.json_response(await self._status(broadcast))

    async def list_broadcasts(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "50"))
            before = float(request.query["before"]) if "before" in request.query else None
        except ValueError:
            raise ApiError(400, "invalid request", [{"field": "limit/before", "problem": "not a number"}]) from None
        if not 1 <= limit <= 500:
            raise ApiError(400, "invalid request", [{"field": "limit", "problem": "between 1 and 500"}])
        listed = await self.broadcasts.list(limit, before)
        progress = await self.broadcasts.progress_many([b.id for b in listed])
        items = [await self._status(b, p) for b, p in zip(listed, progress, strict=True)]
        return web.json_response({"broadcasts": items})

    async def cancel_broadcast(self, request: web.Request) -> web.Response:
        broadcast = await self.broadcasts.get(request.match_info["id"])
        if broadcast is None:
            raise ApiError(404, "no such broadcast")
        broadcast = await self.broadcasts.set_state(broadcast.id, "cancelled")
        metrics.BROADCASTS.labels("cancelled").inc()
        return web.json_response(await self._status(broadcast))

    async def metrics(self, request: web.Request) -> web.Response:
        if self.peers is not None:
            metrics.PEERS_ALIVE.set(len(self.peers.alive()))
        try:
            for tube, stats in (await self.queue.statistics()).items():
                for state in ("ready", "taken", "delayed", "buried"):
                    metrics.QUEUE_DEPTH.labels(tube, state).set(stats["tasks"][state])
                metrics.QUEUE_OLDEST.labels(tube).set(stats["tasks"].get("oldest_ready_age", 0))
            memory = (await self.queue.store.call("node.memory"))[0]
            for kind in ("data", "index", "arena_used", "quota_used"):
                metrics.TARANTOOL_MEMORY.labels(kind).set(memory[kind])
        except StoreError as e:
            log.warning("metrics: queue statistics unavailable: %s", e)
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(self, request: web.Request) -> web.Response:
        try:
            await self.queue.statistics()
        except StoreError as e:
            return web.json_response({"ready": False, "why": str(e)}, status=503)
        body: dict[str, Any] = {"ready": True}
        if self.peers is not None:
            body["peers_alive"] = self.peers.alive()
        return web.json_response(body)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())


def curl_example(base_url: str, key: str) -> str:
    """A command that starts a broadcast to the demo app, as the banners print it."""
    spec = '{"message": {"title": "Hello", "body": "from the dispatcher"}, "audience": {"app": "news"}}'
    return (f"curl -s -X POST {base_url}/v1/broadcasts -H 'Authorization: Bearer {key}' "
            f"-H 'Idempotency-Key: demo-1' -H 'Content-Type: application/json' -d '{spec}'")


def openapi_document() -> dict[str, Any]:
    def body(model: type[BaseModel]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}

    error = {"description": "bad input; `fields` names each field at fault"}
    auth: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "dispatcher", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/v1/devices/{token}": {
                "put": {"summary": "Register or update a device (scope backend)", "security": auth,
                        "requestBody": body(DeviceIn), "responses": {"200": {"description": "stored"}, "400": error}},
                "delete": {"summary": "Remove a device (scope backend)", "security": auth,
                           "responses": {"204": {"description": "removed"}, "404": {"description": "unknown"}}},
            },
            "/v1/pushes": {"post": {"summary": "Push to a user's devices or to one token (scope backend)",
                                    "security": auth, "requestBody": body(PushIn),
                                    "responses": {"202": {"description": "enqueued"}, "400": error,
                                                  "429": {"description": "over the queue limit; see Retry-After"}}}},
            "/v1/broadcasts": {
                "post": {"summary": "Start a broadcast (scope admin); repeat with the same Idempotency-Key "
                                    "to get the same one", "security": auth, "requestBody": body(BroadcastIn),
                         "parameters": [{"name": "Idempotency-Key", "in": "header", "required": True,
                                         "schema": {"type": "string", "maxLength": 200}}],
                         "responses": {"200": {"description": "started (or scheduled)"}, "400": error,
                                       "429": {"description": "over the queue limit; see Retry-After"}}},
                "get": {"summary": "Newest broadcasts (scope admin)", "security": auth,
                        "responses": {"200": {"description": "list"}}},
            },
            "/v1/broadcasts/{id}": {"get": {"summary": "Status and progress (scope admin)", "security": auth,
                                            "responses": {"200": {"description": "status"}}}},
            "/v1/broadcasts/{id}/cancel": {"post": {"summary": "Cancel (scope admin)", "security": auth,
                                                    "responses": {"200": {"description": "cancelled"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness (store reachable)",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not"}}}},
        },
    }
