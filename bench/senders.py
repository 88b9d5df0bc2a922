"""Sender throughput: pushes per second and sender CPU per push, for each
gateway against its fake, by connection count and in-flight window.

    .venv/bin/python -m bench.senders [--pushes 20000] [--profile]

The fakes run in their own process (``dispatcher fake-gateways``) so their
CPU is reported apart; this process runs only the sender, on uvloop.
``--profile`` adds a cProfile summary of where the sender's time goes,
grouped by package.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import platform
import pstats
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from bench.common import cpu_seconds, free_port
from dispatcher.apns import ApnsSender
from dispatcher.config import ApnsSettings, FcmSettings
from dispatcher.fakes.credentials import FakeCredentials
from dispatcher.fcm import FcmSender
from dispatcher.push import Outcome, Push

APNS_PAYLOAD = {"aps": {"alert": {"title": "Breaking news", "body": "Something happened somewhere"}}}
FCM_PAYLOAD = {"notification": {"title": "Breaking news", "body": "Something happened somewhere"},
               "data": {"broadcast": "b-0001"}}


class Fakes:
    def __init__(self, directory: Path) -> None:
        self.ports = {name: free_port() for name in ("apns", "fcm", "oauth", "stats")}
        args = [sys.executable, "-m", "dispatcher", "fake-gateways", "--dir", str(directory)]
        for name, port in self.ports.items():
            args += [f"--{name}-port", str(port)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        text = "".join(self.proc.stdout.readline() for _ in range(5))
        key_id, team_id = re.search(r"key id (\w+), team id (\w+)", text).groups()  # type: ignore[union-attr]
        self.credentials = FakeCredentials.from_directory(directory, key_id, team_id)

    def apns(self, connections: int, in_flight: int) -> ApnsSettings:
        return self.credentials.apns_settings(self.ports["apns"], connections=connections, in_flight=in_flight)

    def fcm(self, connections: int, in_flight: int) -> FcmSettings:
        return self.credentials.fcm_settings(self.ports["fcm"], connections=connections, in_flight=in_flight)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def blast(send: Callable[[Push], Awaitable[Outcome]], pushes: list[Push], window: int) -> int:
    """Sends every push with at most ``window`` in flight; returns how many were delivered."""
    delivered = 0
    queue = iter(pushes)

    async def worker() -> None:
        nonlocal delivered
        for push in queue:
            if (await send(push)).delivered:
                delivered += 1

    await asyncio.gather(*(worker() for _ in range(window)))
    return delivered


async def run(gateway: str, fakes: Fakes, connections: int, window: int, count: int,
              profile: cProfile.Profile | None) -> dict[str, float]:
    sender: ApnsSender | FcmSender
    if gateway == "apns":
        sender = ApnsSender(fakes.apns(connections, window))
        pushes = [Push(f"{i:064x}", APNS_PAYLOAD) for i in range(count)]
    else:
        sender = FcmSender(fakes.fcm(connections, window))
        pushes = [Push(f"fcm-{i:010d}:" + "x" * 140, FCM_PAYLOAD) for i in range(count)]
    await blast(sender.send, pushes[: min(500, count)], window)  # connect, get tokens
    start, cpu0, fake0 = time.monotonic(), time.process_time(), cpu_seconds(fakes.proc.pid)
    if profile:
        profile.enable()
    delivered = await blast(sender.send, pushes, window)
    if profile:
        profile.disable()
    elapsed = time.monotonic() - start
    cpu = time.process_time() - cpu0
    fake_cpu = cpu_seconds(fakes.proc.pid) - fake0
    await sender.close()
    return {"delivered": delivered, "per_s": delivered / elapsed, "sender_us": cpu / count * 1e6,
            "fake_us": fake_cpu / count * 1e6}


def summarize(profile: cProfile.Profile) -> str:
    stats = pstats.Stats(profile)
    by_package: dict[str, float] = defaultdict(float)
    total = 0.0
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        match = re.search(r"site-packages/([^/]+)", filename) or re.search(r"/(dispatcher)/", filename)
        package = match.group(1) if match else ("asyncio/stdlib" if "python3" in filename else filename)
        by_package[package] += tottime
        total += tottime
    rows = sorted(by_package.items(), key=lambda kv: -kv[1])[:10]
    return "\n".join(f"  {name:<28} {t / total * 100:5.1f}%" for name, t in rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pushes", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    plan = [("apns", 1, 100), ("apns", 1, 500), ("apns", 4, 500), ("apns", 4, 1000),
            ("fcm", 1, 100), ("fcm", 1, 500), ("fcm", 2, 500)]
    rows = []
    profiles: dict[str, cProfile.Profile] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fakes = Fakes(Path(tmp))
        try:
            for gateway, connections, window in plan:
                profile = None
                if args.profile and gateway not in profiles:
                    profile = profiles[gateway] = cProfile.Profile()
                r = await run(gateway, fakes, connections, window, args.pushes, profile)
                rows.append((gateway, connections, window, r))
                print(f"{gateway} conns={connections} window={window}: {r['per_s']:.0f}/s, "
                      f"sender {r['sender_us']:.0f} us/push, fake {r['fake_us']:.0f} us/push", file=sys.stderr)
        finally:
            fakes.stop()
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, uvloop; "
          f"{args.pushes} pushes per row{' (profiled rows are slower)' if args.profile else ''}\n")
    print("| gateway | connections | in flight | pushes/s | sender CPU µs/push | fake CPU µs/push |")
    print("|---|---|---|---|---|---|")
    for gateway, connections, window, r in rows:
        print(f"| {gateway} | {connections} | {window} | {r['per_s']:,.0f} | {r['sender_us']:.0f} | "
              f"{r['fake_us']:.0f} |")
    for gateway, profile in profiles.items():
        print(f"\nWhere the {gateway} sender's time goes (cProfile, share of own time by package):")
        print(summarize(profile))


if __name__ == "__main__":
    uvloop.run(main())
