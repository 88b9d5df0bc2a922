"""The apps a node sends for: for each app and platform, the sender its
pushes go through, the APNs topic they go out under, and the gate that
pauses that app's gateway. APNs apps on the same token key and endpoint
share one sender (a provider token is good for every topic of its team);
an app with a certificate, and each FCM project, has its own."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from dispatcher.core.backoff import Backoff
from dispatcher.core.config import ApnsSettings, AppSettings, DispatchSettings, FcmSettings
from dispatcher.core.errors import ConfigError
from dispatcher.gateways.apns import ApnsSender
from dispatcher.gateways.fcm import FcmSender
from dispatcher.gateways.push import Outcome, Push
from dispatcher.work.gates import Gate, RemovalGuard

log = logging.getLogger(__name__)

S = TypeVar("S", ApnsSender, FcmSender)


class Sender(Protocol):
    async def send(self, push: Push) -> Outcome: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Route:
    app: str
    platform: str
    sender: Sender
    topic: str | None  # APNs: the app's bundle id
    gate: Gate
    in_flight: int


class Apps:
    def __init__(self, apps: Mapping[str, AppSettings], dispatch: DispatchSettings, backoff: Backoff) -> None:
        """Builds every sender; a credential that does not load raises
        ConfigError naming ``apps.<name>.<section>.<setting>``."""
        self.routes: dict[tuple[str, str], Route] = {}
        self._senders: list[Sender] = []
        shared: dict[tuple[object, ...], ApnsSender] = {}
        d = dispatch

        def gate(app: str, platform: str) -> Gate:
            return Gate(app, platform, backoff, d.breaker_failures, d.pause_probe_s, d.pause_probe_cap_s,
                        RemovalGuard(d.guard_share, d.guard_min_sends))

        for name, app in apps.items():
            if app.apns is not None:
                sender = self._apns(name, app.apns, shared)
                # With a certificate and no topic, the certificate's.
                topic = app.apns.topic or sender.certificate_topic
                if not topic:
                    raise ConfigError(f"apps.{name}.apns.topic: not set, and the certificate names no topic")
                self.routes[name, "ios"] = Route(name, "ios", sender, topic, gate(name, "ios"), app.apns.in_flight)
            if app.fcm is not None:
                fcm = self._fcm(name, app.fcm)
                self.routes[name, "android"] = Route(name, "android", fcm, None, gate(name, "android"),
                                                     app.fcm.in_flight)

    def _apns(self, name: str, s: ApnsSettings, shared: dict[tuple[object, ...], ApnsSender]) -> ApnsSender:
        key = None
        if s.key_path is not None:
            # Everything but the topic makes the connection.
            key = tuple(sorted((k, str(v)) for k, v in s.model_dump(exclude={"topic"}).items()))
            if key in shared:
                return shared[key]
        sender = _named(name, "apns", lambda: ApnsSender(s))
        self._senders.append(sender)
        if key is not None:
            shared[key] = sender
        return sender

    def _fcm(self, name: str, s: FcmSettings) -> FcmSender:
        sender = _named(name, "fcm", lambda: FcmSender(s))
        self._senders.append(sender)
        return sender

    def route(self, app: str, platform: str) -> Route | None:
        return self.routes.get((app, platform))

    def platforms(self) -> frozenset[str]:
        return frozenset(p for _, p in self.routes)

    def by_app(self) -> dict[str, frozenset[str]]:
        """app -> the platforms it has credentials for (what registration accepts)."""
        out: dict[str, set[str]] = {}
        for app, platform in self.routes:
            out.setdefault(app, set()).add(platform)
        return {app: frozenset(p) for app, p in out.items()}

    def gates(self, platform: str) -> list[Gate]:
        return [r.gate for (_, p), r in self.routes.items() if p == platform]

    def sole_app(self, platform: str) -> str | None:
        """The app, if only one sends to ``platform`` (what a task queued
        before tasks named their app was meant for)."""
        names = [app for (app, p) in self.routes if p == platform]
        return names[0] if len(names) == 1 else None

    def window(self, platform: str) -> int:
        """Pushes a platform keeps in flight: each distinct sender's in_flight
        (apps sharing a sender share all its settings, in_flight included)."""
        return sum({id(r.sender): r.in_flight for (_, p), r in self.routes.items() if p == platform}.values())

    async def close(self) -> None:
        for sender in self._senders:
            await sender.close()


def _named(app: str, section: str, build: Callable[[], S]) -> S:
    """Builds a sender, naming the app in a credential error
    (``apns.key_path: ...`` becomes ``apps.news.apns.key_path: ...``)."""
    try:
        sender = build()
    except ConfigError as e:
        message = str(e)
        if not message.startswith(f"{section}."):
            message = f"{section}: {message}"
        raise ConfigError(f"apps.{app}.{message}") from None
    return sender
