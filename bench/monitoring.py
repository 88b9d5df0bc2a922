"""The monitoring endpoints under a deep queue: Tarantool CPU per request and
latency of `/metrics` and `/readyz` on a node holding a million queued tasks.

    .venv/bin/python -m bench.monitoring [--tasks 1000000] [--rate 200] [--seconds 20]

One node in this process (dispatcher.service.Dispatcher: its own Tarantool,
the fake gateways, no demo devices). The tasks go into the send tubes
(half ios, half android) delayed by an hour, so the senders find nothing to
take and the queue stays as deep for the whole run. Then each target gets
`--rate` requests a second for `--seconds`, open loop: a request starts on
its schedule whether or not the ones before it have answered, as scrapers
and probes do. Targets: the two endpoints over HTTP, and `queue.statistics`
called straight over the node's store (what `/metrics` asks Tarantool for,
without the HTTP layer).

Tarantool's CPU comes from /proc; its idle rate, measured over the same
length of time with no requests just before, is taken off. When requests
come faster than Tarantool can serve them, it is read once Tarantool has
worked through what it was sent (its CPU back to idle); requests that
time out on the way (30 s) count as failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import uvloop
from pydantic import SecretStr

from bench.common import cpu_seconds, free_port
from dispatcher.core.config import ApiKey, ApiSettings, DispatchSettings, NodeSettings, Settings, TarantoolSettings
from dispatcher.core.errors import StoreError
from dispatcher.service import Dispatcher

KEY = "bench-admin-key-0123456789"
BATCH = 10_000
DELAY_S = 3600


@dataclass
class Result:
    target: str
    requests: int
    failed: int
    tarantool_cpu_us_per_request: float
    p50_ms: float
    p99_ms: float


def settings(tmp: Path) -> Settings:
    return Settings(
        node=NodeSettings(name="bench", data_dir=tmp / "node", memtx_memory_mb=2048, gateways="fake"),
        tarantool=TarantoolSettings(port=free_port(), password=SecretStr("bench-password"),
                                    request_timeout_s=30),
        api=ApiSettings(port=0, keys=[ApiKey(key=KEY, scopes=["admin"])]),
        dispatch=DispatchSettings(demo_devices=0),
    )


async def fill(node: Dispatcher, tasks: int) -> None:
    """`tasks` send tasks, delayed, half per send tube."""
    expires = time.time() + 2 * DELAY_S
    for start in range(0, tasks, BATCH):
        platform_ = "ios" if (start // BATCH) % 2 == 0 else "android"
        items = [["b", "b_bench", f"{i:064x}", platform_, expires, 0, 0]
                 for i in range(start, min(start + BATCH, tasks))]
        await node.queue.tube(platform_).put_many(items, delay_s=DELAY_S)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def paced(request: Callable[[], Awaitable[bool]], rate: float, seconds: float) -> tuple[list[float], int]:
    """Starts `request` `rate` times a second for `seconds`; returns the
    latencies of the ones that succeeded and how many failed."""
    latencies: list[float] = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        started = time.perf_counter()
        ok = await request()
        if ok:
            latencies.append(time.perf_counter() - started)
        else:
            failed += 1

    start = time.monotonic()
    running = []
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        running.append(asyncio.create_task(one()))
    await asyncio.gather(*running)
    return latencies, failed


async def settle(tnt_pid: int, idle_per_s: float, limit_s: float = 600) -> None:
    """Returns once Tarantool's CPU is back to its idle rate (it has served
    every request it was sent), or after `limit_s`."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        cpu0 = cpu_seconds(tnt_pid)
        await asyncio.sleep(1)
        if cpu_seconds(tnt_pid) - cpu0 <= idle_per_s + 0.05:
            return


async def measure(target: str, request: Callable[[], Awaitable[bool]], tnt_pid: int,
                  rate: float, seconds: float) -> Result:
    idle0 = cpu_seconds(tnt_pid)
    await asyncio.sleep(seconds)
    idle_per_s = (cpu_seconds(tnt_pid) - idle0) / seconds
    cpu0, started = cpu_seconds(tnt_pid), time.monotonic()
    latencies, failed = await paced(request, rate, seconds)
    await settle(tnt_pid, idle_per_s)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(tnt_pid) - cpu0 - idle_per_s * elapsed
    n = len(latencies) + failed
    result = Result(target, n, failed, round(cpu / n * 1e6, 1),
                    round(percentile(latencies, 0.5) * 1e3, 2) if latencies else 0.0,
                    round(percentile(latencies, 0.99) * 1e3, 2) if latencies else 0.0)
    print(f"{target}: {result}", file=sys.stderr)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=200, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20, help="length of each measurement")
    args = parser.parse_args()
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        node = Dispatcher(settings(Path(tmp_name)))
        await node.start()
        try:
            assert node.tarantool is not None and node.tarantool.pid is not None
            tnt_pid = node.tarantool.pid
            started = time.monotonic()
            await fill(node, args.tasks)
            stats = await node.queue.statistics()
            queued = sum(stats[t]["tasks"]["total"] for t in ("ios", "android"))
            print(f"queued {queued:,} tasks in {time.monotonic() - started:.1f} s", file=sys.stderr)
            assert queued == args.tasks, stats
            base = f"http://127.0.0.1:{node.api_port}"
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

                def get(path: str) -> Callable[[], Awaitable[bool]]:
                    async def request() -> bool:
                        try:
                            async with http.get(base + path, timeout=aiohttp.ClientTimeout(total=30)) as r:
                                await r.read()
                                return r.status == 200
                        except (aiohttp.ClientError, TimeoutError):
                            return False
                    return request

                async def store_statistics() -> bool:
                    try:
                        await node.queue.statistics()
                    except StoreError:
                        return False
                    return True

                for target, request in (("GET /metrics", get("/metrics")), ("GET /readyz", get("/readyz")),
                                        ("queue.statistics (store call)", store_statistics)):
                    results.append(await measure(target, request, tnt_pid, args.rate, args.seconds))
        finally:
            await node.stop()

    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"{args.tasks:,} tasks queued; {args.rate:g} requests/s for {args.seconds:g} s per target\n")
    print("| target | requests | failed | Tarantool CPU µs/request | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.target} | {r.requests:,} | {r.failed} | {r.tarantool_cpu_us_per_request:,} | "
              f"{r.p50_ms} | {r.p99_ms} |")


if __name__ == "__main__":
    uvloop.run(main())
