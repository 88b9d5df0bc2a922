"""``dispatcher cluster up``: a local cluster in one command, for development
and tests. N nodes on loopback, each its own ``dispatcher run`` process with
its own Tarantool, all replicating, all sending to one set of fake gateways
run by this process. Ctrl-C stops them all."""

from __future__ import annotations

import asyncio
import random
import secrets
import socket
import sys
import time
from pathlib import Path

from pydantic import SecretStr

from dispatcher.api import curl_example
from dispatcher.core.config import (
    ApiKey,
    ApiSettings,
    ClusterNode,
    ClusterSettings,
    NodeSettings,
    Settings,
    TarantoolSettings,
    to_toml,
)
from dispatcher.core.errors import DispatcherError
from dispatcher.core.files import open_private, private_dir, write_private
from dispatcher.fakes.gateways import FakeGateways
from dispatcher.node.contract import Subscribers, connect
from dispatcher.node.store import Store
from dispatcher.service import fake_apps, seed_demo_devices

UP_MARK = " is up"


# One process serves the fake gateways to every node of the cluster, on a
# machine that also runs the nodes: a window per sender that it answers
# well within request_timeout_s (real gateways take the default 1,000).
FAKE_IN_FLIGHT = 250


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range (32768 up), so
    that no outgoing connection takes it between this check and its use."""
    while True:
        port = random.randint(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def _ports(base: int, count: int) -> list[int]:
    if base:
        return [base + i for i in range(count)]
    return [free_port() for _ in range(count)]


def cluster_settings(directory: Path, count: int, tarantool_base: int, http_base: int, fakes: FakeGateways,
                     demo_devices: int) -> list[Settings]:
    """One settings object per node: the same cluster list, secrets and
    gateways, each its own name and data directory."""
    tarantool_ports, http_ports = _ports(tarantool_base, count), _ports(http_base, count)
    nodes = [ClusterNode(name=f"node{i + 1}", tarantool=f"127.0.0.1:{tarantool_ports[i]}",
                         http=f"127.0.0.1:{http_ports[i]}") for i in range(count)]
    cluster = ClusterSettings(nodes=nodes)
    password = SecretStr(secrets.token_urlsafe(18))
    replicator = SecretStr(secrets.token_urlsafe(18))
    key = ApiKey(key=SecretStr("dev-cluster-" + secrets.token_urlsafe(12)), scopes=["admin", "backend"])
    # Sections go in as dicts, so that DISPATCHER_* variables merge into them
    # here as they will in each node's process.
    return [
        Settings(
            node=NodeSettings(name=n.name, data_dir=directory / n.name,
                              replicator_password=replicator).model_dump(exclude_defaults=True),
            tarantool=TarantoolSettings(password=password).model_dump(exclude_defaults=True),
            api=ApiSettings(keys=[key]).model_dump(exclude_defaults=True),
            # Devices replicate: one node's count is all of them (cluster_up seeds them).
            dispatch={"demo_devices": demo_devices if i == 0 else 0},
            apps={name: app.model_dump(exclude_defaults=True)
                  for name, app in fake_apps(fakes, {}, in_flight=FAKE_IN_FLIGHT).items()},
            cluster=cluster.model_dump(),
        )
        for i, n in enumerate(nodes)
    ]


class NodeProcess:
    """One node as its own ``dispatcher run`` process (which starts its own
    Tarantool), its config and log in ``directory``."""

    def __init__(self, directory: Path, settings: Settings) -> None:
        self.settings = settings
        self.config = directory / f"{settings.node.name}.toml"
        self.log = directory / f"{settings.node.name}.log"
        # Secrets in clear (passwords, API keys): the owner's alone.
        write_private(self.config, to_toml(settings))
        self.proc: asyncio.subprocess.Process | None = None
        self._log_from = 0

    async def start(self) -> None:
        self._log_from = self.log.stat().st_size if self.log.exists() else 0
        with open_private(self.log, append=True) as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dispatcher", "--config", str(self.config), "run",
                stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL)

    def output(self) -> str:
        """What this run of the node logged so far (a small local file, read
        in the loop's thread on purpose)."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as f:
            f.seek(self._log_from)
            return f.read().decode(errors="replace")

    async def wait_up(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if UP_MARK in self.output():
                return
            if self.proc is None or self.proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        tail = "\n  ".join(self.output().strip().splitlines()[-10:])
        raise DispatcherError(f"node did not come up; end of {self.log}:\n  {tail}")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
        if self.proc is not None:
            await self.proc.wait()


async def _seed(settings: Settings) -> int:
    """Demo devices, through one node: they replicate to the others. (The
    nodes are no demo nodes: they send to the fakes as to real gateways.)"""
    store = Store(settings.tarantool)
    await connect(store)
    try:
        return await seed_demo_devices(Subscribers(store), settings.dispatch.demo_devices)
    finally:
        await store.close()


async def cluster_up(count: int, directory: Path, tarantool_base: int, http_base: int, demo_devices: int,
                     stop: asyncio.Event) -> None:
    private_dir(directory)
    fakes = FakeGateways(directory / "fakes")
    await fakes.start()
    procs: list[NodeProcess] = []
    try:
        nodes = cluster_settings(directory, count, tarantool_base, http_base, fakes, demo_devices)
        procs = [NodeProcess(directory, n) for n in nodes]
        for proc in procs:
            await proc.start()
        # A new cluster's nodes wait for each other, so they start together.
        await asyncio.gather(*(p.wait_up() for p in procs))
        seeded = await _seed(nodes[0])
        key = nodes[0].api.keys[0].key.get_secret_value() if nodes[0].api.keys else ""
        lines = [f"cluster is up: {count} nodes, {seeded} demo devices registered (app 'news')"]
        for p in procs:
            s = p.settings
            lines.append(f"  {s.node.name}: API http://{s.api.host}:{s.api.port}, Tarantool {s.tarantool.address}, "
                         f"log {p.log}")
        lines += [
            f"  API key: {key}",
            f"  fake gateways' stats: http://127.0.0.1:{fakes.ports['stats']}/stats",
            "Start a broadcast on any node:",
            f"  {curl_example(f'http://{nodes[0].api.host}:{nodes[0].api.port}', key)}",
            "Ctrl-C stops them all.",
        ]
        print("\n".join(lines), flush=True)
        await stop.wait()
    finally:
        await asyncio.gather(*(p.stop() for p in procs))
        await fakes.stop()
