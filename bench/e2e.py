"""A broadcast end to end on one node: devices delivered per second, and CPU
microseconds per delivered push of the dispatcher process and of Tarantool
(read from /proc), the fakes' CPU reported apart.

    .venv/bin/python -m bench.e2e [--devices 200000] [--profile]

Three processes besides this one, as in production: Tarantool, `dispatcher
run` (not embedded) and `dispatcher fake-gateways`. Half the devices are
iOS, half Android. ``--profile`` runs the dispatcher under cProfile (timed by its
main thread's CPU clock: bench/profiled.py) and prints the top of its
profile by own time; the profiler slows it, so the CPU figures of a
profiled run are not the ones to quote.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import pstats
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import uvloop
from pydantic import SecretStr

from bench.common import cpu_seconds, free_port, thread_cpu_seconds
from bench.senders import Fakes
from dispatcher.core.config import (
    ApiKey,
    ApiSettings,
    AppSettings,
    DispatchSettings,
    NodeSettings,
    Settings,
    TarantoolSettings,
    to_toml,
)
from dispatcher.node.contract import Subscribers
from dispatcher.node.records import Registration
from dispatcher.node.store import Store
from dispatcher.node.tarantool_process import TarantoolProcess

KEY = "bench-admin-key-0123456789"


def config(tmp: Path, settings: Settings, fakes: Fakes, api_port: int) -> Path:
    path = tmp / "dispatcher.toml"
    path.write_text(to_toml(settings.model_copy(update={
        "node": settings.node.model_copy(update={"embedded": False}),
        "api": ApiSettings(port=api_port, keys=[ApiKey(key=KEY, scopes=["admin"])]),  # type: ignore[arg-type]
        "dispatch": DispatchSettings(demo_devices=0),
        "apps": {"news": AppSettings(apns=fakes.credentials.apns_settings(fakes.ports["apns"]),
                                     fcm=fakes.credentials.fcm_settings(fakes.ports["fcm"]))},
    })))
    return path


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=200_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        settings = Settings(node=NodeSettings(name="bench", data_dir=tmp / "node", memtx_memory_mb=1024),
                            tarantool=TarantoolSettings(port=free_port(), password=SecretStr("bench-password")))
        tarantool = TarantoolProcess(settings)
        tarantool.start()
        fakes = Fakes(tmp / "fakes")
        api_port = free_port()
        profile = tmp / "dispatcher.prof"
        command = ["-m", "bench.profiled", str(profile)] if args.profile else ["-m", "dispatcher"]
        dispatcher = await asyncio.create_subprocess_exec(
            sys.executable, *command, "--config", str(config(tmp, settings, fakes, api_port)),
            "run",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        try:
            assert dispatcher.stdout is not None
            await dispatcher.stdout.readline()
            store = Store(settings.tarantool)
            await store.connect()
            subscribers = Subscribers(store)
            started = time.monotonic()
            for start in range(0, args.devices, 2000):
                await subscribers.put_many([
                    Registration(f"{i:064x}" if i % 2 == 0 else f"fcm-{i:010d}:" + "x" * 140, f"user-{i // 2}",
                                 "ios" if i % 2 == 0 else "android", "news")
                    for i in range(start, min(start + 2000, args.devices))])
            print(f"registered {args.devices} devices in {time.monotonic() - started:.1f} s", file=sys.stderr)
            assert tarantool.pid is not None
            pids = {"dispatcher": dispatcher.pid, "tarantool": tarantool.pid, "fakes": fakes.proc.pid}
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
            threads0 = thread_cpu_seconds(dispatcher.pid)
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as http:
                base = f"http://127.0.0.1:{api_port}"
                spec = {"message": {"title": "Bench", "body": "One broadcast"}, "audience": {"app": "news"}}
                started = time.monotonic()
                async with http.post(f"{base}/v1/broadcasts", json=spec, headers={"Idempotency-Key": "bench"}) as r:
                    broadcast = await r.json()
                while True:
                    await asyncio.sleep(0.5)
                    async with http.get(f"{base}/v1/broadcasts/{broadcast['id']}") as r:
                        status = await r.json()
                    if status["state"] == "done":
                        break
            elapsed = time.monotonic() - started
            cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
            threads = {name: t - threads0.get(name, 0.0) for name, t in thread_cpu_seconds(dispatcher.pid).items()}
            await store.close()
        finally:
            dispatcher.terminate()
            await dispatcher.wait()
            fakes.stop()
            tarantool.stop()
        top = top_of(profile) if args.profile else ""
    delivered = status["progress"]["delivered"]
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    print("| devices | delivered | seconds | delivered/s | dispatcher CPU µs/push | Tarantool CPU µs/push "
          "| fakes CPU µs/push |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.devices:,} | {delivered:,} | {elapsed:.1f} | {delivered / elapsed:,.0f} | "
          f"{cpu['dispatcher'] / delivered * 1e6:.0f} | {cpu['tarantool'] / delivered * 1e6:.0f} | "
          f"{cpu['fakes'] / delivered * 1e6:.0f} |")
    print("\nThe dispatcher's CPU by thread, µs per delivered push: " + ", ".join(
        f"{name} {t / delivered * 1e6:.0f}" for name, t in sorted(threads.items(), key=lambda kv: -kv[1]) if t > 0))
    if top:
        print(f"\nTop of the dispatcher's profile (main thread CPU, own time):\n\n{top}")


def top_of(path: Path, rows: int = 15) -> str:
    stats = pstats.Stats(str(path))
    entries = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])  # type: ignore[attr-defined]
    total = sum(v[2] for _, v in entries)
    lines = ["| function | calls | own time | share |", "|---|---|---|---|"]
    for (filename, line, name), (_, calls, own, _, _) in entries[:rows]:
        where = filename.split("site-packages/")[-1].split("/work/main/")[-1] if filename != "~" else "builtin"
        lines.append(f"| `{where}:{line}({name})` | {calls:,} | {own:.2f} s | {own / total * 100:.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    uvloop.run(main())
