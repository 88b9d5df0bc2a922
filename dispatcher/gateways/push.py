"""What a sender sends and what it concludes: one model for both gateways."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple


class Push(NamedTuple):
    """One push to one device.

    ``body`` is the gateway's own body, encoded once per message (see
    ``encode``): for APNs the JSON with ``aps``; for FCM the ``message``
    object without ``token`` and ``android`` (the sender adds them). A
    tuple: one is made per push, and a frozen dataclass costs several times
    as much to make.
    """

    token: str
    body: bytes
    # Seconds the push stays worth delivering; None: the gateway's default.
    ttl_s: int | None = None
    collapse_key: str | None = None
    priority: Literal["high", "normal"] = "high"
    # APNs only.
    push_type: str = "alert"
    topic: str | None = None
    push_id: str | None = None


class Verdict(enum.StrEnum):
    DELIVERED = "delivered"
    DEAD_TOKEN = "dead_token"  # remove the device
    TEMPORARY = "temporary"  # retry later, with backoff
    PERMANENT = "permanent"  # dead letter; the device stays
    # Our credentials or settings are wrong (auth, certificate, topic,
    # project): pause that app's gateway, keep the task and the device.
    CONFIG = "config"


def encode(payload: Any) -> bytes:
    """A gateway body as the senders take it: compact JSON, UTF-8."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    # HTTP status, or None when no answer came (timeout, lost connection).
    status: int | None
    # APNs reason, FCM errorCode, or what went wrong on the way.
    reason: str
    # The gateway's Retry-After, or the least delay its rules ask for.
    retry_after_s: float | None = None

    @property
    def delivered(self) -> bool:
        return self.verdict is Verdict.DELIVERED


def no_answer(reason: str) -> Outcome:
    """Timeouts and lost connections: the push may or may not have arrived."""
    return Outcome(Verdict.TEMPORARY, None, reason)
