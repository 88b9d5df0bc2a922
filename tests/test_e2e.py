"""End to end through the HTTP API: a real node (Tarantool, workers, API)
sending to the fake gateways."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from dispatcher.fakes.faults import Faults
from dispatcher.node.contract import DeadLetters
from dispatcher.service import Dispatcher
from tests.conftest import apns_token, fcm_token
from tests.e2e import ADMIN, BACKEND, MESSAGE, Client, register, settings_for, start_broadcast, wait_done


async def test_broadcast_reaches_every_device_exactly_once(node: Dispatcher, api: Client) -> None:
    regs = await register(node, 20_000)
    started = await start_broadcast(api, "evening-news-1")
    done = await wait_done(api, started["id"])
    assert done["progress"]["delivered"] == 20_000 and done["progress"]["pending"] == 0
    assert node.fakes is not None
    apns, fcm = node.fakes.apns.counters.accepted, node.fakes.fcm.counters.accepted
    assert len(apns) + len(fcm) == 20_000
    assert set(apns) | set(fcm) == {r.token for r in regs}
    assert max(apns.values()) == 1 and max(fcm.values()) == 1, "nobody got it twice"


async def test_same_idempotency_key_starts_one_broadcast(node: Dispatcher, api: Client) -> None:
    await register(node, 100)
    first = await start_broadcast(api, "once")
    second = await start_broadcast(api, "once")
    assert first["id"] == second["id"]
    await wait_done(api, first["id"])
    assert node.fakes is not None
    assert sum(node.fakes.apns.counters.accepted.values()) + sum(node.fakes.fcm.counters.accepted.values()) == 100
    status, listed = await api.call("GET", "/v1/broadcasts")
    assert status == 200 and [b["id"] for b in listed["broadcasts"]] == [first["id"]]


async def test_dead_tokens_end_removed(node: Dispatcher, api: Client) -> None:
    regs = await register(node, 200)
    assert node.fakes is not None
    dead = {r.token for r in regs[:20]}
    node.fakes.apns.faults.set(Faults(dead_tokens=dead))
    node.fakes.fcm.faults.set(Faults(dead_tokens=dead))
    done = await wait_done(api, (await start_broadcast(api, "dead"))["id"])
    assert done["progress"]["dead_tokens"] == 20 and done["progress"]["delivered"] == 180
    for token in dead:
        assert await node.subscribers.get(token) is None
    assert await node.subscribers.get(regs[50].token) is not None


async def test_throttling_and_5xx_are_retried_and_delivered(node: Dispatcher, api: Client) -> None:
    await register(node, 300)
    assert node.fakes is not None
    node.fakes.apns.faults.set(Faults(throttle_first=40, error_first=60))
    # FCM's 429 asks for a minute's pause (tests/test_fcm_sender.py covers it);
    # here its 5xx burst, with Retry-After.
    node.fakes.fcm.faults.set(Faults(error_first=60, retry_after_s=0))
    done = await wait_done(api, (await start_broadcast(api, "bumpy"))["id"])
    assert done["progress"]["delivered"] == 300
    assert done["progress"]["retries"] >= 100


async def test_a_push_that_always_fails_is_buried_after_the_retry_deadline(tmp_path: Path) -> None:
    d = Dispatcher(settings_for(tmp_path, retry_deadline_s=0.5))
    await d.start()
    try:
        await register(d, 2)
        assert d.fakes is not None
        d.fakes.apns.faults.set(Faults(error_share=1.0))
        async with aiohttp.ClientSession() as http:
            client = Client(d, http)
            done = await wait_done(client, (await start_broadcast(client, "doomed"))["id"])
        assert done["progress"]["failed"] == 1 and done["progress"]["delivered"] == 1
        assert d.fakes.apns.counters.requests >= 2
        stats = await d.queue.tube("ios").statistics()
        assert stats["tasks"]["buried"] == 1
        letters = (await DeadLetters(d.store).list(limit=10)).letters
        assert len(letters) == 1 and letters[0].reason.startswith("retry deadline passed: ServiceUnavailable")
    finally:
        await d.stop()


async def test_cancel_stops_the_broadcast(node: Dispatcher, api: Client) -> None:
    await register(node, 100)
    in_20_days = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 20 * 86400))
    started = await start_broadcast(api, "later", send_at=in_20_days)
    status, cancelled = await api.call("POST", f"/v1/broadcasts/{started['id']}/cancel")
    assert status == 200 and cancelled["state"] == "cancelled"
    await asyncio.sleep(0.5)
    assert node.fakes is not None and node.fakes.apns.counters.requests == 0


async def test_cancel_mid_run_drops_what_is_queued(node: Dispatcher, api: Client) -> None:
    await register(node, 30_000)
    assert node.fakes is not None
    # 1,000 iOS and 2,000 Android pushes in flight (the fake apps' windows),
    # a second each: ~3,000 pushes/s, ~10 s for the broadcast; a cancel
    # takes effect within the 2 s the broadcast's state is cached (half a
    # second each left too little margin on a loaded machine).
    node.fakes.apns.faults.set(Faults(slow_share=1.0, slow_s=1.0))
    node.fakes.fcm.faults.set(Faults(slow_share=1.0, slow_s=1.0))
    started = await start_broadcast(api, "oops")
    for _ in range(100):
        if node.fakes.apns.counters.accepted or node.fakes.fcm.counters.accepted:
            break
        await asyncio.sleep(0.05)
    status, body = await api.call("POST", f"/v1/broadcasts/{started['id']}/cancel")
    assert status == 200 and body["state"] == "cancelled"
    for _ in range(300):
        progress = (await api.call("GET", f"/v1/broadcasts/{started['id']}"))[1]["progress"]
        if progress["pending"] == 0 and progress["enqueued"] > 0:
            break
        await asyncio.sleep(0.1)
    assert progress["pending"] == 0 and progress["cancelled"] > 1000
    sent = sum(node.fakes.apns.counters.accepted.values()) + sum(node.fakes.fcm.counters.accepted.values())
    assert sent == progress["delivered"] and sent + progress["cancelled"] == progress["enqueued"]


async def test_send_at_is_not_delivered_early(node: Dispatcher, api: Client) -> None:
    await register(node, 10)
    send_at = time.time() + 2
    started = await start_broadcast(api, "soon", send_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(send_at)))
    assert started["state"] == "scheduled"
    await asyncio.sleep(0.5)
    assert node.fakes is not None and node.fakes.apns.counters.requests == 0
    await wait_done(api, started["id"])
    assert time.time() >= send_at - 1


async def test_one_off_push_to_a_user(node: Dispatcher, api: Client) -> None:
    for platform, token in (("ios", apns_token(1)), ("android", fcm_token(1))):
        status, body = await api.call("PUT", f"/v1/devices/{token}", key=BACKEND,
                                      json={"user_id": "alice", "platform": platform, "app": "news",
                                            "tz": "Europe/Paris"})
        assert status == 200 and body["user_id"] == "alice"
    status, body = await api.call("POST", "/v1/pushes", key=BACKEND, json={"user_id": "alice", "message": MESSAGE})
    assert status == 202 and body == {"enqueued": 2}
    assert node.fakes is not None
    for _ in range(50):
        if node.fakes.apns.counters.accepted[apns_token(1)] and node.fakes.fcm.counters.accepted[fcm_token(1)]:
            break
        await asyncio.sleep(0.1)
    assert node.fakes.apns.counters.accepted[apns_token(1)] == 1
    assert node.fakes.fcm.counters.accepted[fcm_token(1)] == 1
    status, _ = await api.call("DELETE", f"/v1/devices/{apns_token(1)}", key=BACKEND)
    assert status == 204
    status, _ = await api.call("DELETE", f"/v1/devices/{apns_token(1)}", key=BACKEND)
    assert status == 404


async def test_auth_and_validation(api: Client) -> None:
    assert (await api.call("GET", "/v1/broadcasts", key=None))[0] == 401
    assert (await api.call("GET", "/v1/broadcasts", key="wrong-key-0123456789"))[0] == 401
    assert (await api.call("GET", "/v1/broadcasts", key=BACKEND))[0] == 403
    assert (await api.call("POST", "/v1/pushes", key=ADMIN, json={}))[0] == 403
    status, body = await api.call("PUT", "/v1/devices/tok", key=BACKEND,
                                  json={"user_id": "u", "platform": "windows", "app": "news", "tz": "Mars/Olympus"})
    assert status == 400 and {f["field"] for f in body["fields"]} == {"platform", "tz"}
    status, body = await api.call("POST", "/v1/broadcasts", json={"audience": {"app": "news"}},
                                  headers={"Idempotency-Key": "k"})
    assert status == 400 and body["fields"][0]["field"] == "message"
    status, body = await api.call("POST", "/v1/broadcasts", json={"message": MESSAGE, "audience": {"app": "n"}})
    assert status == 400 and body["fields"][0]["field"] == "Idempotency-Key"
    too_big = {**MESSAGE, "body": "x" * 2000, "data": {"k": "y" * 3000}}
    status, body = await api.call("POST", "/v1/broadcasts", json={"message": too_big, "audience": {"app": "n"}},
                                  headers={"Idempotency-Key": "big"})
    assert status == 400 and "APNs takes at most 4096" in body["fields"][0]["problem"]
    status, body = await api.call("POST", "/v1/pushes", key=BACKEND, data=b"{not json",
                                  headers={"Content-Type": "application/json"})
    assert status == 400 and body["fields"][0]["field"] == "body"
    status, body = await api.call("GET", "/v1/openapi.json", key=None)
    assert status == 200 and "/v1/broadcasts" in body["paths"]


async def test_429_over_the_queue_limit(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    s = s.model_copy(update={"api": s.api.model_copy(update={"queue_limit": 50, "retry_after_s": 7})})
    d = Dispatcher(s)
    await d.start()
    try:
        await d.queue.tube("ios").put_many([["b", "nope", apns_token(i), "ios", 0, 0, 0] for i in range(60)],
                                           delay_s=3600)
        async with aiohttp.ClientSession() as http:
            client = Client(d, http)
            spec = {"message": MESSAGE, "audience": {"app": "news"}}
            async with http.post(f"{client.base}/v1/broadcasts", json=spec,
                                 headers={"Authorization": f"Bearer {ADMIN}", "Idempotency-Key": "x"}) as r:
                assert r.status == 429 and r.headers["Retry-After"] == "7"
    finally:
        await d.stop()


async def test_metrics_health_and_readiness(node: Dispatcher, api: Client) -> None:
    await register(node, 10)
    await wait_done(api, (await start_broadcast(api, "m"))["id"])
    status, text = await api.call("GET", "/metrics", key=None)
    assert status == 200
    assert 'dispatcher_pushes_total{platform="ios",verdict="delivered"}' in text
    assert 'dispatcher_queue_tasks{state="ready",tube="ios"}' in text
    assert 'dispatcher_tarantool_memory_bytes{kind="index"}' in text
    assert (await api.call("GET", "/healthz", key=None))[0] == 200
    assert (await api.call("GET", "/readyz", key=None)) == (200, {"ready": True})
