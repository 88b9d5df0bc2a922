"""Nothing stays taken, and outages are ridden out: the node's Tarantool
stopped (SIGSTOP) or read-only in the middle of a 100,000-device broadcast,
a gateway answering 503 to everything for a while, a gateway refusing
connections. Times are scaled down by settings; the figures each test
prints are what bench/RESULTS.md records."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from dispatcher.core import metrics
from dispatcher.fakes.faults import Faults
from dispatcher.service import Dispatcher
from tests.admin import console
from tests.e2e import Client, register, running, settings_for, start_broadcast, wait_done
from tests.test_send_path import dead_letters, eventually


async def taken(node: Dispatcher) -> int:
    stats = await node.queue.statistics()
    return sum(stats[t]["tasks"]["taken"] for t in ("ios", "android", "fanout"))


@pytest.fixture
async def big_node(tmp_path: Path) -> AsyncIterator[tuple[Dispatcher, Client]]:
    async with running(settings_for(tmp_path)) as d, aiohttp.ClientSession() as http:
        yield d, Client(d, http)


@pytest.mark.parametrize("stall", ["sigstop", "read_only"])
async def test_a_stalled_tarantool_mid_broadcast_strands_nothing(big_node: tuple[Dispatcher, Client],
                                                                stall: str) -> None:
    node, api = big_node
    assert node.fakes is not None and node.tarantool is not None and node.tarantool.pid is not None
    devices = 100_000
    regs = await register(node, devices)
    started = await start_broadcast(api, f"stall-{stall}")
    accepted = lambda: sum(node.fakes.apns.counters.accepted.values()) + sum(  # noqa: E731
        node.fakes.fcm.counters.accepted.values())
    await eventually(lambda: accepted() >= devices // 5, timeout_s=120, what="a fifth delivered")
    stalled_at = accepted()
    began = time.monotonic()
    if stall == "sigstop":
        os.kill(node.tarantool.pid, signal.SIGSTOP)
        await asyncio.sleep(15)
        os.kill(node.tarantool.pid, signal.SIGCONT)
    else:
        console(node.settings.node.data_dir, "box.cfg{read_only = true}")
        await asyncio.sleep(5)
        console(node.settings.node.data_dir, "box.cfg{read_only = false}")
    resumed = time.monotonic()
    done = await wait_done(api, started["id"], timeout_s=300)
    finished = time.monotonic()
    p = done["progress"]
    assert p["delivered"] == devices and p["failed"] == 0 and p["pending"] == 0, p
    got = set(node.fakes.apns.counters.accepted) | set(node.fakes.fcm.counters.accepted)
    assert got == {r.token for r in regs}, "every device got it"
    await eventually(lambda: _taken_is_zero(node), timeout_s=30, what="nothing left taken")
    assert node.restarts == 0, "no worker restarted"
    assert await dead_letters(node) == []
    duplicates = accepted() - devices
    # A settle that failed was retried with its tasks still held: none was
    # taken and sent again.
    assert duplicates == 0, f"{duplicates} pushes sent twice"
    print(f"\n{stall}: {stalled_at} delivered before the stall, stall {resumed - began:.1f} s, "
          f"done {finished - resumed:.1f} s after it; duplicates {duplicates}")


async def _taken_is_zero(node: Dispatcher) -> bool:
    return await taken(node) == 0


async def test_a_long_gateway_outage_delivers_what_is_still_worth_it(tmp_path: Path) -> None:
    """APNs answers 503 to everything for outage_s (the 10-minute outage,
    scaled: probes from 0.2 s up to 1 s apart instead of 5 s up to 60 s):
    pushes whose ttl outlives it are delivered, the others expire unsent;
    no dead letter; while paused, one probe at a time."""
    outage_s = 20.0
    async with running(settings_for(tmp_path)) as node:
        assert node.fakes is not None and node.apps is not None
        apns = node.fakes.apns
        await register(node, 2000)  # 1,000 iOS
        apns.faults.set(Faults(error_share=1.0, error_status=503))
        began = time.monotonic()
        async with aiohttp.ClientSession() as http:
            api = Client(node, http)
            short = await start_broadcast(api, "short-lived", ttl_s=int(outage_s / 2))
            long = await start_broadcast(api, "long-lived", ttl_s=3600)
            gate = node.apps.routes["news", "ios"].gate
            await eventually(lambda: gate.paused, what="the breaker opens")
            opened_s = time.monotonic() - began
            # What was already on the wire is answered; from then on, probes.
            await eventually(lambda: metrics.IN_FLIGHT.labels("ios")._value.get() <= 1, what="in flight answered")
            burst = apns.counters.requests
            await asyncio.sleep(outage_s - (time.monotonic() - began))
            during = apns.counters.requests - burst
            connections = node.fakes.stats()["apns"].get("connections")
            apns.faults.set(Faults())
            healed = time.monotonic()
            short_done = await wait_done(api, short["id"], timeout_s=60)
            long_done = await wait_done(api, long["id"], timeout_s=60)
            recovered_s = time.monotonic() - healed
        assert long_done["progress"]["delivered"] == 2000, long_done["progress"]
        s = short_done["progress"]
        assert s["expired"] == 1000 and s["delivered"] == 1000 and s["failed"] == 0, s  # Android was up
        assert await dead_letters(node) == []
        quiet_s = outage_s - opened_s
        # Probe intervals 0.2, 0.4, 0.8, then 1 s (each +-20%).
        assert during <= quiet_s / 0.8 + 4, f"{during} requests in {quiet_s:.0f} s while paused: probes only"
        print(f"\noutage {outage_s:.0f} s: breaker open after {opened_s:.1f} s and {burst} requests; "
              f"then {during} requests in {quiet_s:.1f} s ({during / quiet_s * 60:.0f}/min), connections "
              f"{connections}; delivered {long_done['progress']['delivered']} + {s['delivered']}, expired "
              f"{s['expired']}, dead letters 0; all delivered {recovered_s:.1f} s after healing")


async def test_a_gateway_refusing_connections_gets_few_attempts(tmp_path: Path) -> None:
    """FCM refuses every connection for refuse_s: the connection attempts are
    counted, bounded by the reconnect backoff, not one per waiting push."""
    refuse_s = 60.0
    async with running(settings_for(tmp_path)) as node:
        assert node.fakes is not None
        fcm = node.fakes.fcm
        await register(node, 1000)  # 500 Android
        fcm.faults.set(Faults(refuse_connections=True))
        before = node.fakes.stats()["fcm"]["connections"]
        async with aiohttp.ClientSession() as http:
            api = Client(node, http)
            started = await start_broadcast(api, "refused")
            await asyncio.sleep(refuse_s)
            attempts = node.fakes.stats()["fcm"]["connections"] - before
            fcm.faults.set(Faults())
            healed = time.monotonic()
            done = await wait_done(api, started["id"], timeout_s=90)
        assert done["progress"]["delivered"] == 1000 and done["progress"]["failed"] == 0, done["progress"]
        assert 1 <= attempts <= 20, f"{attempts} connection attempts in {refuse_s:.0f} s for 500 waiting pushes"
        print(f"\nrefused {refuse_s:.0f} s: {attempts} connection attempts ({attempts / refuse_s * 60:.0f}/min); "
              f"delivered {time.monotonic() - healed:.1f} s after the gateway took connections again")


async def test_a_failed_fanout_step_is_released_and_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Tarantool read-only for 4 s from just before a broadcast's first
    fan-out step is due: steps fail and go back to the queue with backoff
    (the tube is node-local, so the release itself is written), and the
    broadcast finishes long before the fan-out tasks' ttr (120 s) could
    have brought them back."""
    async with running(settings_for(tmp_path, fanout_page=200, high_water=400)) as node:
        assert node.fakes is not None
        regs = await register(node, 10_000)
        node.fakes.apns.faults.set(Faults(slow_share=1.0, slow_s=0.05))
        node.fakes.fcm.faults.set(Faults(slow_share=1.0, slow_s=0.05))
        async with aiohttp.ClientSession() as http:
            api = Client(node, http)
            soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
            started = await start_broadcast(api, "read-only-fanout", send_at=soon)
            console(node.settings.node.data_dir, "box.cfg{read_only = true}")
            await asyncio.sleep(4)
            console(node.settings.node.data_dir, "box.cfg{read_only = false}")
            resumed = time.monotonic()
            done = await wait_done(api, started["id"], timeout_s=60)
        assert done["progress"]["delivered"] == len(regs), done["progress"]
        failed = [r for r in caplog.records if r.getMessage().startswith("fan-out: a step of")]
        assert failed, "a fan-out step failed while read-only"
        await eventually(lambda: _taken_is_zero(node), timeout_s=10, what="nothing left taken")
        print(f"\nread-only fan-out: {len(failed)} steps failed; done {time.monotonic() - resumed:.1f} s after "
              "Tarantool took writes again")
