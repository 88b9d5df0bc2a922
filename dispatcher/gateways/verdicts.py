"""Gateway answers as data: one table per gateway from what it said to a
verdict (GATEWAYS.md). The senders look answers up here and nowhere else."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dispatcher.gateways.push import Outcome, Verdict

D, X, T, P, C = Verdict.DELIVERED, Verdict.DEAD_TOKEN, Verdict.TEMPORARY, Verdict.PERMANENT, Verdict.CONFIG

# (status, reason) -> verdict. A reason not listed falls back to its status below.
APNS: Mapping[tuple[int, str], Verdict] = {
    (400, "BadCollapseId"): P,
    (400, "BadDeviceToken"): X,  # see APNS_TOKEN_REASONS
    (400, "BadExpirationDate"): P,
    (400, "BadMessageId"): P,
    (400, "BadPriority"): P,
    (400, "BadTopic"): C,
    (400, "DeviceTokenNotForTopic"): X,  # see APNS_TOKEN_REASONS
    (400, "DuplicateHeaders"): P,
    (400, "IdleTimeout"): T,
    (400, "InvalidPushType"): P,
    (400, "MissingDeviceToken"): P,
    (400, "MissingTopic"): C,
    (400, "PayloadEmpty"): P,
    (400, "TopicDisallowed"): C,
    (403, "BadCertificate"): C,
    (403, "BadCertificateEnvironment"): C,
    # The sender mints a new JWT and resends once first: still expired means
    # our clock or key is wrong.
    (403, "ExpiredProviderToken"): C,
    (403, "Forbidden"): C,
    (403, "InvalidProviderToken"): C,
    (403, "MissingProviderToken"): C,
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

# An FcmError detail's errorCode -> verdict. INVALID_ARGUMENT with that
# detail is about the token; without it, see fcm_outcome.
FCM: Mapping[str, Verdict] = {
    "UNREGISTERED": X,
    "INVALID_ARGUMENT": X,
    "SENDER_ID_MISMATCH": C,  # the token belongs to another project: ours is wrong
    "QUOTA_EXCEEDED": T,
    "UNAVAILABLE": T,
    "INTERNAL": T,
    "THIRD_PARTY_AUTH_ERROR": C,  # the APNs credentials in Firebase
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
    if status in (401, 403):
        return C
    return P


# The answer nearly every push gets, made once.
DELIVERED = Outcome(D, 200, "OK")


def apns_outcome(status: int, reason: str, retry_after_s: float | None, bad_token_removes: bool = True) -> Outcome:
    if status == 200:
        return DELIVERED
    verdict = APNS.get((status, reason)) or by_status(status)
    if reason in APNS_TOKEN_REASONS and not bad_token_removes:
        verdict = P
    return Outcome(verdict, status, reason or ("OK" if verdict is D else str(status)), retry_after_s)


def fcm_outcome(status: int, body: Mapping[str, Any] | None, retry_after_s: float | None) -> Outcome:
    """Reads FCM's error body: the errorCode of an FcmError detail, whether a
    BadRequest detail blames the payload, or an ErrorInfo reason."""
    if status == 200:
        return DELIVERED
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
    if codes:
        verdict = FCM.get(code) or by_status(status)
    elif status in (400, 404):
        # No FcmError about the token: the request itself is wrong for this
        # project (a bare INVALID_ARGUMENT, an unknown project): ours.
        verdict = C
    else:
        verdict = by_status(status)
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
