"""What the API answers when the store or the code fails: 503 with
Retry-After when the store cannot serve now, a generic JSON 500 (and a log
line with the traceback) for a bug, never Tarantool's text or a Python
traceback; a store refusal with one of our codes is the client's 4xx."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import aiohttp
import pytest

from dispatcher.api.problems import for_exception
from dispatcher.core.errors import NodeMisconfigured, NodeUnavailable, StoreFailed, StoreRejected
from dispatcher.node.store import Store
from dispatcher.service import Dispatcher
from tests.admin import console
from tests.conftest import apns_token
from tests.e2e import BACKEND, Client, settings_for, start_broadcast

DEVICE = {"user_id": "alice", "platform": "ios", "app": "news"}


def assert_generic(body: object) -> None:
    text = str(body).lower()
    for leak in ("tarantool", "read-only", "read_only", "traceback", "lua", "boom", "attributeerror"):
        assert leak not in text, body


@pytest.mark.xfail("StoreFailed" not in inspect.getsource(Store.call), strict=True,
                   reason="store.py does not yet map Tarantool's own errors (read-only) to StoreFailed")
async def test_read_only_store_is_a_503(node: Dispatcher, api: Client) -> None:
    console(node.settings.node.data_dir, "box.cfg{read_only = true}")
    try:
        async with api.http.put(f"{api.base}/v1/devices/{apns_token(1)}", json=DEVICE,
                                headers={"Authorization": f"Bearer {BACKEND}"}) as r:
            body = await r.json()
            assert r.status == 503 and int(r.headers["Retry-After"]) > 0, body
        assert_generic(body)
        assert (await api.call("GET", "/v1/broadcasts"))[0] == 200, "reads go on"
    finally:
        console(node.settings.node.data_dir, "box.cfg{read_only = false}")
    assert (await api.call("PUT", f"/v1/devices/{apns_token(1)}", key=BACKEND, json=DEVICE))[0] == 200


async def test_a_bug_is_a_generic_500_with_a_log_line(node: Dispatcher, api: Client,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    started = await start_broadcast(api, "corrupt", local_time="08:00")
    # A row the code does not expect (its audience is not a map): the handler
    # fails in Python.
    console(node.settings.node.data_dir,
            f"box.space.broadcast:update('{started['id']}', {{{{'=', 7, {{audience = 'not a map'}}}}}})")
    with caplog.at_level(logging.ERROR, logger="dispatcher.api"):
        status, body = await api.call("GET", f"/v1/broadcasts/{started['id']}")
    assert status == 500 and body == {"error": "internal error; it is logged on the node", "fields": []}
    assert any(r.exc_info and "AttributeError" in repr(r.exc_info[1]) for r in caplog.records), caplog.text
    # A stored function that fails with Lua's own error: its text stays in the log.
    data_dir = node.settings.node.data_dir
    console(data_dir, "saved_get = node.broadcast_get; node.broadcast_get = function() error('boom: secret') end")
    try:
        status, body = await api.call("GET", f"/v1/broadcasts/{started['id']}")
        assert status == 500, body
        assert_generic(body)
    finally:
        console(data_dir, "node.broadcast_get = saved_get")


async def test_store_down_is_a_503(tmp_path: Path) -> None:
    d = Dispatcher(settings_for(tmp_path))
    await d.start()
    try:
        assert d.tarantool is not None
        d.tarantool.kill()
        async with aiohttp.ClientSession() as http:
            api = Client(d, http)
            for status, body in (await api.call("GET", "/v1/broadcasts"),
                                 await api.call("PUT", f"/v1/devices/{apns_token(1)}", key=BACKEND, json=DEVICE)):
                assert status == 503, body
                assert_generic(body)
            status, body = await api.call("GET", "/readyz", key=None)
            assert status == 503 and body["ready"] is False
            assert (await api.call("GET", "/healthz", key=None))[0] == 200
            assert (await api.call("GET", "/metrics", key=None))[0] == 200
    finally:
        await d.stop()


def test_store_errors_map_to_statuses() -> None:
    cases = [(StoreRejected("user_id: too long", 10001), 400, "user_id: too long"),
             (StoreRejected("no broadcast b_x", 10004), 404, "no broadcast b_x"),
             (StoreRejected("changed meanwhile", 10009), 409, "changed meanwhile"),
             (StoreRejected("Tarantool's text, no code of ours"), 500, None),
             (StoreFailed("Failed to allocate 3905 bytes", 2, retryable=True), 503, None),
             (StoreFailed("attempt to index a nil value", 32, retryable=False), 500, None),
             (NodeUnavailable("Tarantool at 127.0.0.1:3301: timed out"), 503, None),
             (NodeMisconfigured("no such procedure"), 500, None),
             (KeyError("spec"), 500, None)]
    for error, status, message in cases:
        response = for_exception(error, "/test")
        assert response.status == status, error
        assert response.text is not None
        if message is not None:
            assert message in response.text
        else:
            assert_generic(response.text)
            assert str(error).strip("'") not in response.text
        if status == 503:
            assert response.headers["Retry-After"]
