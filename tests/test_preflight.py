"""Fakes only when asked, keys always, and what stops a node from starting."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from dispatcher.core.config import ApiKey, ApiSettings, AppSettings, NodeSettings, load_settings
from dispatcher.core.errors import ConfigError
from dispatcher.fakes.gateways import FakeGateways
from dispatcher.preflight import refusals
from dispatcher.service import Dispatcher
from tests.conftest import apns_token, fcm_token, node_settings
from tests.e2e import BACKEND, Client, settings_for


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DISPATCHER_CONFIG", "DISPATCHER_NODE__GATEWAYS", "DISPATCHER_NODE__DEMO", "DISPATCHER_API__HOST"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_refused_and_say_what_is_missing() -> None:
    problems = refusals(load_settings())
    assert [p.split(":")[0] for p in problems] == ["apps", "api.keys"], problems


def test_demo_mode_runs_on_the_defaults() -> None:
    assert refusals(load_settings(None, {"node": {"demo": True, "gateways": "fake"}})) == []


def test_demo_needs_the_fakes() -> None:
    problems = refusals(load_settings(None, {"node": {"demo": True}}))
    assert problems[0].startswith('node.demo: demo mode sends to the fake gateways only; set node.gateways = "fake"')


def test_an_app_needs_credentials_for_its_platforms_only(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[apps.news.fcm]\nservice_account_path = "sa.json"\n'
                    '[api]\nkeys = [{key = "backend-key-0123456789", scopes = ["backend"]}]\n')
    assert refusals(load_settings(path)) == []


def test_refusals_stop_the_dispatcher_before_anything_starts(tmp_path: Path) -> None:
    s = node_settings(tmp_path / "node")
    with pytest.raises(ConfigError, match=r"cannot start this node: apps: no app is configured.*api.keys"):
        Dispatcher(s)
    assert not (tmp_path / "node").exists()


async def test_no_demo_devices_outside_demo_mode(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    s = s.model_copy(update={"dispatch": s.dispatch.model_copy(update={"demo_devices": 100})})
    node = Dispatcher(s)
    await node.start()
    try:
        assert await node.seed_demo_devices() == 0
        rows, cursor = await node.subscribers.page(None, 10)
        assert rows == [] and cursor is None
    finally:
        await node.stop()


async def test_demo_mode_seeds_devices_and_makes_a_key(tmp_path: Path) -> None:
    s = node_settings(tmp_path / "node")
    s = s.model_copy(update={
        "node": NodeSettings(**{**s.node.model_dump(), "demo": True, "gateways": "fake"}),
        "api": ApiSettings(port=0),
        "dispatch": s.dispatch.model_copy(update={"demo_devices": 30}),
    })
    node = Dispatcher(s)
    await node.start()
    try:
        assert await node.seed_demo_devices() == 30
        [(key, scopes)] = node.api_keys.items()
        assert key.startswith("demo-") and scopes == {"admin", "backend"}
    finally:
        await node.stop()


async def test_android_only_app_sends_to_fcm_and_refuses_ios_devices(tmp_path: Path,
                                                                      gateways: FakeGateways) -> None:
    """A real-gateways node whose only app has FCM credentials: no fake
    started by the node, iOS registrations and unknown apps refused naming
    the field."""
    s = node_settings(tmp_path / "node")
    s = s.model_copy(update={
        "api": ApiSettings(port=0, keys=[ApiKey(key=BACKEND, scopes=["backend"])]),  # type: ignore[arg-type]
        "apps": {"news": AppSettings(fcm=gateways.credentials.fcm_settings(gateways.ports["fcm"]))},
    })
    node = Dispatcher(s)
    await node.start()
    try:
        assert node.fakes is None
        async with aiohttp.ClientSession() as http:
            api = Client(node, http)
            device = {"user_id": "u1", "platform": "ios", "app": "news"}
            status, body = await api.call("PUT", f"/v1/devices/{apns_token(1)}", key=BACKEND, json=device)
            assert status == 400 and body["fields"][0]["field"] == "platform", body
            assert "app 'news' has no ios credentials" in body["fields"][0]["problem"], body
            device["platform"] = "android"
            status, body = await api.call("PUT", f"/v1/devices/{fcm_token(1)}", key=BACKEND,
                                          json={**device, "app": "weather"})
            assert status == 400 and body["fields"][0]["field"] == "app", body
            status, body = await api.call("PUT", f"/v1/devices/{fcm_token(1)}", key=BACKEND, json=device)
            assert status == 200, body
    finally:
        await node.stop()
