"""One node's dispatcher, put together: its Tarantool (when embedded), the
store connection, the senders (to the fake gateways only when
``node.gateways = "fake"``), the send and fan-out workers and the HTTP API."""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path
from typing import Any

from aiohttp import web

from dispatcher.api import Api
from dispatcher.core.backoff import Backoff
from dispatcher.core.config import AppSettings, Settings
from dispatcher.core.errors import ConfigError
from dispatcher.fakes.gateways import FakeGateways
from dispatcher.node.contract import Broadcasts, Subscribers, connect
from dispatcher.node.queue import Queue
from dispatcher.node.records import Registration
from dispatcher.node.store import Store
from dispatcher.node.tarantool_process import TarantoolProcess
from dispatcher.preflight import refusals
from dispatcher.work.apps import Apps
from dispatcher.work.fanout import FanoutWorker
from dispatcher.work.peers import Peers
from dispatcher.work.send import SendPipeline

log = logging.getLogger(__name__)

DEMO_TOPICS = ("breaking", "sport", "tech", "leo", "virgo")
DEMO_ZONES = ("UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo")
# The apps a fake-gateways node sends for when none are configured.
DEMO_APPS = ("news", "horoscope")


class Dispatcher:
    def __init__(self, settings: Settings) -> None:
        problems = refusals(settings)
        if problems:
            raise ConfigError("cannot start this node: " + "; ".join(problems))
        self.settings = settings
        self.tarantool = TarantoolProcess(settings) if settings.node.embedded else None
        self.store = Store(settings.tarantool)
        self.queue = Queue(self.store)
        self.subscribers = Subscribers(self.store)
        self.broadcasts = Broadcasts(self.store)
        self.fakes: FakeGateways | None = None
        self.peers = Peers(settings.cluster, settings.node.name, settings.tarantool) if settings.cluster else None
        self.api_keys: dict[str, set[str]] = {}
        self.api_port = 0
        self._stop = asyncio.Event()
        self.restarts = 0  # workers started again after a crash
        self._workers: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.apps: Apps | None = None

    async def start(self) -> None:
        s = self.settings
        d = s.dispatch
        backoff = Backoff(d.retry_base_s, d.retry_cap_s, d.retry_deadline_s, d.retry_after_cap_s)
        # Credentials first: one that does not load stops start-up before
        # anything runs.
        self.apps = apps = Apps(await self._app_settings(), d, backoff)
        if self.tarantool is not None:
            await asyncio.to_thread(self.tarantool.start)
        await connect(self.store)
        if self.peers is not None:
            self.peers.start()
        workers: list[SendPipeline | FanoutWorker] = [
            SendPipeline(platform, self.queue.tube(platform), apps, self.store, self.broadcasts, backoff, d,
                         s.tarantool.request_timeout_s)
            for platform in sorted(apps.platforms())
        ]
        workers.append(FanoutWorker(s.node.name, self.store, d.fanout_page, d.high_water, self.peers,
                                    d.baton_silence_s, d.cascade_parts))
        self._workers = [asyncio.create_task(self._supervise(w)) for w in workers]
        if s.api.keys is None:
            # Demo mode on loopback only (preflight refuses anything else).
            self.api_keys = {"demo-" + secrets.token_urlsafe(18): {"admin", "backend"}}
        else:
            self.api_keys = {k.key.get_secret_value(): set(k.scopes) for k in s.api.keys}
        api = Api(s.api, self.api_keys, self.queue, self.subscribers, self.broadcasts, self.peers,
                  apps.by_app(), memtx_quota_bytes=s.node.memtx_memory_mb * 2**20)
        self._runner = web.AppRunner(api.app(), access_log=None)
        await self._runner.setup()
        # A TCP site whose connections are guarded: slow clients dropped,
        # at most api.max_connections (dispatcher/api/guard.py).
        site = api.site(self._runner)
        await site.start()
        self.api_port = site.port

    async def _supervise(self, worker: SendPipeline | FanoutWorker) -> None:
        """Runs a worker until stop; a bug that escapes it is logged at once
        and the worker starts again, instead of the node going quiet."""
        while not self._stop.is_set():
            try:
                await worker.run(self._stop)
            except Exception:
                log.exception("%s crashed; starting it again in 1 s", type(worker).__name__)
                self.restarts += 1
                await asyncio.sleep(1)

    async def _app_settings(self) -> dict[str, AppSettings]:
        """Each app's credentials: as configured, or, with node.gateways =
        "fake", the fakes' (topic com.example.<app>, project fake-<app>),
        for the configured apps or else the demo apps."""
        s = self.settings
        if s.node.gateways == "real":
            return dict(s.apps)
        self.fakes = FakeGateways(Path(s.node.data_dir) / "fakes")
        await self.fakes.start()
        log.warning('node.gateways = "fake": sending every push to the fake gateways in this process')
        return fake_apps(self.fakes, s.apps)

    async def seed_demo_devices(self) -> int:
        """In demo mode, puts demo devices in when the node has none; returns
        how many."""
        if not self.settings.node.demo:
            return 0
        return await seed_demo_devices(self.subscribers, self.settings.dispatch.demo_devices)

    async def kill(self) -> None:
        """What kill -9 of the node does (for tests): Tarantool killed, the
        workers gone without settling, nothing drained."""
        if self.tarantool is not None:
            await asyncio.to_thread(self.tarantool.kill)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        await self.stop()

    async def stop(self) -> None:
        """Stop taking work, let pushes in flight finish (up to drain_timeout_s),
        then close everything."""
        self._stop.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._workers:
            done, pending = await asyncio.wait(self._workers, timeout=self.settings.dispatch.drain_timeout_s)
            for task in pending:
                task.cancel()
            for task in done:
                if task.exception() is not None:
                    log.error("worker failed: %r", task.exception())
        if self.apps is not None:
            await self.apps.close()
        if self.fakes is not None:
            await self.fakes.stop()
        if self.peers is not None:
            await self.peers.close()
        await self.store.close()
        if self.tarantool is not None:
            await asyncio.to_thread(self.tarantool.stop)


def fake_apps(fakes: FakeGateways, configured: dict[str, AppSettings], **overrides: Any) -> dict[str, AppSettings]:
    """The apps, with the fakes' credentials in place of their own (and
    ``overrides`` for every sender's settings)."""
    creds = fakes.credentials
    projects = list(creds.fcm_projects)
    wanted: dict[str, AppSettings | None] = {**configured} or dict.fromkeys(DEMO_APPS)
    out = {}
    for name, app in wanted.items():
        apns = fcm = None
        if app is None or app.apns is not None:
            topic = app.apns.topic if app is not None and app.apns is not None else None
            apns = creds.apns_settings(fakes.ports["apns"], topic=topic or f"com.example.{name}", **overrides)
        if app is None or app.fcm is not None:
            project = f"fake-{name}" if f"fake-{name}" in projects else projects[0]
            fcm = creds.fcm_settings(fakes.ports["fcm"], project=project, **overrides)
        out[name] = AppSettings(apns=apns, fcm=fcm)
    return out


def demo_registrations(count: int) -> list[Registration]:
    """``count`` devices of the demo app 'news', half iOS, half Android, two
    per user, spread over a few topics and time zones."""
    return [
        Registration(f"{i:064x}" if i % 2 == 0 else f"demo-android-{i:08d}:" + "A" * 120,
                     f"demo-user-{i // 2:06d}", "ios" if i % 2 == 0 else "android", "news",
                     (DEMO_TOPICS[i % len(DEMO_TOPICS)],), DEMO_ZONES[i % len(DEMO_ZONES)])
        for i in range(count)
    ]


async def seed_demo_devices(subscribers: Subscribers, count: int) -> int:
    """Registers ``count`` demo devices unless the node has a device already;
    returns how many were registered."""
    if count == 0:
        return 0
    rows, cursor = await subscribers.page(None, 1)
    if rows or cursor is not None:
        return 0
    regs = demo_registrations(count)
    for start in range(0, len(regs), 1000):
        await subscribers.put_many(regs[start:start + 1000])
    return count
