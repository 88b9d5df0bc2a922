"""The FCM sender against the fake FCM and its OAuth endpoint, over real
TLS, HTTP/2 and HTTP/1.1 sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from dispatcher.fakes.faults import Faults
from dispatcher.fakes.fcm import ERROR_CODES
from dispatcher.fakes.gateways import FakeGateways
from dispatcher.gateways.fcm import FcmSender
from dispatcher.gateways.push import Push, Verdict, encode
from dispatcher.gateways.verdicts import FCM, FCM_QUOTA_MIN_DELAY_S
from tests.conftest import fcm_settings_for, fcm_token

MESSAGE = {"notification": {"title": "Leo", "body": "A good day"}, "data": {"story": "42"}}


@pytest.fixture
async def sender(gateways: FakeGateways) -> AsyncIterator[FcmSender]:
    s = FcmSender(fcm_settings_for(gateways))
    try:
        yield s
    finally:
        await s.close()


def push(n: int, payload: dict[str, object] | None = None, **kw: object) -> Push:
    return Push(fcm_token(n), encode(payload or MESSAGE), **kw)  # type: ignore[arg-type]


async def test_delivered_over_http2_with_ttl_and_collapse_key(sender: FcmSender, gateways: FakeGateways) -> None:
    outcome = await sender.send(push(1, ttl_s=600, collapse_key="horoscope", priority="normal"))
    assert outcome.verdict is Verdict.DELIVERED and outcome.status == 200
    assert gateways.fcm.counters.accepted[fcm_token(1)] == 1
    assert gateways.fcm.tokens_issued == 1
    assert gateways.fcm.server.connections and len(gateways.fcm.server.connections) == 1


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
async def test_every_error_code_gets_its_verdict(sender: FcmSender, gateways: FakeGateways, code: str) -> None:
    gateways.fcm.faults.set(Faults(answers={fcm_token(5): code}))
    outcome = await sender.send(push(5))
    assert (outcome.status, outcome.reason, outcome.verdict) == (ERROR_CODES[code][0], code, FCM[code])


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"data": {"count": 3}}, "value"),  # data values must be strings
        ({"data": {"google.sent_time": "1"}}, "key"),  # reserved key
        ({"data": {"from": "me"}}, "key"),
        ({"android": {"ttl": "one hour"}}, "ttl"),
        ({"notification": {"body": "x" * 5000}}, "message"),  # over 4096 bytes
    ],
)
async def test_payload_faults_are_permanent_not_dead(
    sender: FcmSender, gateways: FakeGateways, payload: dict[str, object], field: str
) -> None:
    outcome = await sender.send(push(2, payload))
    assert (outcome.status, outcome.reason, outcome.verdict) == (400, "BadRequest", Verdict.PERMANENT)


async def test_malformed_token_is_a_dead_token(sender: FcmSender) -> None:
    outcome = await sender.send(Push("short!", encode(MESSAGE)))
    assert (outcome.status, outcome.reason, outcome.verdict) == (400, "INVALID_ARGUMENT", Verdict.DEAD_TOKEN)


async def test_dead_share(sender: FcmSender, gateways: FakeGateways) -> None:
    gateways.fcm.faults.set(Faults(dead_tokens={fcm_token(3)}))
    outcomes = await asyncio.gather(*(sender.send(push(i)) for i in range(10)))
    assert [o.verdict for o in outcomes].count(Verdict.DEAD_TOKEN) == 1
    assert outcomes[3].reason == "UNREGISTERED" and outcomes[3].status == 404


async def test_quota_burst_honours_retry_after_with_a_minute_at_least(
    sender: FcmSender, gateways: FakeGateways
) -> None:
    gateways.fcm.faults.set(Faults(throttle_first=3, retry_after_s=90))
    outcomes = [await sender.send(push(i)) for i in range(5)]
    assert all(o.reason == "QUOTA_EXCEEDED" and o.retry_after_s == 90 for o in outcomes[:3])
    assert all(o.delivered for o in outcomes[3:])
    gateways.fcm.faults.set(Faults(throttle_first=1, retry_after_s=5))
    short = await sender.send(push(9))
    assert short.verdict is Verdict.TEMPORARY and short.retry_after_s == FCM_QUOTA_MIN_DELAY_S


async def test_unavailable_is_temporary_with_retry_after(sender: FcmSender, gateways: FakeGateways) -> None:
    gateways.fcm.faults.set(Faults(error_first=2, error_status=503, retry_after_s=4))
    outcomes = [await sender.send(push(i)) for i in range(3)]
    assert [(o.status, o.reason, o.retry_after_s) for o in outcomes[:2]] == [(503, "UNAVAILABLE", 4.0)] * 2
    assert outcomes[2].delivered


async def test_slow_answer_times_out(gateways: FakeGateways) -> None:
    sender = FcmSender(fcm_settings_for(gateways, request_timeout_s=0.3))
    try:
        gateways.fcm.faults.set(Faults(slow_share=1.0, slow_s=1.0))
        slow = await sender.send(push(1))
        gateways.fcm.faults.set(Faults())
        fast = await sender.send(push(2))
    finally:
        await sender.close()
    assert (slow.verdict, slow.status, slow.reason) == (Verdict.TEMPORARY, None, "timeout")
    assert fast.delivered


async def test_dropped_connection_then_recovery(sender: FcmSender, gateways: FakeGateways) -> None:
    gateways.fcm.faults.set(Faults(drop_after=2))
    outcomes = [await sender.send(push(i)) for i in range(5)]
    assert gateways.fcm.server.dropped >= 1
    assert any(o.verdict is Verdict.TEMPORARY and o.status is None for o in outcomes)
    gateways.fcm.faults.set(Faults())
    assert (await sender.send(push(50))).delivered


async def test_goaway_moves_to_a_new_connection(sender: FcmSender, gateways: FakeGateways) -> None:
    gateways.fcm.faults.set(Faults(goaway_after=20))
    outcomes = [await sender.send(push(i)) for i in range(60)]
    assert gateways.fcm.server.goaways >= 2
    assert sum(1 for o in outcomes if o.delivered) >= 57
    assert all(o.verdict in (Verdict.DELIVERED, Verdict.TEMPORARY) for o in outcomes)


async def test_goaway_under_load_loses_and_repeats_nothing(sender: FcmSender, gateways: FakeGateways) -> None:
    """Streams the server did not take (after GOAWAY's last stream id) are
    resent on a new connection at once; the ones it took are answered on
    the closing one, not sent again."""
    gateways.fcm.faults.set(Faults(goaway_after=100))
    outcomes = await asyncio.gather(*(sender.send(push(i)) for i in range(1000)))
    assert gateways.fcm.server.goaways >= 5
    assert [o.reason for o in outcomes if not o.delivered] == []
    assert len(gateways.fcm.counters.accepted) == 1000 and max(gateways.fcm.counters.accepted.values()) == 1


async def test_oauth_token_refreshed_before_it_expires(gateways: FakeGateways) -> None:
    gateways.fcm.faults.set(Faults(token_ttl_s=2))
    sender = FcmSender(fcm_settings_for(gateways))
    try:
        outcomes = []
        for i in range(10):
            outcomes.append(await sender.send(push(i)))
            await asyncio.sleep(0.4)
    finally:
        await sender.close()
    assert all(o.delivered for o in outcomes)
    assert sender.refreshes >= 2 and gateways.fcm.tokens_issued == sender.refreshes
    assert gateways.fcm.counters.rejected.get("ACCESS_TOKEN_EXPIRED", 0) == 0


async def test_token_expiring_mid_run_is_refreshed_and_the_push_resent(
    sender: FcmSender, gateways: FakeGateways
) -> None:
    assert (await sender.send(push(1))).delivered
    for token in gateways.fcm.access_tokens:  # the gateway now deems every token expired
        gateways.fcm.access_tokens[token] = time.time() - 1
    outcomes = await asyncio.gather(*(sender.send(push(i)) for i in range(2, 12)))
    assert all(o.delivered for o in outcomes)
    assert gateways.fcm.counters.rejected["ACCESS_TOKEN_EXPIRED"] >= 1
    assert gateways.fcm.tokens_issued == 2, "one refresh serves every resend"


async def test_unreachable_oauth_endpoint_is_temporary(gateways: FakeGateways) -> None:
    sender = FcmSender(fcm_settings_for(gateways, token_uri="https://127.0.0.1:1/token"))
    try:
        outcome = await sender.send(push(1))
    finally:
        await sender.close()
    assert outcome.verdict is Verdict.TEMPORARY and outcome.reason.startswith("oauth")


async def test_many_pushes_share_one_connection(sender: FcmSender, gateways: FakeGateways) -> None:
    outcomes = await asyncio.gather(*(sender.send(push(i)) for i in range(500)))
    assert all(o.delivered for o in outcomes)
    assert len(gateways.fcm.counters.accepted) == 500
    assert gateways.fcm.tokens_issued == 1
