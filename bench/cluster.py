"""A broadcast across a local three-node cluster (`dispatcher cluster up`),
for each fan-out strategy: time until every send task is enqueued (the
fan-out), optionally time until the last push is delivered, and Tarantool
memory per node with the devices loaded.

    .venv/bin/python -m bench.cluster [--devices 1000000] [--strategy baton|cascade|both] [--wait-delivery]

Devices are registered on node1 and replicate to the others before the
broadcast starts. The fan-out's high-water mark is lifted so that it is
measured on its own, not paced by the (fake) gateways.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import uvloop

from dispatcher.core.config import load_settings
from dispatcher.node.contract import Broadcasts, Status, Subscribers
from dispatcher.node.records import Registration
from dispatcher.node.store import Store


async def broadcast(apis: list[str], key: str, store: Store, strategy: str, devices: int,
                    wait_delivery: bool) -> tuple[str, float, float | None, dict[str, dict[str, int]]]:
    """Starts a broadcast to every device on node1 and follows it on node2."""
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"bench-cluster-{strategy}"}
    spec = {"message": {"title": "Bench", "body": "cluster"}, "audience": {"app": "news"}, "strategy": strategy}
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        async with http.post(f"{apis[0]}/v1/broadcasts", json=spec, headers=headers) as r:
            created = await r.json()
        enqueued_s = delivered_s = None
        while True:
            await asyncio.sleep(0.1)
            async with http.get(f"{apis[1]}/v1/broadcasts/{created['id']}", headers=headers) as r:
                p = (await r.json())["progress"]
            if enqueued_s is None and p["enqueued"] >= devices:
                enqueued_s = time.monotonic() - started
                if not wait_delivery:
                    break
            if p["delivered"] + p["dead_tokens"] + p["failed"] >= devices:
                delivered_s = time.monotonic() - started
                break
    per_node = await Broadcasts(store).progress_by_node(created["id"])
    return strategy, enqueued_s, delivered_s, per_node


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--strategy", choices=("baton", "cascade", "both"), default="both")
    parser.add_argument("--wait-delivery", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "DISPATCHER_DISPATCH__HIGH_WATER": str(10 * args.devices),
               "DISPATCHER_NODE__MEMTX_MEMORY_MB": "2048"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dispatcher", "cluster", "up", "--nodes", "3", "--dir", str(tmp),
            "--tarantool-port", "0", "--http-port", "0", "--demo-devices", "0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env)
        try:
            assert proc.stdout is not None
            first = await asyncio.wait_for(proc.stdout.readline(), 120)
            assert first.startswith(b"cluster is up"), first
            lines = [(await proc.stdout.readline()).decode() for _ in range(4)]
            apis = [re.search(r"API (http://\S+),", line).group(1) for line in lines[:3]]  # type: ignore[union-attr]
            key = lines[3].split()[-1]
            stores = [Store(load_settings(tmp / f"node{i}.toml").tarantool) for i in (1, 2, 3)]
            for store in stores:
                await store.connect()
            started = time.monotonic()
            subscribers = Subscribers(stores[0])
            for start in range(0, args.devices, 5000):
                await subscribers.put_many([
                    Registration(f"{i:064x}" if i % 2 == 0 else f"fcm-{i:010d}:" + "x" * 140, f"user-{i:08d}",
                                 "ios" if i % 2 == 0 else "android", "news", ("breaking",), "Europe/Paris")
                    for i in range(start, min(start + 5000, args.devices))])
            registered_s = time.monotonic() - started
            last = (f"user-{args.devices - 1:08d}", "")
            for store in stores[1:]:  # wait for the replicas, 10 minutes at most
                for _ in range(3000):
                    if (await Subscribers(store).page(last, 1))[0]:
                        break
                    await asyncio.sleep(0.2)
            replicated_s = time.monotonic() - started
            memory = [await Status(s).memory() for s in stores]
            strategies = ("baton", "cascade") if args.strategy == "both" else (args.strategy,)
            results = [await broadcast(apis, key, stores[0], strategy, args.devices, args.wait_delivery)
                       for strategy in strategies]
            for store in stores:
                await store.close()
        finally:
            proc.send_signal(signal.SIGINT)
            await proc.wait()
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"3 nodes on this machine\n")
    print(f"- devices: {args.devices:,}; registered on node1 in {registered_s:.1f} s, on every replica "
          f"after {replicated_s:.1f} s")
    for strategy, enqueued_s, delivered_s, per_node in results:
        print(f"- {strategy}: every send task enqueued after {enqueued_s:.1f} s")
        if delivered_s is not None:
            print(f"- {strategy}: last push delivered after {delivered_s:.1f} s")
        counts = ", ".join(f"{n}: {c.get('enqueued', 0):,}" for n, c in sorted(per_node.items()))
        print(f"- {strategy}: send tasks enqueued per node: {counts}")
    for i, m in enumerate(memory, 1):
        per_million = (m["data"] + m["index"]) / args.devices * 1_000_000 / 2**20
        print(f"- node{i} Tarantool memory with the devices loaded: data {m['data'] / 2**20:.0f} MiB, "
              f"index {m['index'] / 2**20:.0f} MiB, arena used {m['arena_used'] / 2**20:.0f} MiB "
              f"({per_million:.0f} MiB per million devices)")


if __name__ == "__main__":
    uvloop.run(main())
