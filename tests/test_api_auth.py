"""API keys: any malformed Authorization header is a 401 with
WWW-Authenticate: Bearer (never a 500); keys are compared as bytes, in
constant time, against every key."""

from __future__ import annotations

import hmac

import pytest

from dispatcher.api.auth import Keys
from dispatcher.api.problems import ApiError
from dispatcher.service import Dispatcher
from tests.e2e import ADMIN, BACKEND, Client
from tests.test_api_input import raw_request


async def test_malformed_authorization_is_a_401(node: Dispatcher) -> None:
    for header in ("Bearer clé-0123456789abcdef".encode(), b"Bearer \xff\xfe\xfd0123456789abcdef",
                   b"Basic " + ADMIN.encode(), b"", b"Bearer", b"Bearer ", b"Bearer  " + ADMIN.encode(),
                   b"Bearer " + ADMIN.encode() + b" extra", b"Bearer " + ADMIN[:-1].encode(),
                   ("Bearer " + ADMIN + "é").encode()):
        head = b"GET /v1/broadcasts HTTP/1.1\r\nHost: x\r\nAuthorization: " + header + b"\r\n"
        status, headers, body = await raw_request(node.api_port, head)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer", (header, status, body)
        assert body["fields"][0]["field"] == "Authorization"
    status, headers, _ = await raw_request(node.api_port, b"GET /v1/broadcasts HTTP/1.1\r\nHost: x\r\n")
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    head = b"GET /v1/broadcasts HTTP/1.1\r\nHost: x\r\nAuthorization: bearer " + ADMIN.encode() + b"\r\n"
    assert (await raw_request(node.api_port, head))[0] == 200, "the scheme is case-insensitive"


async def test_scopes(api: Client) -> None:
    assert (await api.call("GET", "/v1/broadcasts", key=ADMIN))[0] == 200
    status, body = await api.call("GET", "/v1/broadcasts", key=BACKEND)
    assert status == 403 and body["fields"][0]["field"] == "Authorization"
    assert (await api.call("POST", "/v1/pushes", key=ADMIN, json={}))[0] == 403
    # Only the Authorization header carries a key.
    assert (await api.call("GET", "/v1/broadcasts", key=None, headers={"X-Api-Key": ADMIN}))[0] == 401
    for public in ("/healthz", "/readyz", "/metrics", "/v1/openapi.json", "/v1/docs"):
        assert (await api.call("GET", public, key=None))[0] == 200, public


def test_every_key_is_compared_as_equal_length_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = Keys({"first-key-0123456789": {"admin"}, "second-key-0123456789": {"backend"},
                 "third-key-0123456789é": {"admin", "backend"}})
    compared: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def compare(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", compare)  # auth.py calls it through the module
    assert keys.scopes("Bearer first-key-0123456789") == {"admin"}
    assert keys.scopes("Bearer second-key-0123456789") == {"backend"}
    with pytest.raises(ApiError) as refused:
        keys.scopes("Bearer x")
    assert refused.value.status == 401
    # Three presented keys, each against all three configured keys, always
    # as 32-byte digests whatever the presented key's length.
    assert len(compared) == 9
    assert all(isinstance(a, bytes) and len(a) == len(b) == 32 for a, b in compared)
    with pytest.raises(ApiError):
        keys.scopes("Bearer third-key-0123456789é")  # not ASCII: malformed, whatever the configured keys
