"""What the API takes and what it answers: the rules for each input, and the
pydantic models that both validate requests and make the OpenAPI schemas.

Each rule is written once, as a constant or an annotated type, and used by
the validation and by the document alike. Three rules JSON Schema cannot
state are checked here and written into the schema's descriptions: an APNs
token must be hexadecimal when the body says "ios" (the token is in the
path, the platform in the body), ``send_at`` lies in a window around *now*,
and a message's gateway payloads fit in 4 KB (messages.py).
"""

from __future__ import annotations

import datetime as dt
import re
import time
import zoneinfo
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    WithJsonSchema,
    model_validator,
)

from dispatcher.gateways.messages import Message
from dispatcher.node.records import MAX_ID, MAX_LIMIT

Platform = Literal["ios", "android"]
PLATFORMS: tuple[Platform, ...] = ("ios", "android")

# Device tokens. APNs: the device token's bytes in hex. FCM: registration
# tokens use letters, digits, '-', '_' and ':'. Hex is a subset of FCM's
# alphabet, so ANY_TOKEN is what a token of either platform can look like
# (a path parameter, or a push's `token`, before its platform is known).
APNS_TOKEN = r"^[0-9A-Fa-f]{64,200}$"
FCM_TOKEN = r"^[A-Za-z0-9_:-]{1,4096}$"
ANY_TOKEN = FCM_TOKEN
TOKEN_PATTERNS: dict[str, str] = {"ios": APNS_TOKEN, "android": FCM_TOKEN}
TOKEN_RULES = {
    "ios": "an APNs device token is 64 to 200 hexadecimal characters",
    "android": "an FCM registration token is 1 to 4096 letters, digits, '-', '_' or ':'",
}
MAX_TOPICS = 100
TOPIC = r"^[A-Za-z0-9_.:-]{1,64}$"
# Free text stored and replicated with a device: no control characters
# (C0, DEL, C1), so nothing can break a log line, a header or a console.
PLAIN_TEXT = r"^[^\x00-\x1f\x7f-\x9f]*$"
LOCALE = r"^[A-Za-z0-9_-]{0,35}$"
# APNs sends apns-collapse-id as a header of at most 64 bytes; FCM's
# collapse_key is as short. Visible ASCII only, so characters are bytes.
COLLAPSE_KEY = r"^[!-~]{1,64}$"
LOCAL_TIME = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
# RFC 3339 with seconds and a zone ("Z" or an offset): what `send_at` takes.
DATE_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$"
# Printable ASCII, no space at either end (HTTP trims it away).
IDEMPOTENCY_KEY = r"^[!-~]([ -~]*[!-~])?$"
MAX_IDEMPOTENCY_KEY = 200
BROADCAST_ID = r"^b_[0-9a-f]{24}$"
MAX_TTL_S = 28 * 86400
# A one-off push's ttl_s when none is given (and a re-driven one's).
PUSH_TTL_S = 3600
# A dead letter's reason as a filter: ours stay far shorter (send.py cuts
# an error to 300 characters).
MAX_REASON = 1000
# How far `send_at` may lie from now: a little in the past (clocks differ,
# a retry comes late: such a broadcast starts at once), at most 30 days ahead.
SEND_AT_PAST_S = 3600
SEND_AT_FUTURE_S = 30 * 86400

# What a pattern means, for people: the "problem" of a 400 says this
# rather than the regular expression.
PATTERN_MEANINGS = {
    APNS_TOKEN: TOKEN_RULES["ios"],
    FCM_TOKEN: "letters, digits, '-', '_' or ':', 1 to 4096 of them",
    TOPIC: "1 to 64 letters, digits, '.', '_', ':' or '-'",
    PLAIN_TEXT: "no control characters",
    LOCALE: "up to 35 letters, digits, '_' or '-' (e.g. en_GB)",
    COLLAPSE_KEY: "1 to 64 visible ASCII characters",
    LOCAL_TIME: '"HH:MM", 00:00 to 23:59',
    DATE_TIME: "an RFC 3339 date-time with seconds and a zone, e.g. 2026-11-23T08:00:00Z",
    IDEMPOTENCY_KEY: "printable ASCII, no space at either end",
    BROADCAST_ID: "a broadcast id: b_ and 24 hexadecimal digits",
}


@cache
def time_zones() -> frozenset[str]:
    """IANA zone names this machine knows (read once, on first use)."""
    return frozenset(zoneinfo.available_timezones())


def _known_zone(tz: str) -> str:
    if tz not in time_zones():
        raise ValueError(f"unknown time zone {tz!r} (an IANA name such as 'Europe/Paris')")
    return tz


def _zone_enum(schema: dict[str, Any]) -> None:
    schema["enum"] = sorted(time_zones())


def _json_int(value: Any) -> Any:
    """JSON's integers only: no strings, no booleans; 3.0 is 3 (as JSON
    Schema's "integer" says)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    return value


def _date_time(value: Any) -> Any:
    if not isinstance(value, str) or not re.fullmatch(DATE_TIME, value):
        raise ValueError(PATTERN_MEANINGS[DATE_TIME])
    return value


def _in_send_window(value: dt.datetime) -> dt.datetime:
    now = time.time()
    at = value.timestamp()
    if at < now - SEND_AT_PAST_S:
        raise ValueError(f"more than {SEND_AT_PAST_S // 3600} h in the past")
    if at > now + SEND_AT_FUTURE_S:
        raise ValueError(f"more than {SEND_AT_FUTURE_S // 86400} days ahead")
    return value


def _text(max_length: int, default: Any = ...) -> Any:
    return Field(default, min_length=1, max_length=max_length, pattern=PLAIN_TEXT)


JsonInt = Annotated[int, BeforeValidator(_json_int)]
Topic = Annotated[str, Field(pattern=TOPIC, min_length=1, max_length=64)]
TimeZone = Annotated[str, AfterValidator(_known_zone), Field(json_schema_extra=_zone_enum)]
SEND_AT_RULE = (f"RFC 3339 date-time with a zone; from {SEND_AT_PAST_S // 3600} h in the past (starts at once) "
                f"to {SEND_AT_FUTURE_S // 86400} days ahead. Not with local_time.")
SendAt = Annotated[
    AwareDatetime,
    BeforeValidator(_date_time),
    AfterValidator(_in_send_window),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": DATE_TIME, "description": SEND_AT_RULE}),
]
CollapseKey = Annotated[str, Field(pattern=COLLAPSE_KEY, min_length=1, max_length=64)]


class InvalidFields(Exception):
    """Raised by a model's cross-field check, naming every field involved.
    Not a ValueError on purpose: pydantic would fold it into one error at
    the model's root and lose the names."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {p}" for f, p in problems))
        self.problems = problems


class DeviceIn(BaseModel):
    """A device's registration (the token is in the path)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "description": "The path's token must suit the platform: " + "; ".join(TOKEN_RULES.values()) + ".",
    })

    user_id: str = _text(128)
    platform: Platform
    app: str = _text(64)
    topics: list[Topic] = Field(default_factory=list, max_length=MAX_TOPICS)
    tz: TimeZone = "UTC"
    locale: str = Field("", max_length=35, pattern=LOCALE)


class PushIn(BaseModel):
    """A one-off push to every device of a user, or to one device."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        # Exactly one of the two, given as a string (null counts as absent).
        "oneOf": [{"required": ["user_id"], "properties": {"user_id": {"type": "string"}}},
                  {"required": ["token"], "properties": {"token": {"type": "string"}}}],
    })

    user_id: str | None = _text(128, None)
    token: str | None = Field(None, min_length=1, max_length=4096, pattern=ANY_TOKEN)
    message: Message
    ttl_s: JsonInt = Field(PUSH_TTL_S, ge=1, le=MAX_TTL_S)
    collapse_key: CollapseKey | None = None

    @model_validator(mode="after")
    def _one_target(self) -> PushIn:
        if (self.user_id is None) == (self.token is None):
            problem = "give exactly one of user_id and token"
            raise InvalidFields([("user_id", problem), ("token", problem)])
        return self


class AudienceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app: str = _text(64)
    platform: Platform | None = None
    topics: list[Topic] = Field(default_factory=list, max_length=MAX_TOPICS)


class BroadcastIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        # send_at and local_time exclude each other (null counts as absent).
        "not": {"required": ["send_at", "local_time"],
                "properties": {"send_at": {"type": "string"}, "local_time": {"type": "string"}}},
    })

    message: Message
    audience: AudienceIn
    # When the fan-out starts (absent: now).
    send_at: SendAt | None = None
    # "HH:MM": each device gets the push at that hour in its own time zone.
    local_time: str | None = Field(None, pattern=LOCAL_TIME)
    ttl_s: JsonInt = Field(86400, ge=1, le=MAX_TTL_S)
    collapse_key: CollapseKey | None = None
    strategy: Literal["baton", "cascade"] = "baton"

    @model_validator(mode="after")
    def _one_schedule(self) -> BroadcastIn:
        if self.send_at is not None and self.local_time is not None:
            problem = "give send_at or local_time, not both"
            raise InvalidFields([("send_at", problem), ("local_time", problem)])
        return self


# Bounds ahead of the validator, so that the schema states them (also
# under `| None` and in arrays).
LetterId = Annotated[int, Field(ge=1, lt=MAX_ID), BeforeValidator(_json_int)]
TtlS = Annotated[int, Field(ge=1, le=MAX_TTL_S), BeforeValidator(_json_int)]
_SCOPE_FIELDS = ("ids", "broadcast", "reason", "all")


class DeadLettersIn(BaseModel):
    """Which of this node's dead letters: those of `ids` that match the other
    filters, or every letter of the filters; everything only with
    `all: true`. At most `limit` a call, newest first, from `before` down."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        # At least one names the letters (null counts as absent).
        "anyOf": [{"required": ["ids"], "properties": {"ids": {"type": "array"}}},
                  {"required": ["broadcast"], "properties": {"broadcast": {"type": "string"}}},
                  {"required": ["reason"], "properties": {"reason": {"type": "string"}}},
                  {"required": ["all"], "properties": {"all": {"const": True}}}],
    })

    ids: list[LetterId] | None = Field(None, min_length=1, max_length=MAX_LIMIT,
                                       description="These letters (limit does not apply)")
    broadcast: str | None = Field(None, pattern=BROADCAST_ID, description="The letters of this broadcast")
    reason: str | None = Field(None, min_length=1, max_length=MAX_REASON, description="Those with this reason")
    all: StrictBool | None = Field(None, description="true: every letter, when nothing else names them")
    before: LetterId | None = Field(None, description="Only letters older than this id: a call's next_before")
    limit: JsonInt = Field(MAX_LIMIT, ge=1, le=MAX_LIMIT, description="Letters a call takes at most")

    @model_validator(mode="after")
    def _named(self) -> DeadLettersIn:
        if not (self.ids or self.broadcast or self.reason or self.all):
            problem = "name the letters: ids, broadcast, reason, or all: true"
            raise InvalidFields([(name, problem) for name in _SCOPE_FIELDS])
        return self


class RedriveIn(DeadLettersIn):
    ttl_s: TtlS | None = Field(None, description=(
        f"How long each push may wait from now; default: its broadcast's ttl_s, {PUSH_TTL_S} for a one-off push"))


# --- responses ---

class FieldProblem(BaseModel):
    field: str = Field(description="The field at fault: a body path (message.title), a parameter or a header")
    problem: str


class ErrorOut(BaseModel):
    error: str
    fields: list[FieldProblem] = Field(description="Each field at fault; empty when no one field is")


class DeviceOut(BaseModel):
    token: str
    user_id: str
    platform: Platform
    app: str
    topics: list[str]
    tz: str
    locale: str


class PushOut(BaseModel):
    enqueued: int = Field(description="Pushes queued: one per device reached")


class AudienceOut(BaseModel):
    app: str
    platform: Platform | None = None
    topics: list[str] = Field(default_factory=list)


class ProgressOut(BaseModel):
    """Counters summed over the nodes."""

    targeted: int
    enqueued: int
    delivered: int
    dead_tokens: int
    failed: int
    expired: int
    cancelled: int
    retries: int
    pending: int


class BroadcastOut(BaseModel):
    id: str
    idempotency_key: str
    state: Literal["scheduled", "running", "fanned_out", "done", "cancelled"] = Field(
        description="scheduled, then running (fan-out under way), fanned_out (every push enqueued), done (every "
                    "push settled); or cancelled. Stored as it happens, the same on every node once replicated")
    created: float = Field(description="Epoch seconds")
    finished: float | None = Field(description="Epoch seconds it became done or cancelled")
    audience: AudienceOut
    send_at: str | None
    local_time: str | None
    strategy: Literal["baton", "cascade"]
    progress: ProgressOut


class BroadcastListOut(BaseModel):
    broadcasts: list[BroadcastOut]


class HealthOut(BaseModel):
    ok: bool


class ReadyOut(BaseModel):
    ready: bool
    peers_alive: list[str] | None = Field(None, description="Peers whose Tarantool this node reaches (a cluster)")
    why: str | None = Field(None, description="Why not ready")


class DeadLetterOut(BaseModel):
    id: int = Field(description="Its id on this node")
    created: float = Field(description="Epoch seconds")
    tube: str = Field(description="The send tube it came from: its platform")
    reason: str = Field(description="Why it was given up on: the gateway's reason, or ours")
    broadcast: str | None = Field(description="Its broadcast; null for a one-off push")
    token: str | None = Field(description="The device token; null when its task was malformed")
    app: str | None
    attempt: int | None = Field(description="Retries made before it was given up on")
    redrivable: bool = Field(description="false: a malformed task, which a re-drive leaves as it is")


class DeadLetterListOut(BaseModel):
    dead_letters: list[DeadLetterOut]
    next_before: int | None = Field(description="More below: the next page's `before`; null on the last page")


class RedriveOut(BaseModel):
    redriven: int = Field(description="Pushes put back into their tubes, as fresh tasks")
    unsendable: list[int] = Field(description="Letters left as they are: their task is malformed")
    missing: list[int] = Field(description="Ids not found (or not matching the filters)")
    next_before: int | None = Field(description="More of the scope below: call again with it as `before`")


class PurgeOut(BaseModel):
    purged: int
    missing: list[int] = Field(description="Ids not found (or not matching the filters)")
    next_before: int | None = Field(description="More of the scope below: call again with it as `before`")
