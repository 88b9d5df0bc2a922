"""The OpenAPI 3.1 document, made from the route table (routes.ROUTES) and
the pydantic models that validate requests: what it says is valid is what
the API takes. Schemas go under components/schemas, so every $ref resolves
there."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from dispatcher.api.inputs import MAX_BODY_BYTES, MAX_DEPTH, MAX_INT_DIGITS
from dispatcher.api.models import AudienceIn, DeviceIn
from dispatcher.api.routes import Route, answers
from dispatcher.gateways.messages import RESERVED_DATA_KEYS, Message

REF = "#/components/schemas/{model}"
RESPONSE_HEADERS = {
    "Retry-After": {"description": "Seconds to wait before trying again",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "WWW-Authenticate": {"description": "The scheme to authenticate with", "schema": {"type": "string"}},
}
DESCRIPTION = f"""Push notifications to iOS (APNs) and Android (FCM) devices: device registrations,
one-off pushes, broadcasts, dead letters.

Keys: `Authorization: Bearer <key>`; scope *backend* for devices and pushes, *admin* for
broadcasts and dead letters (each node keeps its own: ask the node). `/metrics`, `/healthz`,
`/readyz` and this documentation are public.

Bodies are JSON in UTF-8, at most {MAX_BODY_BYTES // 1024} KiB, nested at most {MAX_DEPTH} deep, integers of
at most {MAX_INT_DIGITS} digits. Every 4xx names the fields at fault. A full node answers 429 with
Retry-After; slow clients are disconnected (headers and bodies have time limits)."""


def _models(routes: Iterable[Route]) -> tuple[list[type[BaseModel]], list[type[BaseModel]]]:
    inputs: list[type[BaseModel]] = []
    outputs: list[type[BaseModel]] = []
    for route in routes:
        if route.body is not None and route.body not in inputs:
            inputs.append(route.body)
        for answer in answers(route).values():
            if answer.model is not None and answer.model not in outputs:
                outputs.append(answer.model)
    return inputs, outputs


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _tag(path: str) -> str:
    """Groups operations on the documentation page: devices, pushes,
    broadcasts, monitoring, documentation."""
    parts = path.strip("/").split("/")
    if parts[0] != "v1":
        return "monitoring"
    return "documentation" if parts[1] in ("docs", "openapi.json") else parts[1]


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.name, "summary": route.summary, "tags": [_tag(route.path)],
                          "security": [{"bearer": []}] if route.scope else []}
    if route.scope:
        op["description"] = f"Needs a key with the *{route.scope}* scope."
        op["x-scope"] = route.scope
    if route.params:
        op["parameters"] = [{"name": p.name, "in": p.where, "required": p.required or p.where == "path",
                             "description": p.description, "schema": p.schema()} for p in route.params]
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(route.body)}}}
    responses: dict[str, Any] = {}
    for status, answer in answers(route).items():
        response: dict[str, Any] = {"description": answer.description}
        if status != 204:
            if answer.model is not None:
                schema: dict[str, Any] = _ref(answer.model)
            elif answer.media_type == "application/json":
                schema = {"type": "object"}
            else:
                schema = {"type": "string"}
            response["content"] = {answer.media_type: {"schema": schema}}
        if answer.headers:
            response["headers"] = {name: {**RESPONSE_HEADERS[name], "required": True} for name in answer.headers}
        if answer.links:
            response["links"] = {name: dict(link) for name, link in answer.links.items()}
        responses[str(status)] = response
    op["responses"] = responses
    return op


def document(routes: Sequence[Route], apps: Mapping[str, frozenset[str]]) -> dict[str, Any]:
    """The document for a node that sends for ``apps`` (name -> platforms)."""
    inputs, outputs = _models(routes)
    _, top = models_json_schema([(m, "validation") for m in inputs] + [(m, "serialization") for m in outputs],
                                ref_template=REF)
    schemas: dict[str, Any] = top.get("$defs", {})
    # Registration and broadcasts refuse an app this node has no credentials
    # for, and a platform no app sends to.
    schemas[DeviceIn.__name__]["properties"]["platform"]["enum"] = sorted(set().union(*apps.values()))
    schemas[DeviceIn.__name__]["properties"]["app"]["enum"] = sorted(apps)
    schemas[AudienceIn.__name__]["properties"]["app"]["enum"] = sorted(apps)
    # messages.py refuses data keys the gateways reserve (in a validator,
    # which pydantic cannot turn into a schema).
    data = schemas[Message.__name__]["properties"]["data"]
    data["propertyNames"] = {"not": {"anyOf": [{"enum": sorted(RESERVED_DATA_KEYS)}, {"pattern": "^google"}]}}
    data["description"] = ("Strings for the app. With the rest of the message, what APNs and FCM get must fit in "
                           "4096 bytes each.")
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "dispatcher", "version": "1", "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API key from api.keys"}},
        },
    }
