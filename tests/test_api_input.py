"""Whatever a client sends, the API answers a JSON 4xx naming the field at
fault, never a 500: hostile JSON, wrong content types, headers that are not
UTF-8, device tokens, topics, text fields, query parameters, times."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from dispatcher.core.config import AppSettings, FcmSettings
from dispatcher.service import Dispatcher
from tests.conftest import apns_token, fcm_token
from tests.e2e import ADMIN, BACKEND, MESSAGE, Client, settings_for

DEVICE = {"user_id": "alice", "platform": "ios", "app": "news"}
BROADCAST = {"message": MESSAGE, "audience": {"app": "news"}}


async def raw_request(port: int, head: bytes, body: bytes = b"", timeout_s: float = 10) -> tuple[int, dict[str, str],
                                                                                                   Any]:
    """Sends bytes as they are (aiohttp's client would not send these
    headers) and returns the status, headers and JSON body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
    head_part, _, payload = raw.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(payload) if payload else None


def fields(body: dict[str, Any]) -> set[str]:
    return {f["field"] for f in body["fields"]}


async def test_hostile_json_is_a_400_naming_the_body(api: Client) -> None:
    def post(data: bytes) -> Any:
        return api.call("POST", "/v1/pushes", key=BACKEND, data=data, headers={"Content-Type": "application/json"})

    deep = b"[" * 3000 + b"]" * 3000
    for data in (deep, b'{"user_id": "u", "message": ' + b"[" * 33 + b"]" * 33 + b"}",
                 b'{"ttl_s": ' + b"9" * 5000 + b"}", b'{"ttl_s": ' + b"1" * 21 + b"}", b'{"ttl_s": NaN}',
                 b'{"ttl_s": 1e999}', b'{"user_id": "\\ud800"}', b"\xff\xfe{}", b"{not json"):
        status, body = await post(data)
        assert status == 400 and fields(body) == {"body"}, (data[:40], body)
    # 32 deep is fine as JSON (and then wrong for the model).
    status, body = await post(b"[" * 32 + b"]" * 32)
    assert status == 400 and body["error"] == "invalid request"


async def test_content_type_and_size(api: Client, node: Dispatcher) -> None:
    push = json.dumps({"user_id": "u", "message": MESSAGE}).encode()
    for content_type in ("application/json; charset=bogus", "application/json; charset=latin-1", "text/plain"):
        status, body = await api.call("POST", "/v1/pushes", key=BACKEND, data=push,
                                      headers={"Content-Type": content_type})
        assert status == 415 and fields(body) == {"Content-Type"}, (content_type, body)
    status, body = await api.call("POST", "/v1/pushes", key=BACKEND, data=push)  # no content type
    assert status == 415
    status, body = await api.call("POST", "/v1/pushes", key=BACKEND, data=b" " * 70_000,
                                  headers={"Content-Type": "application/json"})
    assert status == 413 and fields(body) == {"body"}
    # Chunked, so the size is only known as it is read.
    async def chunks() -> Any:
        for _ in range(20):
            yield b" " * 8192

    status, body = await api.call("POST", "/v1/pushes", key=BACKEND, data=chunks(),
                                  headers={"Content-Type": "application/json"})
    assert status == 413 and fields(body) == {"body"}
    status, body = await api.call("POST", "/v1/pushes", key=BACKEND, data=push,
                                  headers={"Content-Type": "application/json; charset=UTF-8"})
    assert status == 404  # accepted, and no device for "u"


async def test_headers_that_are_not_utf8(node: Dispatcher) -> None:
    body = json.dumps(BROADCAST).encode()
    head = (b"POST /v1/broadcasts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ADMIN.encode() +
            b"\r\nContent-Type: application/json\r\n")
    status, _, answer = await raw_request(node.api_port, head + b"Idempotency-Key: \xff\xfe\x80\r\n", body)
    assert status == 400 and fields(answer) == {"Idempotency-Key"}
    status, _, answer = await raw_request(node.api_port, head + "Idempotency-Key: clé\r\n".encode(), body)
    assert status == 400 and fields(answer) == {"Idempotency-Key"}, "printable ASCII only"
    status, _, answer = await raw_request(node.api_port, head + b"Idempotency-Key: ok\r\nX-Note: \xc3\x28\r\n", body)
    assert status == 400 and fields(answer) == {"X-Note"}
    status, _, answer = await raw_request(node.api_port, head + b"Idempotency-Key: fine-1\r\n", body)
    assert status == 200, answer


async def test_device_tokens_are_checked_per_platform(api: Client, node: Dispatcher) -> None:
    def put(token: str, **device: Any) -> Any:
        return api.call("PUT", f"/v1/devices/{token}", key=BACKEND, json={**DEVICE, **device})

    for token in ("a%2F..%2F..%2Fx", "tok%0Aen", "tok%00en", "x" * 8000, "a.b", "%C3%A9t%C3%A9"):
        status, body = await put(token, platform="android")
        assert status == 400 and fields(body) == {"token"}, (token, body)
    for token in ("abc", "g" * 64, "a" * 63, "a" * 201, fcm_token(1)):
        status, body = await put(token, platform="ios")
        assert status == 400 and fields(body) == {"token"}, (token, body)
        assert "hexadecimal" in body["fields"][0]["problem"]
    assert (await put(apns_token(1)))[0] == 200
    assert (await put("AB" * 100))[0] == 200
    assert (await put(fcm_token(2), platform="android"))[0] == 200
    assert (await put("x" * 4096, platform="android"))[0] == 200
    status, body = await put("x" * 4097, platform="android")
    assert status == 400 and fields(body) == {"token"}
    # Nothing refused was stored.
    assert await node.subscribers.get("a/../../x") is None and await node.subscribers.get("x" * 8000) is None
    # A push names its token by the same alphabet.
    status, body = await api.call("POST", "/v1/pushes", key=BACKEND, json={"token": "a/b", "message": MESSAGE})
    assert status == 400 and fields(body) == {"token"}
    status, body = await api.call("POST", "/v1/pushes", key=BACKEND,
                                  json={"token": apns_token(1), "user_id": "alice", "message": MESSAGE})
    assert status == 400 and fields(body) == {"user_id", "token"}


async def test_platform_no_app_sends_to(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    # Fake gateways: the app's own credentials are replaced by the fakes'.
    only_fcm = AppSettings(fcm=FcmSettings(service_account_path=tmp_path / "unused.json"))
    d = Dispatcher(s.model_copy(update={"apps": {"news": only_fcm}}))
    await d.start()
    try:
        async with aiohttp.ClientSession() as http:
            api = Client(d, http)
            status, body = await api.call("PUT", f"/v1/devices/{apns_token(1)}", key=BACKEND, json=DEVICE)
            assert status == 400 and fields(body) == {"platform"}
            status, doc = await api.call("GET", "/v1/openapi.json", key=None)
            assert doc["components"]["schemas"]["DeviceIn"]["properties"]["platform"]["enum"] == ["android"]
            assert doc["components"]["schemas"]["DeviceIn"]["properties"]["app"]["enum"] == ["news"]
            status, _ = await api.call("PUT", f"/v1/devices/{fcm_token(1)}", key=BACKEND,
                                       json={**DEVICE, "platform": "android"})
            assert status == 200
    finally:
        await d.stop()


async def test_topics_and_text_fields(api: Client) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"topics": [f"t{i}" for i in range(101)]}, "topics"),
        ({"topics": ["x" * 65]}, "topics.0"),
        ({"topics": ["ok", ""]}, "topics.1"),
        ({"topics": ["a b"]}, "topics.0"),
        ({"user_id": "ali\nce"}, "user_id"),
        ({"user_id": "x" * 129}, "user_id"),
        ({"app": "ne\x00ws"}, "app"),
        ({"app": "n" * 65}, "app"),
        ({"locale": "en\r\nX-Injected: 1"}, "locale"),
        ({"tz": "Mars/Olympus"}, "tz"),
        ({"user_id": 42}, "user_id"),
        ({"extra": 1}, "extra"),
    ]
    for change, field in cases:
        status, body = await api.call("PUT", f"/v1/devices/{apns_token(3)}", key=BACKEND, json={**DEVICE, **change})
        assert status == 400 and fields(body) == {field}, (change, body)
    status, body = await api.call("POST", "/v1/broadcasts", json={**BROADCAST, "audience": {"app": "news",
                                                                   "topics": ["t"] * 101}},
                                  headers={"Idempotency-Key": "topics"})
    assert status == 400 and fields(body) == {"audience.topics"}
    status, _ = await api.call("PUT", f"/v1/devices/{apns_token(3)}", key=BACKEND,
                               json={**DEVICE, "topics": ["sport", "a.b:c-d_e"], "locale": "en_GB", "tz": "Asia/Tokyo"})
    assert status == 200


async def test_query_parameters(api: Client) -> None:
    for query, field in (("before=nan", "before"), ("before=inf", "before"), ("before=-1", "before"),
                         ("before=1e400", "before"), ("before=x", "before"), ("limit=0", "limit"),
                         ("limit=501", "limit"), ("limit=1.5", "limit"), ("limit=abc", "limit"),
                         ("limit=" + "9" * 5000, "limit"), ("limit=1&limit=2", "limit")):
        status, body = await api.call("GET", f"/v1/broadcasts?{query}")
        assert status == 400 and fields(body) == {field}, (query, body)
    for query in ("limit=500", "limit=1&before=1700000000.5", "before=0"):
        assert (await api.call("GET", f"/v1/broadcasts?{query}"))[0] == 200
    status, body = await api.call("GET", "/v1/broadcasts/not-an-id")
    assert status == 400 and fields(body) == {"id"}
    status, body = await api.call("GET", "/v1/broadcasts/b_" + "0" * 24)
    assert status == 404 and fields(body) == {"id"}


async def test_send_at_window_and_schedule(api: Client) -> None:
    def iso(at: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))

    async def post(key: str, **extra: Any) -> tuple[int, Any]:
        return await api.call("POST", "/v1/broadcasts", json={**BROADCAST, **extra}, headers={"Idempotency-Key": key})

    now = time.time()
    for key, send_at in (("y1", "0001-01-01T00:00:00Z"), ("y9999", "9999-12-31T23:59:59Z"),
                         ("late", iso(now - 2 * 3600)), ("far", iso(now + 31 * 86400)),
                         ("naive", "2026-11-23T08:00:00"), ("date", "2026-11-23"), ("num", 1_900_000_000)):
        status, body = await post(key, send_at=send_at)
        assert status == 400 and fields(body) == {"send_at"}, (key, body)
    status, body = await post("both", send_at=iso(now + 3600), local_time="08:00")
    assert status == 400 and fields(body) == {"send_at", "local_time"}
    status, body = await post("recent", send_at=iso(now - 1800))
    assert status == 200 and body["state"] == "scheduled"
    status, body = await post("soon", send_at=iso(now + 29 * 86400), local_time=None)
    assert status == 200
    for extra, field in (({"local_time": "24:00"}, "local_time"), ({"ttl_s": "60"}, "ttl_s"),
                         ({"ttl_s": True}, "ttl_s"), ({"ttl_s": 0}, "ttl_s"),
                         ({"collapse_key": "k" * 65}, "collapse_key"), ({"collapse_key": "é" * 40}, "collapse_key"),
                         ({"strategy": "flood"}, "strategy")):
        status, body = await post("x", **extra)
        assert status == 400 and fields(body) == {field}, (extra, body)
    assert (await post("ttl-float", ttl_s=60.0))[0] == 200
    for key, problem in (("", "at least 1"), ("k" * 201, "at most 200"), ("a\tb", "printable")):
        status, body = await post(key)
        assert status == 400 and fields(body) == {"Idempotency-Key"}, (key, body)
        assert problem in body["fields"][0]["problem"]


async def test_unknown_routes_and_methods_answer_json(api: Client) -> None:
    status, body = await api.call("GET", "/v1/nothing-here")
    assert status == 404 and body["fields"] == []
    async with api.http.request("PATCH", f"{api.base}/v1/broadcasts") as r:
        assert r.status == 405 and set(r.headers["Allow"].split(",")) == {"GET", "POST"}
        assert (await r.json())["error"] == "Method Not Allowed"
