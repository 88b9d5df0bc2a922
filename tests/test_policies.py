"""Verdict tables, the backoff policy and the senders' in-flight slots: pure logic."""

from __future__ import annotations

import asyncio
import random

import pytest

from dispatcher.core.backoff import Backoff
from dispatcher.fakes.apns import REASON_STATUS
from dispatcher.gateways.http2 import Slots
from dispatcher.gateways.push import Verdict
from dispatcher.gateways.verdicts import APNS, apns_outcome, fcm_outcome, retry_after


def test_apns_table_covers_every_documented_reason() -> None:
    assert {reason for _, reason in APNS} == set(REASON_STATUS)
    assert all(APNS[(status, reason)] for reason, status in REASON_STATUS.items())


@pytest.mark.parametrize(
    ("status", "reason", "verdict"),
    [(200, "", Verdict.DELIVERED), (410, "Unregistered", Verdict.DEAD_TOKEN),
     (400, "DeviceTokenNotForTopic", Verdict.DEAD_TOKEN), (400, "BadCollapseId", Verdict.PERMANENT),
     (429, "TooManyRequests", Verdict.TEMPORARY), (503, "Shutdown", Verdict.TEMPORARY),
     (418, "Teapot", Verdict.PERMANENT), (502, "", Verdict.TEMPORARY),
     # Our credentials or settings: the app's gateway pauses.
     *[(status, reason, Verdict.CONFIG) for status, reason in [
         (403, "InvalidProviderToken"), (403, "ExpiredProviderToken"), (403, "Forbidden"),
         (403, "BadCertificate"), (403, "BadCertificateEnvironment"), (400, "BadTopic"),
         (400, "TopicDisallowed"), (400, "MissingTopic"), (403, "SomethingNew")]]],
)
def test_apns_outcomes(status: int, reason: str, verdict: Verdict) -> None:
    assert apns_outcome(status, reason, None).verdict is verdict


def fcm_body(code: str | None = None, bad_request: bool = False, info: str | None = None,
             status: str = "X") -> dict[str, object]:
    details: list[dict[str, object]] = []
    if code:
        details.append({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code})
    if bad_request:
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": []})
    if info:
        details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": info})
    return {"error": {"code": 400, "status": status, "details": details}}


def test_fcm_invalid_argument_depends_on_the_detail() -> None:
    assert fcm_outcome(400, fcm_body("INVALID_ARGUMENT"), None).verdict is Verdict.DEAD_TOKEN
    assert fcm_outcome(400, fcm_body("INVALID_ARGUMENT", bad_request=True), None).verdict is Verdict.PERMANENT
    assert fcm_outcome(400, fcm_body(bad_request=True), None).verdict is Verdict.PERMANENT
    # Without an FcmError about the token, the request is wrong for the project: ours.
    assert fcm_outcome(400, fcm_body(status="INVALID_ARGUMENT"), None).verdict is Verdict.CONFIG
    # (after the sender's one refresh and resend)
    expired = fcm_outcome(401, fcm_body(info="ACCESS_TOKEN_EXPIRED"), None)
    assert (expired.reason, expired.verdict) == ("ACCESS_TOKEN_EXPIRED", Verdict.CONFIG)
    assert fcm_outcome(502, None, None).verdict is Verdict.TEMPORARY
    assert fcm_outcome(429, fcm_body("QUOTA_EXCEEDED"), 5).retry_after_s == 60


@pytest.mark.parametrize(("status", "body"), [
    (403, fcm_body("SENDER_ID_MISMATCH")), (401, fcm_body("THIRD_PARTY_AUTH_ERROR")),
    (401, fcm_body(status="UNAUTHENTICATED")), (403, fcm_body(status="PERMISSION_DENIED")),
    (404, fcm_body(status="NOT_FOUND")),
])
def test_fcm_errors_of_our_own_pause(status: int, body: dict[str, object]) -> None:
    assert fcm_outcome(status, body, None).verdict is Verdict.CONFIG


def test_retry_after_parsing() -> None:
    assert retry_after("30") == 30 and retry_after("1.5") == 1.5
    assert retry_after(None) is None and retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after("-3") is None


def test_backoff_full_jitter_within_the_exponential_ceiling() -> None:
    policy = Backoff(base_s=1, cap_s=30, deadline_s=10_000, rng=random.Random(7))
    for attempt in range(1, 9):
        ceiling = min(30, 2 ** (attempt - 1))
        delays = [policy.delay_s(attempt) for _ in range(500)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling, "spread over the whole range"


def test_backoff_retry_after_wins_jittered_and_capped_and_time_bounds_it() -> None:
    policy = Backoff(base_s=1, cap_s=30, deadline_s=100, retry_after_cap_s=60, rng=random.Random(1))
    waits = [policy.delay_s(5, retry_after_s=42) for _ in range(200)]
    assert all(42 <= w <= 42 * 1.2 for w in waits) and len(set(waits)) > 100, "jittered above Retry-After"
    assert all(60 <= policy.delay_s(1, retry_after_s=3600) <= 72 for _ in range(50)), "capped"
    assert policy.next_delay_s(50, elapsed_s=0) is not None, "no bound on the count"
    assert policy.next_delay_s(1, elapsed_s=99, retry_after_s=5) is None, "past the deadline"
    delay = policy.next_delay_s(2, elapsed_s=10)
    assert delay is not None and 0 <= delay <= 2


async def test_slots_bound_holders_and_serve_waiters_in_order() -> None:
    slots, holding, most, order = Slots(3), 0, 0, []

    async def hold(i: int) -> None:
        nonlocal holding, most
        await slots.acquire()
        order.append(i)
        holding += 1
        most = max(most, holding)
        await asyncio.sleep(0.01)
        holding -= 1
        slots.release()

    await asyncio.gather(*(hold(i) for i in range(10)))
    assert most == 3 and order == list(range(10)) and slots.free == 3


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    slots = Slots(1)
    await slots.acquire()
    waiting = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    slots.release()
    assert slots.free == 1


async def test_a_waiter_cancelled_as_it_is_handed_the_slot_passes_it_on() -> None:
    slots = Slots(1)
    await slots.acquire()
    first = asyncio.create_task(slots.acquire())
    second = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    slots.release()  # hands the slot to `first`, which is cancelled before it runs
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1)  # got the slot `first` gave back
    slots.release()
    assert slots.free == 1
