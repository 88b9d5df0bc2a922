"""The send path under the faults a deployment meets, over a real node and
the fakes: our own configuration mistakes pause an app's gateway instead of
punishing devices, the removal guard, many apps, a malformed task, start-up
refusals. (Stalls and outages: tests/test_send_stalls.py.)"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dispatcher.core import metrics
from dispatcher.core.config import ApnsSettings, AppSettings, FcmSettings
from dispatcher.core.errors import ConfigError
from dispatcher.fakes.faults import Faults
from dispatcher.node.contract import DeadLetters
from dispatcher.node.records import DeadLetter, Registration
from dispatcher.service import Dispatcher
from tests.admin import console
from tests.conftest import apns_token, fcm_token
from tests.e2e import MESSAGE, Client, register, running, settings_for, start_broadcast, wait_done


async def eventually(check: Callable[[], Any], timeout_s: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not await _value(check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


async def _value(v: Any) -> Any:
    return await v if asyncio.iscoroutine(v) else v


async def device_count(node: Dispatcher) -> int:
    count, after = 0, None
    while True:
        rows, after = await node.subscribers.page(after, 1000)
        count += len(rows)
        if after is None:
            return count


async def dead_letters(node: Dispatcher) -> list[DeadLetter]:
    return (await DeadLetters(node.store).list(limit=100)).letters


async def buried(node: Dispatcher) -> int:
    stats = await node.queue.statistics()
    return sum(stats[t]["tasks"]["buried"] for t in ("ios", "android"))


@pytest.fixture
async def apps_node(tmp_path: Path) -> AsyncIterator[Dispatcher]:
    async with running(settings_for(tmp_path, guard_min_sends=200, guard_confirm_s=3.0)) as d:
        yield d


@pytest.fixture
async def apps_api(apps_node: Dispatcher) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as http:
        yield Client(apps_node, http)


CONFIG_ERRORS = [("apns", reason) for reason in (
    "InvalidProviderToken", "ExpiredProviderToken", "Forbidden", "BadCertificate", "BadCertificateEnvironment",
    "BadTopic", "TopicDisallowed")] + [("fcm", answer) for answer in (
    "UNAUTHENTICATED", "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "INVALID_ARGUMENT_BARE", "THIRD_PARTY_AUTH_ERROR")]


@pytest.mark.parametrize(("gateway", "answer"), CONFIG_ERRORS)
async def test_our_configuration_error_pauses_and_punishes_no_device(
        apps_node: Dispatcher, apps_api: Client, gateway: str, answer: str) -> None:
    node, api = apps_node, apps_api
    assert node.fakes is not None and node.apps is not None
    await register(node, 200)
    platform = "ios" if gateway == "apns" else "android"
    fake = node.fakes.apns if gateway == "apns" else node.fakes.fcm
    fake.faults.set(Faults(reject_all=answer))
    gate = node.apps.routes["news", platform].gate
    started = await start_broadcast(api, f"mistake-{answer}")
    await eventually(lambda: gate.paused, what=f"{platform} gateway paused")
    assert gate.cause == "config" and answer.removesuffix("_BARE") in gate.reason, gate.reason
    assert metrics.GATE_PAUSED.labels("news", platform, "config")._value.get() == 1
    # Paused: once the pushes already on the wire are answered, a probe now
    # and then (0.2 s, doubling to 1 s, in these settings), no flood.
    await eventually(lambda: metrics.IN_FLIGHT.labels(platform)._value.get() <= 1, what="in flight answered")
    before = fake.counters.requests
    await asyncio.sleep(2.0)
    assert fake.counters.requests - before <= 2 * 4, "probes only while paused"
    assert await device_count(node) == 200, "no device removed"
    assert await dead_letters(node) == [] and await buried(node) == 0, "no dead letter"
    fake.faults.set(Faults())
    done = await wait_done(api, started["id"], timeout_s=60)
    assert done["progress"]["delivered"] == 200 and done["progress"]["failed"] == 0, done["progress"]
    assert not gate.paused and await device_count(node) == 200
    assert metrics.GATE_PAUSES.labels("news", platform, "config")._value.get() >= 1


async def test_dead_token_spike_trips_the_guard(apps_node: Dispatcher, apps_api: Client) -> None:
    """Every token "bad" at once (a sandbox/production mix-up): nothing is
    removed, the gateway pauses, and delivery resumes once it is fixed."""
    node, api = apps_node, apps_api
    assert node.fakes is not None and node.apps is not None
    await register(node, 1200)
    node.fakes.apns.faults.set(Faults(reject_all="BadDeviceToken"))
    gate = node.apps.routes["news", "ios"].gate
    trips = metrics.GUARD_TRIPS.labels("news", "ios")._value.get()
    started = await start_broadcast(api, "mix-up")
    await eventually(lambda: gate.cause == "guard", what="guard tripped")
    assert metrics.GUARD_TRIPS.labels("news", "ios")._value.get() == trips + 1
    await asyncio.sleep(guard_confirm := 3.5)  # past the confirmation delay: still nothing removed
    assert guard_confirm > node.settings.dispatch.guard_confirm_s
    assert await device_count(node) == 1200 and await dead_letters(node) == []
    node.fakes.apns.faults.set(Faults())
    done = await wait_done(api, started["id"], timeout_s=90)
    assert done["progress"]["delivered"] == 1200 and done["progress"]["dead_tokens"] == 0, done["progress"]
    assert await device_count(node) == 1200


async def test_dead_tokens_below_the_guard_are_confirmed_then_removed(apps_node: Dispatcher,
                                                                     apps_api: Client) -> None:
    node, api = apps_node, apps_api
    assert node.fakes is not None
    regs = await register(node, 1000)
    # 10% of each platform, spread out: below the guard's 20%.
    dead = {r.token for i, r in enumerate(regs) if i % 20 in (0, 1)}
    node.fakes.apns.faults.set(Faults(dead_tokens=dead))
    node.fakes.fcm.faults.set(Faults(dead_tokens=dead))
    done = await wait_done(api, (await start_broadcast(api, "some-dead"))["id"], timeout_s=60)
    assert done["progress"]["dead_tokens"] == 100 and done["progress"]["delivered"] == 900
    assert await device_count(node) == 900
    rejected = node.fakes.apns.counters.rejected["Unregistered"] + node.fakes.fcm.counters.rejected["UNREGISTERED"]
    assert rejected == 200, "each dead token is asked twice: the verdict and its confirmation"


async def test_each_app_goes_out_under_its_own_topic_and_project(apps_node: Dispatcher, apps_api: Client) -> None:
    node, api = apps_node, apps_api
    assert node.fakes is not None and node.apps is not None
    news = await register(node, 100, app="news")
    horoscope = [Registration(apns_token(1000 + i) if i % 2 == 0 else fcm_token(1000 + i), f"h-{i}",
                              "ios" if i % 2 == 0 else "android", "horoscope", ("leo",)) for i in range(60)]
    await node.subscribers.put_many(horoscope)
    # Horoscope's APNs topic is refused: only that app's iOS gateway pauses.
    node.fakes.apns.faults.set(Faults(reject_topics={"com.example.horoscope": "TopicDisallowed"}))
    status, started = await api.call("POST", "/v1/broadcasts", json={"message": MESSAGE, "audience": {
        "app": "horoscope"}}, headers={"Idempotency-Key": "stars"})
    assert status == 200, started
    news_done = await wait_done(api, (await start_broadcast(api, "headlines"))["id"])
    assert news_done["progress"]["delivered"] == 100
    assert node.apps.routes["horoscope", "ios"].gate.paused and not node.apps.routes["news", "ios"].gate.paused
    node.fakes.apns.faults.set(Faults())
    stars = await wait_done(api, started["id"], timeout_s=60)
    assert stars["progress"]["delivered"] == 60
    by_topic = node.fakes.apns.tokens_by_topic
    assert by_topic["com.example.news"] == {r.token for r in news if r.platform == "ios"}
    assert by_topic["com.example.horoscope"] == {r.token for r in horoscope if r.platform == "ios"}
    stats = node.fakes.stats()["fcm"]["accepted_by_project"]
    assert stats == {"fake-news": 50, "fake-horoscope": 30}, stats


async def test_a_device_of_an_unknown_app_is_refused(apps_api: Client) -> None:
    device = {"user_id": "u1", "platform": "ios", "app": "weather"}
    status, body = await apps_api.call("PUT", f"/v1/devices/{apns_token(1)}", key="backend-key-0123456789abcdef",
                                       json=device)
    assert status == 400 and body["fields"][0]["field"] == "app", body
    status, body = await apps_api.call("POST", "/v1/broadcasts", json={"message": MESSAGE, "audience": {
        "app": "weather"}}, headers={"Idempotency-Key": "rain"})
    assert status == 400 and body["fields"][0]["field"] == "audience.app", body


async def test_a_malformed_task_is_buried_and_the_rest_delivered_once(apps_node: Dispatcher,
                                                                      apps_api: Client) -> None:
    node = apps_node
    assert node.fakes is not None
    regs = await register(node, 400)
    # Put by hand on the console: not a task, a task with an unknown field
    # layout, and a one-off whose message no longer validates.
    one_off = '{"m", {message = {}}, "TOKEN", "ios", os.time() + 600, 0, 0, "news"}'.replace("TOKEN", apns_token(7))
    bad = ['{"garbage"}', one_off, '{"b", 42, "x", "ios"}']
    for lua in bad:
        console(node.settings.node.data_dir, f"queue.tube.ios:put({lua})")
    done = await wait_done(apps_api, (await start_broadcast(apps_api, "with-junk"))["id"])
    assert done["progress"]["delivered"] == 400
    assert max(node.fakes.apns.counters.accepted.values()) == 1 and len(node.fakes.apns.counters.accepted) == 200
    await eventually(lambda: _buried_is(node, 3), what="three tasks buried")
    reasons = sorted(letter.reason for letter in await dead_letters(node))
    assert len(reasons) == 3 and sum(r.startswith("malformed task") for r in reasons) == 2, reasons
    assert any(r.startswith("message no longer valid") for r in reasons), reasons
    assert len({r.token for r in regs}) == 400


async def _buried_is(node: Dispatcher, n: int) -> bool:
    return await buried(node) == n


@pytest.mark.parametrize(("app", "setting", "message"), [
    (lambda tmp: AppSettings(apns=ApnsSettings(key_path=_file(tmp, "k.p8", "not a key"), key_id="ABCDE12345",
                                               team_id="TEAM123456", topic="com.example.news")),
     "apps.news.apns.key_path", "is not an ES256 .p8 key"),
    (lambda tmp: AppSettings(apns=ApnsSettings(key_path=tmp / "missing.p8", key_id="ABCDE12345",
                                               team_id="TEAM123456", topic="com.example.news")),
     "apps.news.apns.key_path", "cannot read"),
    (lambda tmp: AppSettings(fcm=FcmSettings(service_account_path=_file(tmp, "sa.json", json.dumps({"x": 1})))),
     "apps.news.fcm.service_account_path", "cannot use"),
])
async def test_a_credential_that_does_not_load_stops_start_up(tmp_path: Path, app: Any, setting: str,
                                                             message: str) -> None:
    s = settings_for(tmp_path)
    s = s.model_copy(update={"node": s.node.model_copy(update={"gateways": "real"}),
                             "apps": {"news": app(tmp_path)}})
    node = Dispatcher(s)
    with pytest.raises(ConfigError, match=rf"{setting}: .*{message}"):
        await node.start()
    await node.stop()


def _file(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path
