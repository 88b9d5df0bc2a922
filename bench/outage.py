"""A gateway outage in real time, with the shipped pacing (retries from 1 s
to 300 s, probes from 5 s to 60 s, 20 failures to open the breaker): APNs
and FCM answer 503 to everything for `--outage-s`, then heal.

    .venv/bin/python -m bench.outage [--devices 10000] [--outage-s 600]

One node in this process (dispatcher.service.Dispatcher: its own Tarantool,
the fake gateways). Two broadcasts to the same devices (half iOS, half
Android) start as the outage does: one whose ttl ends halfway through it,
one with an hour. Reported: what each broadcast came to (delivered,
expired, failed, dead letters), the requests and connection attempts the
gateways saw per minute once the breakers were open, and how long after
healing the last push was delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from pydantic import SecretStr

from bench.common import free_port
from dispatcher.core.config import ApiKey, ApiSettings, DispatchSettings, NodeSettings, Settings, TarantoolSettings
from dispatcher.fakes.faults import Faults
from dispatcher.node.contract import DeadLetters
from dispatcher.node.records import Registration
from dispatcher.service import Dispatcher

KEY = "bench-admin-key-0123456789"


def settings(tmp: Path) -> Settings:
    return Settings(
        node=NodeSettings(name="bench", data_dir=tmp / "node", memtx_memory_mb=512, gateways="fake"),
        tarantool=TarantoolSettings(port=free_port(), password=SecretStr("bench-password")),
        api=ApiSettings(port=0, keys=[ApiKey(key=KEY, scopes=["admin"])]),  # type: ignore[arg-type]
        dispatch=DispatchSettings(demo_devices=0),
    )


async def poll(check: Callable[[], Any], every_s: float) -> None:
    """Returns once ``check()`` (a value or an awaitable) is truthy."""
    while True:
        value = check()
        if await value if asyncio.iscoroutine(value) else value:
            return
        await asyncio.sleep(every_s)


def seen(node: Dispatcher) -> tuple[int, int]:
    """Requests and TCP connections both fakes have seen so far."""
    assert node.fakes is not None
    stats = node.fakes.stats()
    return (stats["apns"]["requests"] + stats["fcm"]["requests"],
            stats["apns"]["connections"] + stats["fcm"]["connections"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--outage-s", type=float, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        node = Dispatcher(settings(Path(tmp_name)))
        await node.start()
        try:
            assert node.fakes is not None and node.apps is not None
            regs = [Registration(f"{i:064x}" if i % 2 == 0 else f"fcm-{i:010d}:" + "x" * 140, f"user-{i}",
                                 "ios" if i % 2 == 0 else "android", "news") for i in range(args.devices)]
            for start in range(0, len(regs), 2000):
                await node.subscribers.put_many(regs[start:start + 2000])
            down = Faults(error_share=1.0, error_status=503)
            node.fakes.apns.faults.set(down)
            node.fakes.fcm.faults.set(down)
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as http:
                base = f"http://127.0.0.1:{node.api_port}"

                async def start(key: str, ttl_s: int) -> str:
                    spec = {"message": {"title": "Outage", "body": key}, "audience": {"app": "news"},
                            "ttl_s": ttl_s}
                    async with http.post(f"{base}/v1/broadcasts", json=spec, headers={"Idempotency-Key": key}) as r:
                        return str((await r.json())["id"])

                async def status(broadcast_id: str) -> dict[str, Any] | None:
                    """The broadcast once done, else None."""
                    async with http.get(f"{base}/v1/broadcasts/{broadcast_id}") as r:
                        body: dict[str, Any] = await r.json()
                    return body if body["state"] == "done" else None

                began = time.monotonic()
                short = await start("short", int(args.outage_s / 2))
                long = await start("long", 3600)
                gates = [node.apps.routes["news", p].gate for p in ("ios", "android")]
                await poll(lambda: all(g.paused for g in gates), 0.1)
                opened_s = time.monotonic() - began
                await asyncio.sleep(5)  # what was on the wire is answered
                quiet_from, (requests0, connections0) = time.monotonic(), seen(node)
                await asyncio.sleep(max(0.0, args.outage_s - (time.monotonic() - began)))
                requests1, connections1 = seen(node)
                quiet_min = (time.monotonic() - quiet_from) / 60
                node.fakes.apns.faults.set(Faults())
                node.fakes.fcm.faults.set(Faults())
                healed = time.monotonic()
                results = {}
                for name, broadcast_id in (("short", short), ("long", long)):
                    await poll(lambda b=broadcast_id: status(b), 0.5)
                    done = await status(broadcast_id)
                    assert done is not None
                    results[name] = done["progress"]
                recovered_s = time.monotonic() - healed
            letters = len((await DeadLetters(node.store).list(limit=1000)).letters)
        finally:
            await node.stop()
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs; {args.devices:,} devices, "
          f"outage {args.outage_s:.0f} s, both breakers open after {opened_s:.1f} s\n")
    print("| broadcast | ttl | delivered | expired | failed |")
    print("|---|---|---|---|---|")
    for name, ttl in (("short", f"{args.outage_s / 2:.0f} s"), ("long", "3600 s")):
        p = results[name]
        print(f"| {name} | {ttl} | {p['delivered']:,} | {p['expired']:,} | {p['failed']:,} |")
    print(f"\ndead letters: {letters}; once the breakers were open: "
          f"{(requests1 - requests0) / quiet_min:.1f} requests/min and "
          f"{(connections1 - connections0) / quiet_min:.1f} connections/min over {quiet_min:.1f} min; "
          f"everything settled {recovered_s:.0f} s after the gateways healed")


if __name__ == "__main__":
    uvloop.run(main())
