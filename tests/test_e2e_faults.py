"""End to end, the hard cases: pushes past their ttl, local-time delivery
order, and kill -9 of the dispatcher in the middle of a broadcast."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp

from dispatcher.core.config import ApiKey, ApiSettings, AppSettings, DispatchSettings, to_toml
from dispatcher.fakes.faults import Faults
from dispatcher.fakes.gateways import FakeGateways
from dispatcher.node.contract import Subscribers
from dispatcher.node.records import Registration
from dispatcher.node.store import Store
from dispatcher.node.tarantool_process import TarantoolProcess
from dispatcher.service import Dispatcher
from dispatcher.work.fanout import next_local_time
from tests.admin import console
from tests.conftest import apns_token, fcm_token, free_port, node_settings
from tests.test_e2e import ADMIN, Client, start_broadcast, wait_done


async def test_expired_pushes_are_dropped_not_sent(node: Dispatcher) -> None:
    async with aiohttp.ClientSession() as http:
        api = Client(node, http)
        # Scheduled 20 days ahead, so its own fan-out does not run meanwhile.
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=20)
        started = await start_broadcast(api, "stale", send_at=later.strftime("%Y-%m-%dT%H:%M:%SZ"))
        now = time.time()
        tasks = [["b", started["id"], apns_token(i), "ios", now - 1, 0, 0] for i in range(25)]
        await node.queue.tube("ios").put_many(tasks)
        for _ in range(50):
            if (await node.broadcasts.progress(started["id"]))["expired"] == 25:
                break
            await asyncio.sleep(0.1)
    assert (await node.broadcasts.progress(started["id"]))["expired"] == 25
    assert node.fakes is not None and node.fakes.apns.counters.requests == 0


def test_local_time_reaches_zones_in_their_order() -> None:
    # At 12:00 UTC, 08:00 comes next in New York (07:00 there), then in Los
    # Angeles, Auckland, Tokyo, Paris, and last in UTC itself.
    now = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC).timestamp()
    expected_hours = {"America/New_York": 1, "America/Los_Angeles": 4, "Pacific/Auckland": 7,
                      "Asia/Tokyo": 11, "Europe/Paris": 19, "UTC": 20}
    delays = {zone: next_local_time("08:00", zone, now) - now for zone in expected_hours}
    assert {zone: d / 3600 for zone, d in delays.items()} == expected_hours
    assert sorted(delays, key=delays.__getitem__) == list(expected_hours)
    assert next_local_time("08:00", "Not/AZone", now) - now == delays["UTC"], "unknown zones fall back to UTC"


async def test_local_time_broadcast_delays_each_zone(node: Dispatcher) -> None:
    zones = ["Asia/Tokyo", "Europe/Paris", "America/New_York"]
    await node.subscribers.put_many([Registration(apns_token(i), f"u{i}", "ios", "news", (), zones[i % 3])
                                     for i in range(30)])
    async with aiohttp.ClientSession() as http:
        api = Client(node, http)
        started = await start_broadcast(api, "horoscope", local_time="08:00")
        for _ in range(50):
            if (await node.broadcasts.progress(started["id"]))["enqueued"] == 30:
                break
            await asyncio.sleep(0.1)
    stats = await node.queue.tube("ios").statistics()
    assert stats["tasks"]["delayed"] == 30 and stats["tasks"]["ready"] == 0
    # Each device's task waits for 08:00 in its own zone.
    [due] = console(node.settings.node.data_dir,
                    "local t = {} for _, x in box.space.ios:pairs() do t[x[9][3]] = x[3] end return t")
    assert len(due) == 30
    now = time.time()
    by_token = {token: ms / 1000 for token, ms in due.items()}
    for i in range(30):
        expected = next_local_time("08:00", zones[i % 3], now)
        assert abs(by_token[apns_token(i)] - expected) < 5


async def test_kill_9_of_the_dispatcher_mid_broadcast(tmp_path: Path, gateways: FakeGateways) -> None:
    """Tarantool runs on; the dispatcher dies with pushes in flight and comes
    back: every device gets the push at least once, and duplicates stay
    within what was in flight."""
    fakes = gateways
    settings = node_settings(tmp_path / "node")
    tarantool = TarantoolProcess(settings)
    tarantool.start()
    api_port = free_port()
    config = tmp_path / "dispatcher.toml"
    config.write_text(to_toml(settings.model_copy(update={
        "node": settings.node.model_copy(update={"embedded": False}),
        "api": ApiSettings(port=api_port, keys=[ApiKey(key=ADMIN, scopes=["admin"])]),  # type: ignore[arg-type]
        "dispatch": DispatchSettings(demo_devices=0, batch=50),
        "apps": {"news": AppSettings(apns=fakes.credentials.apns_settings(fakes.ports["apns"], in_flight=50),
                                     fcm=fakes.credentials.fcm_settings(fakes.ports["fcm"], in_flight=50))},
    })))
    fakes.apns.faults.set(Faults(slow_share=1.0, slow_s=0.02))
    fakes.fcm.faults.set(Faults(slow_share=1.0, slow_s=0.02))

    async def start_dispatcher() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dispatcher", "--config", str(config), "run",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=dict(os.environ))
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(b"node test is up"), line
        return proc

    try:
        first = await start_dispatcher()
        async with aiohttp.ClientSession() as http:
            api = Client(f"http://127.0.0.1:{api_port}", http)
            regs = [Registration(apns_token(i) if i % 2 == 0 else fcm_token(i), f"u{i}",
                                 "ios" if i % 2 == 0 else "android", "news") for i in range(3000)]
            store = Store(settings.tarantool)
            await store.connect()
            try:
                await Subscribers(store).put_many(regs[:1000])
                await Subscribers(store).put_many(regs[1000:2000])
                await Subscribers(store).put_many(regs[2000:])
            finally:
                await store.close()
            started = await start_broadcast(api, "survive")
            for _ in range(1200):  # until a fifth has gone out, 60 s at most
                if sum(fakes.apns.counters.accepted.values()) + sum(fakes.fcm.counters.accepted.values()) >= 600:
                    break
                await asyncio.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            await first.wait()
            second = await start_dispatcher()
            try:
                done = await wait_done(api, started["id"], timeout_s=120)
            finally:
                second.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(second.wait(), 60) == 0
        accepted = fakes.apns.counters.accepted + fakes.fcm.counters.accepted
        assert {r.token for r in regs} <= set(accepted), "every device got it at least once"
        duplicates = sum(n - 1 for n in accepted.values())
        assert duplicates <= 2 * 50, f"{duplicates} duplicates, more than the in-flight windows"
        assert done["progress"]["pending"] == 0
    finally:
        tarantool.kill()
