"""Queue throughput: put + take + ack cycles per second from Python against one
local node, single-task calls and batch calls, at several concurrency levels.

    .venv/bin/python -m bench.queue [--seconds 5] [--json out.json]

Starts its own Tarantool (lua/init.lua) in a temporary directory on a free
port, with the WAL on (fsync off, Tarantool's default), and prints a
Markdown table: tasks per second, and CPU microseconds per task of this
Python process and of Tarantool (from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import SecretStr

from bench.common import cpu_seconds, free_port
from dispatcher.core.config import NodeSettings, Settings, TarantoolSettings
from dispatcher.node.queue import Queue, Tube
from dispatcher.node.store import Store
from dispatcher.node.tarantool_process import TarantoolProcess

# A send task as the dispatcher queues it: broadcast, token, platform, attempt.
TASKS = {
    "array": ["broadcast-0001", "a" * 64, "ios", 0],
    "map": {"b": "broadcast-0001", "t": "a" * 64, "p": "ios", "a": 0},
}
TASK: object = TASKS["array"]


@dataclass
class Result:
    mode: str
    concurrency: int
    batch: int
    tasks: int
    seconds: float
    tasks_per_s: float
    client_cpu_us_per_task: float
    tarantool_cpu_us_per_task: float


async def single_worker(tube: Tube, stop_at: float) -> int:
    done = 0
    while time.monotonic() < stop_at:
        await tube.put(TASK)
        task = await tube.take(0)
        if task is not None:
            await tube.ack(task.id)
            done += 1
    return done


async def batch_worker(tube: Tube, batch: int, stop_at: float) -> int:
    items = [TASK] * batch
    done = 0
    while time.monotonic() < stop_at:
        await tube.put_many(items)
        tasks = await tube.take_many(batch)
        await tube.ack_many([t.id for t in tasks])
        done += len(tasks)
    return done


async def measure(tube: Tube, tnt_pid: int, mode: str, concurrency: int, batch: int, seconds: float) -> Result:
    start, cpu0, tnt0 = time.monotonic(), time.process_time(), cpu_seconds(tnt_pid)
    stop_at = start + seconds
    if mode == "single":
        jobs = [single_worker(tube, stop_at) for _ in range(concurrency)]
    else:
        jobs = [batch_worker(tube, batch, stop_at) for _ in range(concurrency)]
    tasks = sum(await asyncio.gather(*jobs))
    elapsed = time.monotonic() - start
    client = time.process_time() - cpu0
    server = cpu_seconds(tnt_pid) - tnt0
    return Result(mode, concurrency, batch, tasks, round(elapsed, 2), round(tasks / elapsed),
                  round(client / tasks * 1e6, 1), round(server / tasks * 1e6, 1))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--shape", choices=sorted(TASKS), default="array", help="task data: array or map")
    args = parser.parse_args()
    global TASK
    TASK = TASKS[args.shape]

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            node=NodeSettings(name="bench", data_dir=Path(tmp), memtx_memory_mb=1024),
            tarantool=TarantoolSettings(port=free_port(), password=SecretStr("bench-password")),
        )
        tnt = TarantoolProcess(settings)
        tnt.start()
        store = Store(settings.tarantool)
        try:
            await store.connect()
            tube = Queue(store).tube("ios")
            assert tnt.pid is not None
            plan = [("single", c, 1) for c in (1, 10, 50, 200)]
            plan += [("batch", c, b) for b in (100, 500, 1000) for c in (1, 4, 16)]
            results = []
            for mode, concurrency, batch in plan:
                await tube.truncate()
                results.append(await measure(tube, tnt.pid, mode, concurrency, batch, args.seconds))
                r = results[-1]
                print(f"{mode:6} c={concurrency:<3} batch={batch:<4} {r.tasks_per_s:>8} tasks/s  "
                      f"client {r.client_cpu_us_per_task} us/task  tarantool {r.tarantool_cpu_us_per_task} us/task",
                      file=sys.stderr)
        finally:
            await store.close()
            tnt.stop()

    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{'uvloop' if args.uvloop else 'asyncio'}; task data: {args.shape} {json.dumps(TASK)[:40]}...; "
          f"{args.seconds:g} s per row\n")
    print("| calls | coroutines | batch | tasks/s | client CPU µs/task | Tarantool CPU µs/task |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.mode} | {r.concurrency} | {r.batch} | {r.tasks_per_s:,} | "
              f"{r.client_cpu_us_per_task} | {r.tarantool_cpu_us_per_task} |")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    argv_uvloop = "--uvloop" in sys.argv
    if argv_uvloop:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
