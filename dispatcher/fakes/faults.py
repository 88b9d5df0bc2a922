"""Fault injection for the fakes, set at start-up or changed at run time
(``POST /faults/<gateway>`` on the stats endpoint), and the counters of what
the fakes received."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter, defaultdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from dispatcher.fakes.h2server import ConnectionFaults


class Faults(BaseModel):
    """Shares are of requests (random), except ``dead_share``, which is of
    tokens (decided by a hash, so a token keeps its fate). ``*_first`` hit
    the first N requests after the faults were set: a burst a test can count."""

    model_config = ConfigDict(extra="forbid")

    dead_share: float = Field(0.0, ge=0, le=1)
    dead_tokens: set[str] = Field(default_factory=set)
    # token -> the reason (APNs) or errorCode (FCM) to answer it with.
    answers: dict[str, str] = Field(default_factory=dict)
    throttle_share: float = Field(0.0, ge=0, le=1)
    throttle_first: int = Field(0, ge=0)
    retry_after_s: int | None = Field(None, ge=0)
    error_share: float = Field(0.0, ge=0, le=1)
    error_first: int = Field(0, ge=0)
    error_status: int = Field(503, ge=500, le=599)
    slow_share: float = Field(0.0, ge=0, le=1)
    slow_s: float = Field(0.0, ge=0)
    goaway_after: int | None = Field(None, ge=1)
    drop_after: int | None = Field(None, ge=1)
    # Lifetime of what the gateway issues or accepts: FCM access tokens,
    # APNs provider tokens (Apple: one hour).
    token_ttl_s: int = Field(3600, ge=1)
    seed: int | None = None
    # A gateway that refuses us: every request that passes the checks (auth
    # included) gets this answer instead of being accepted. APNs: a reason;
    # FCM: an errorCode, or one of the detail-less answers in fcm.BARE.
    reject_all: str | None = None
    # The same for one app only, so that another app on the gateway still
    # works: APNs topic -> reason, FCM project -> answer.
    reject_topics: dict[str, str] = Field(default_factory=dict)
    reject_projects: dict[str, str] = Field(default_factory=dict)
    # Close every connection as it arrives, before TLS.
    refuse_connections: bool = False

    @model_validator(mode="after")
    def _known_refusals(self, info: ValidationInfo) -> Faults:
        # The faults endpoint knows the gateway (context); a Faults made
        # elsewhere is checked against both, then by the gateway it is set on.
        check_refusals(self, (info.context or {}).get("gateway"))
        return self


def refusals(gateway: str) -> frozenset[str]:
    """The answers a refusal fault may give on ``gateway``."""
    # Imported here: both gateways' modules import this one.
    from dispatcher.fakes import apns, fcm

    return frozenset(apns.REASON_STATUS) if gateway == "apns" else fcm.REFUSALS


def check_refusals(faults: Faults, gateway: str | None) -> None:
    """Raises ValueError naming a refusal ``gateway`` (None: either) cannot give."""
    apns, fcm = refusals("apns"), refusals("fcm")
    either = {"apns": apns, "fcm": fcm}.get(gateway or "", apns | fcm)
    checks = [("reject_all", faults.reject_all, either),
              *((f"reject_topics[{k!r}]", v, apns) for k, v in faults.reject_topics.items()),
              *((f"reject_projects[{k!r}]", v, fcm) for k, v in faults.reject_projects.items())]
    for name, value, known in checks:
        if value is not None and value not in known:
            raise ValueError(f"{name}: unknown answer {value!r}; one of {', '.join(sorted(known))}")


class FaultState:
    """Faults in force, plus what they need to remember (a burst's count)."""

    def __init__(self, faults: Faults, gateway: str) -> None:
        self.gateway = gateway
        self.set(faults)

    def set(self, faults: Faults) -> None:
        check_refusals(faults, self.gateway)
        self.faults = faults
        self.seen = 0
        self.rng = random.Random(faults.seed)

    def next_request(self) -> int:
        self.seen += 1
        return self.seen

    def is_dead(self, token: str) -> bool:
        f = self.faults
        if token in f.dead_tokens:
            return True
        if f.dead_share <= 0:
            return False
        digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < f.dead_share

    def throttled(self, n: int) -> bool:
        return n <= self.faults.throttle_first or self.rng.random() < self.faults.throttle_share

    def failing(self, n: int) -> bool:
        return n <= self.faults.error_first or self.rng.random() < self.faults.error_share

    async def maybe_slow(self) -> None:
        if self.faults.slow_s > 0 and self.rng.random() < self.faults.slow_share:
            await asyncio.sleep(self.faults.slow_s)

    def refusal(self, app: str | None) -> str | None:
        """The answer refusing a request for ``app`` (APNs topic, FCM
        project), or None: accept it."""
        per_app = self.faults.reject_topics if self.gateway == "apns" else self.faults.reject_projects
        return per_app.get(app or "") or self.faults.reject_all

    def connection_faults(self) -> ConnectionFaults:
        f = self.faults
        return ConnectionFaults(goaway_after=f.goaway_after, drop_after=f.drop_after, refuse=f.refuse_connections)

    def retry_after_headers(self) -> list[tuple[str, str]]:
        if self.faults.retry_after_s is None:
            return []
        return [("retry-after", str(self.faults.retry_after_s))]


class Counters:
    """What a fake received: pushes accepted per token and per app (APNs
    topic, FCM project) with the tokens each app sent to, rejections per
    reason."""

    def __init__(self) -> None:
        self.accepted: Counter[str] = Counter()
        self.accepted_by_app: Counter[str] = Counter()
        self.tokens_by_app: defaultdict[str, set[str]] = defaultdict(set)
        self.rejected: Counter[str] = Counter()
        self.requests = 0

    def accept(self, token: str, app: str) -> None:
        self.accepted[token] += 1
        self.accepted_by_app[app] += 1
        self.tokens_by_app[app].add(token)

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "accepted_total": sum(self.accepted.values()),
            "accepted_tokens": len(self.accepted),
            "duplicates": sum(n - 1 for n in self.accepted.values() if n > 1),
            "rejected": dict(self.rejected),
        }
