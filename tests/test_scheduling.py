"""A local_time broadcast over a large audience: delayed send tasks do not
count against the fan-out's high-water mark, so the whole audience is
enqueued at once, each device's task due at that hour in its own zone (the
zones worked out once, when the broadcast was created)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import aiohttp
import pytest

from dispatcher.node.records import Registration
from dispatcher.work.fanout import next_local_time
from tests.admin import console
from tests.conftest import apns_token, fcm_token
from tests.e2e import Client, running, settings_for, start_broadcast

DEVICES = 300_000
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Adelaide", "Pacific/Honolulu")
# Ready tasks above which fan-out waits: far below the audience.
HIGH_WATER = 1000


@pytest.mark.timeout(400)
async def test_a_local_time_broadcast_is_enqueued_at_once_each_device_due_at_its_hour(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, fanout_page=2000, high_water=HIGH_WATER)
    settings = settings.model_copy(update={"node": settings.node.model_copy(update={"memtx_memory_mb": 768})})
    async with running(settings) as node:
        regs = [Registration(apns_token(i) if i % 2 == 0 else fcm_token(i), f"user-{i:07d}",
                             "ios" if i % 2 == 0 else "android", "news", (), ZONES[i % len(ZONES)])
                for i in range(DEVICES)]
        for start in range(0, DEVICES, 5000):
            await node.subscribers.put_many(regs[start:start + 5000])
        # One hour ahead in UTC, to the minute.
        local_time = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%H:%M")
        async with aiohttp.ClientSession() as http:
            api = Client(node, http)
            created = time.time()
            started = await start_broadcast(api, "horoscope-300k", local_time=local_time)
            while True:
                status, body = await api.call("GET", f"/v1/broadcasts/{started['id']}")
                if body["state"] != "running" and body["state"] != "scheduled" or time.time() - created > 300:
                    break
                await asyncio.sleep(0.5)
        took = time.time() - created
        assert body["state"] == "fanned_out", body
        assert body["progress"]["enqueued"] == DEVICES
        stats = await node.queue.statistics()
        assert sum(stats[t]["tasks"]["delayed"] for t in ("ios", "android")) == DEVICES
        assert sum(stats[t]["tasks"]["ready"] + stats[t]["tasks"]["taken"] for t in ("ios", "android")) == 0
        # Tasks by due time (the tube's field 3, ms), to the second, from the
        # tubes themselves.
        [due] = console(node.settings.node.data_dir,
                        "local by = {} for _, tube in ipairs({'ios', 'android'}) do "
                        "for _, x in box.space[tube]:pairs() do local s = math.floor(x[3] / 1000 + 0.5) "
                        "by[s] = (by[s] or 0) + 1 end end "
                        "local out = {} for at, n in pairs(by) do table.insert(out, {at, n}) end return out")
        expected = sorted(next_local_time(local_time, zone, created) for zone in ZONES)
        got = sorted((at, n) for at, n in due)
        assert len(got) == len(ZONES), got
        for (at, n), want in zip(got, expected, strict=True):
            assert n == DEVICES // len(ZONES) and abs(at - want) < 2, (got, expected)
        utc = next_local_time(local_time, "UTC", created)
        assert 3540 <= utc - created <= 3600, "UTC's hour comes today, in an hour"
        print(f"\n{DEVICES} devices in {len(ZONES)} zones enqueued for {local_time} in {took:.1f} s "
              f"with high_water {HIGH_WATER}")
