"""A notification as editors and backends describe it, and its gateway bodies."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

APNS_MAX_BYTES = 4096
FCM_MAX_BYTES = 4096
RESERVED_DATA_KEYS = {"from", "gcm", "message_type", "collapse_key", "aps"}


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(..., min_length=1, max_length=256)
    body: str = Field("", max_length=2048)
    # Handed to the app as is; FCM allows strings only.
    data: dict[str, str] = Field(default_factory=dict)
    image: str | None = Field(None, max_length=1024)
    sound: str | None = Field("default", max_length=64)

    @model_validator(mode="after")
    def _fits_the_gateways(self) -> Message:
        for key in self.data:
            if key in RESERVED_DATA_KEYS or key.startswith("google"):
                raise ValueError(f"data key {key!r} is reserved by the gateways")
        apns = len(json.dumps(apns_payload(self), separators=(",", ":")).encode())
        if apns > APNS_MAX_BYTES:
            raise ValueError(f"the APNs payload would be {apns} bytes; APNs takes at most {APNS_MAX_BYTES}")
        # FCM's limit is on the payload (notification and data): the token and
        # delivery options added at send time do not count.
        fcm = len(json.dumps(fcm_message(self), separators=(",", ":")).encode())
        if fcm > FCM_MAX_BYTES:
            raise ValueError(f"the FCM payload would be {fcm} bytes; FCM takes at most {FCM_MAX_BYTES}")
        return self


def apns_payload(message: Message) -> dict[str, Any]:
    alert: dict[str, Any] = {"title": message.title, "body": message.body}
    aps: dict[str, Any] = {"alert": alert}
    if message.sound:
        aps["sound"] = message.sound
    if message.image:
        aps["mutable-content"] = 1
    return {"aps": aps, **message.data, **({"image": message.image} if message.image else {})}


def fcm_message(message: Message) -> dict[str, Any]:
    notification: dict[str, Any] = {"title": message.title, "body": message.body}
    if message.image:
        notification["image"] = message.image
    out: dict[str, Any] = {"notification": notification}
    if message.data:
        out["data"] = dict(message.data)
    return out
