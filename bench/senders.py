"""Sender throughput: pushes per second and sender CPU per push, for each
gateway against its fake, by connection count and in-flight window, with
peers measured in the same run against the same fake: aioapns as its users
write it, and libcurl (pycurl, the ``bench`` extra) as the other compiled
HTTP/2 client.

    .venv/bin/python -m bench.senders [--pushes 20000] [--profile]

The fakes run in their own process (``dispatcher fake-gateways``), so
their CPU is reported apart; this process runs only the sender, on uvloop.
Sender CPU is the process's, every thread counted (pyreqwest's Rust runtime
runs on its own thread). The fakes are Python and take more CPU a push than
the sender: on a 2-core machine they bound pushes/s, which is why CPU per
push, not pushes/s, is the figure to compare. ``--profile`` adds a cProfile
summary of where the sender's Python time goes, grouped by package.
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
from typing import Any

import uvloop

from bench.common import cpu_seconds, free_port
from bench.peers import CurlApns, bare_aioapns
from dispatcher.core.config import ApnsSettings, FcmSettings
from dispatcher.fakes.credentials import FakeCredentials
from dispatcher.gateways.apns import ApnsSender
from dispatcher.gateways.fcm import FcmSender
from dispatcher.gateways.push import Push, encode

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


async def blast(send: Callable[[Push], Awaitable[bool]], pushes: list[Push], window: int) -> int:
    """Sends every push with at most ``window`` in flight; returns how many were delivered."""
    delivered = 0
    queue = iter(pushes)

    async def worker() -> None:
        nonlocal delivered
        for push in queue:
            if await send(push):
                delivered += 1

    await asyncio.gather(*(worker() for _ in range(window)))
    return delivered


Sender = tuple[Callable[[Push], Awaitable[bool]], Callable[[], Awaitable[None]]]


def client(peer: str, gateway: str, fakes: Fakes, connections: int, window: int) -> Sender:
    """(send, close) for one row: ``ours`` is the dispatcher's sender."""
    if peer == "aioapns":
        from aioapns import NotificationRequest

        bare = bare_aioapns(fakes.apns(connections, window))

        async def aioapns_send(push: Push) -> bool:
            result = await bare.send_notification(NotificationRequest(device_token=push.token, message=APNS_PAYLOAD))
            return bool(result.is_successful)

        async def aioapns_close() -> None:
            bare.pool.close()

        return aioapns_send, aioapns_close
    if peer == "pycurl":
        curl = CurlApns(fakes.apns(connections, window))

        async def curl_send(push: Push) -> bool:
            return await curl.send(push.token, push.body) == 200

        async def curl_close() -> None:
            curl.close()

        return curl_send, curl_close
    sender: ApnsSender | FcmSender
    sender = ApnsSender(fakes.apns(connections, window)) if gateway == "apns" else \
        FcmSender(fakes.fcm(connections, window))

    async def send(push: Push) -> bool:
        return (await sender.send(push)).delivered

    return send, sender.close


async def run(peer: str, gateway: str, fakes: Fakes, connections: int, window: int, count: int,
              profile: cProfile.Profile | None) -> dict[str, float]:
    if gateway == "apns":
        body = encode(APNS_PAYLOAD)
        pushes = [Push(f"{i:064x}", body) for i in range(count)]
    else:
        body = encode(FCM_PAYLOAD)
        pushes = [Push(f"fcm-{i:010d}:" + "x" * 140, body) for i in range(count)]
    send, close = client(peer, gateway, fakes, connections, window)
    await blast(send, pushes[: min(500, count)], window)  # connect, get tokens
    start, cpu0, fake0 = time.monotonic(), time.process_time(), cpu_seconds(fakes.proc.pid)
    if profile:
        profile.enable()
    delivered = await blast(send, pushes, window)
    if profile:
        profile.disable()
    elapsed = time.monotonic() - start
    cpu = time.process_time() - cpu0
    fake_cpu = cpu_seconds(fakes.proc.pid) - fake0
    await close()
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
    plan = [("ours", "apns", 1, 100), ("ours", "apns", 1, 500), ("ours", "apns", 4, 500),
            ("ours", "apns", 4, 1000), ("aioapns", "apns", 4, 1000), ("pycurl", "apns", 4, 1000),
            ("ours", "fcm", 1, 100), ("ours", "fcm", 1, 500), ("ours", "fcm", 4, 1000)]
    rows: list[tuple[str, str, int, int, dict[str, Any]]] = []
    profiles: dict[str, cProfile.Profile] = {}
    for peer, gateway, connections, window in plan:
        # A fake of its own per row: the fake APNs, as Apple does, refuses a
        # team whose provider tokens change too often, and aioapns' tokens
        # (one per connection, minted when it opens) must not meet the
        # state an earlier row left.
        with tempfile.TemporaryDirectory() as tmp:
            fakes = Fakes(Path(tmp))
            try:
                profile = None
                if args.profile and peer == "ours" and gateway not in profiles:
                    profile = profiles[gateway] = cProfile.Profile()
                r = await run(peer, gateway, fakes, connections, window, args.pushes, profile)
            finally:
                fakes.stop()
        rows.append((peer, gateway, connections, window, r))
        print(f"{peer} {gateway} conns={connections} window={window}: {r['per_s']:.0f}/s, "
              f"sender {r['sender_us']:.0f} us/push, fake {r['fake_us']:.0f} us/push", file=sys.stderr)
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, uvloop; "
          f"{args.pushes} pushes per row{' (profiled rows are slower)' if args.profile else ''}\n")
    print("| sender | gateway | connections | in flight | delivered | pushes/s | sender CPU µs/push "
          "| fake CPU µs/push |")
    print("|---|---|---|---|---|---|---|---|")
    for peer, gateway, connections, window, r in rows:
        name = "dispatcher" if peer == "ours" else f"{peer} (peer)"
        print(f"| {name} | {gateway} | {connections} | {window} | {r['delivered']:,} | {r['per_s']:,.0f} | "
              f"{r['sender_us']:.0f} | {r['fake_us']:.0f} |")
    ours = next((r for p, g, c, w, r in rows if (p, g, c, w) == ("ours", "apns", 4, 1000)), None)
    peer = next((r for p, g, c, w, r in rows if (p, g, c, w) == ("aioapns", "apns", 4, 1000)), None)
    if ours and peer:
        print(f"\nAPNs at 4 connections, 1,000 in flight: aioapns costs {peer['sender_us'] / ours['sender_us']:.1f}x "
              "the dispatcher's CPU a push (same run, same fake).")
    for gateway, profile in profiles.items():
        print(f"\nWhere the {gateway} sender's time goes (cProfile, share of own time by package):")
        print(summarize(profile))


if __name__ == "__main__":
    uvloop.run(main())
