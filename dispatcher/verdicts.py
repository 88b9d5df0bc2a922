"""Gateway answers as data: one table per gateway from what it said to a
verdict (GATEWAYS.md). The senders look answers up here and nowhere else."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dispatcher.push import Outcome, Verdict

D, X, T, P = Verdict.DELIVERED, Verdict.DEAD_TOKEN, Verdict.TEMPORARY, Verdict.PERMANENT

# (status, reason) -> verdict. A reason not listed falls back to its status below.
APNS: Mapping[tuple[int, str], Verdict] = {
    (400, "BadCollapseId"): P,
    (400, "BadDeviceToken"): X,  # see APNS_TOKEN_REASONS
    (400, "BadExpirationDate"): P,
    (400, "BadMessageId"): P,
    (400, "BadPriority"): P,
    (400, "BadTopic"): P,
    (400, "DeviceTokenNotForTopic"): X,  # see APNS_TOKEN_REASONS
    (400, "DuplicateHeaders"): P,
    (400, "IdleTimeout"): T,
    (400, "InvalidPushType"): P,
    (400, "MissingDeviceToken"): P,
    (400, "MissingTopic"): P,
    (400, "PayloadEmpty"): P,
    (400, "TopicDisallowed"): P,
    (403, "BadCertificate"): P,
    (403, "BadCertificateEnvironment"): P,
    (403, "ExpiredProviderToken"): T,  # the sender mints a new JWT and resends once
    (403, "Forbidden"): P,
    (403, "InvalidProviderToken"): P,
    (403, "MissingProviderToken"): P,
    (404, "BadPath"): P,
    (405, "MethodNotAllowed"): P,
    (410, "Unregistered"): X,
    (410, "ExpiredToken"): X,
    (413, "PayloadTooLarge"): P,
    (429, "TooManyProviderTokenUpdates"): T,
    (429, "TooManyRequests"): T,
    (500, "InternalServerError"): T,
    (503, "ServiceUnavailable"): T,
    (503, "Shutdown"): T,
}
# Apple warns these two can also mean the wrong environment or topic, so
# whether they remove the device is configurable (apns.bad_token_removes).
APNS_TOKEN_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"})

# errorCode -> verdict; INVALID_ARGUMENT depends on the detail (see fcm_outcome).
FCM: Mapping[str, Verdict] = {
    "UNREGISTERED": X,
    "INVALID_ARGUMENT": X,
    "SENDER_ID_MISMATCH": X,
    "QUOTA_EXCEEDED": T,
    "UNAVAILABLE": T,
    "INTERNAL": T,
    "THIRD_PARTY_AUTH_ERROR": P,
}
# FCM asks for at least a minute before retrying a quota error.
FCM_QUOTA_MIN_DELAY_S = 60.0

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"


def by_status(status: int) -> Verdict:
    if 200 <= status < 300:
        return D
    if status == 410:
        return X
    if status == 429 or status >= 500:
        return T
    return P


def apns_outcome(status: int, reason: str, retry_after_s: float | None, bad_token_removes: bool = True) -> Outcome:
    verdict = APNS.get((status, reason)) or by_status(status)
    if reason in APNS_TOKEN_REASONS and not bad_token_removes:
        verdict = P
    return Outcome(verdict, status, reason or ("OK" if verdict is D else str(status)), retry_after_s)


def fcm_outcome(status: int, body: Mapping[str, Any] | None, retry_after_s: float | None) -> Outcome:
    """Reads FCM's error body: the errorCode of an FcmError detail, whether a
    BadRequest detail blames the payload, or an ErrorInfo reason."""
    if 200 <= status < 300:
        return Outcome(D, status, "OK")
    error = (body or {}).get("error") or {}
    details = error.get("details") or []
    codes = [d.get("errorCode") for d in details if d.get("@type") == FCM_ERROR_TYPE]
    infos = [d.get("reason") for d in details if d.get("@type") == ERROR_INFO_TYPE]
    payload_fault = any(d.get("@type") == BAD_REQUEST_TYPE for d in details)
    code = codes[0] if codes else (infos[0] if infos else error.get("status") or str(status))
    if payload_fault:
        return Outcome(P, status, "BadRequest", None)
    verdict = FCM.get(code) or by_status(status)
    if code == "QUOTA_EXCEEDED":
        retry_after_s = max(retry_after_s or 0.0, FCM_QUOTA_MIN_DELAY_S)
    return Outcome(verdict, status, code, retry_after_s)


def retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (HTTP dates are not sent by either gateway)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
