"""The OpenAPI document is made from the route table and the models: every
$ref resolves, every status the API answers is documented, with its real
content type; the documentation page is served by the node, offline."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from dispatcher.api import curl_example
from dispatcher.api.routes import ROUTES
from tests.e2e import ADMIN, Client


def refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [value["$ref"]] if "$ref" in value else [r for v in value.values() for r in refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in refs(v)]
    return []


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


async def test_document_is_whole(api: Client) -> None:
    status, doc = await api.call("GET", "/v1/openapi.json", key=None)
    assert status == 200 and doc["openapi"] == "3.1.0"
    found = refs(doc)
    assert len(found) > 30
    for ref in found:
        assert resolve(doc, ref), ref
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer",
                                                              "description": "An API key from api.keys"}
    ops = {(m.upper(), p): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert set(ops) == {(r.method, r.path) for r in ROUTES}
    put = ops["PUT", "/v1/devices/{token}"]
    assert {"200", "400", "401", "403", "408", "413", "415", "429", "500", "503"} <= set(put["responses"])
    assert put["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
    assert put["responses"]["429"]["headers"]["Retry-After"]["required"] is True
    assert put["responses"]["200"]["links"]["DeleteDevice"]["operationId"] == "deleteDevice"
    links = ops["POST", "/v1/broadcasts"]["responses"]["200"]["links"]
    assert {link["operationId"] for link in links.values()} == {"getBroadcast", "cancelBroadcast"}
    assert "404" in ops["GET", "/v1/broadcasts/{id}"]["responses"]
    assert "404" in ops["DELETE", "/v1/devices/{token}"]["responses"]
    assert "204" in ops["DELETE", "/v1/devices/{token}"]["responses"]
    assert ops["POST", "/v1/broadcasts"]["parameters"][0]["name"] == "Idempotency-Key"
    assert list(ops["GET", "/metrics"]["responses"]["200"]["content"]) == ["text/plain"]
    assert list(ops["GET", "/v1/docs"]["responses"]["200"]["content"]) == ["text/html"]
    assert ops["GET", "/healthz"]["security"] == [] and put["security"] == [{"bearer": []}]
    limit = next(p for p in ops["GET", "/v1/broadcasts"]["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}


async def test_docs_page_is_served_offline(api: Client) -> None:
    status, page = await api.call("GET", "/v1/docs", key=None)
    assert status == 200 and "SwaggerUIBundle" in page and "/v1/openapi.json" in page
    assert "://" not in page, "no CDN: every file comes from the node"
    assets = {"/v1/docs/swagger-ui-bundle.js": "text/javascript", "/v1/docs/swagger-ui.css": "text/css"}
    assert set(re.findall(r'(?:src|href)="([^"]+)"', page)) == set(assets)
    for path, media_type in assets.items():
        async with api.http.get(api.base + path) as r:
            assert r.status == 200 and r.content_type == media_type
            content = await r.read()
            assert len(content) > 100_000
            if path.endswith(".js"):
                assert b'"5.' in content, "Swagger UI 5 (reads OpenAPI 3.1)"
    assert (await api.call("GET", "/v1/docs/other.js", key=None))[0] == 404


async def test_banner_curl_example_works(api: Client) -> None:
    words = shlex.split(curl_example(api.base, ADMIN))
    headers = dict(words[i + 1].split(": ", 1) for i, w in enumerate(words) if w == "-H")
    body = json.loads(words[words.index("-d") + 1])
    async with api.http.post(words[words.index("-X") + 2], headers=headers, data=json.dumps(body)) as r:
        assert r.status == 200, await r.text()
