"""The APNs sender against the fake APNs, over real TLS and HTTP/2 sockets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest

from dispatcher.core.config import ApnsSettings
from dispatcher.core.errors import ConfigError
from dispatcher.fakes.apns import REASON_STATUS
from dispatcher.fakes.faults import Faults
from dispatcher.fakes.gateways import FakeGateways
from dispatcher.gateways.apns import ApnsSender
from dispatcher.gateways.push import Push, Verdict, encode
from dispatcher.gateways.verdicts import APNS
from tests.conftest import apns_settings_for, apns_token

ALERT = {"aps": {"alert": {"title": "Breaking", "body": "News"}}}


@pytest.fixture
async def sender(gateways: FakeGateways) -> AsyncIterator[ApnsSender]:
    s = ApnsSender(apns_settings_for(gateways))
    try:
        yield s
    finally:
        await s.close()


def push(n: int, **kw: object) -> Push:
    return Push(apns_token(n), encode(ALERT), **kw)  # type: ignore[arg-type]


async def test_delivered_with_every_option(sender: ApnsSender, gateways: FakeGateways) -> None:
    outcome = await sender.send(push(1, ttl_s=3600, collapse_key="story-42", priority="normal",
                                     push_id="123e4567-e89b-12d3-a456-426614174000"))
    assert outcome.verdict is Verdict.DELIVERED and outcome.status == 200
    assert gateways.apns.counters.accepted[apns_token(1)] == 1


@pytest.mark.parametrize("reason", sorted(REASON_STATUS))
async def test_every_apple_reason_gets_its_verdict(sender: ApnsSender, gateways: FakeGateways, reason: str) -> None:
    gateways.apns.faults.set(Faults(answers={apns_token(7): reason}))
    outcome = await sender.send(push(7))
    if reason == "ExpiredProviderToken":
        # A new token and one resend; still expired after that refresh, the
        # key itself is at fault: our configuration, not the device.
        assert sender.provider is not None and sender.provider.minted == 2
        assert (outcome.reason, outcome.verdict) == ("ExpiredProviderToken", Verdict.CONFIG)
        return
    assert (outcome.status, outcome.reason) == (REASON_STATUS[reason], reason)
    assert outcome.verdict is APNS[(REASON_STATUS[reason], reason)]


@pytest.mark.parametrize(
    ("kwargs", "reason", "verdict"),
    [
        ({"token": "not-a-token"}, "BadDeviceToken", Verdict.DEAD_TOKEN),
        ({"body": encode({"aps": {"alert": "x" * 5000}})}, "PayloadTooLarge", Verdict.PERMANENT),
        ({"body": encode({"no_aps": 1})}, "PayloadEmpty", Verdict.PERMANENT),
        ({"collapse_key": "c" * 65}, "BadCollapseId", Verdict.PERMANENT),
        ({"push_type": "background"}, "BadPriority", Verdict.PERMANENT),  # background needs priority 5
        ({"topic": "com.other.app"}, "TopicDisallowed", Verdict.CONFIG),
        ({"push_id": "not-a-uuid"}, "BadMessageId", Verdict.PERMANENT),
    ],
)
async def test_the_fake_checks_requests_as_apple_does(
    sender: ApnsSender, kwargs: dict[str, object], reason: str, verdict: Verdict
) -> None:
    fields: dict[str, object] = {"token": apns_token(3), "body": encode(ALERT), **kwargs}
    outcome = await sender.send(Push(**fields))  # type: ignore[arg-type]
    assert (outcome.reason, outcome.verdict) == (reason, verdict)


async def test_bad_token_reasons_can_keep_the_device(gateways: FakeGateways) -> None:
    sender = ApnsSender(apns_settings_for(gateways, bad_token_removes=False))
    try:
        outcome = await sender.send(Push("zz", encode(ALERT)))
    finally:
        await sender.close()
    assert (outcome.reason, outcome.verdict) == ("BadDeviceToken", Verdict.PERMANENT)


async def test_dead_tokens_get_410_with_timestamp(sender: ApnsSender, gateways: FakeGateways) -> None:
    gateways.apns.faults.set(Faults(dead_share=0.5, seed=1))
    outcomes = await asyncio.gather(*(sender.send(push(i)) for i in range(200)))
    dead = [o for o in outcomes if o.verdict is Verdict.DEAD_TOKEN]
    assert 60 < len(dead) < 140 and all(o.status == 410 and o.reason == "Unregistered" for o in dead)
    assert len(gateways.apns.counters.accepted) == 200 - len(dead)
    # A dead token stays dead.
    again = await asyncio.gather(*(sender.send(push(i)) for i in range(200)))
    assert [o.verdict for o in again] == [o.verdict for o in outcomes]


async def test_long_run_of_dead_tokens_over_one_connection(gateways: FakeGateways) -> None:
    """3,000 error bodies are well past the 64 KiB window aioapns never gives back."""
    gateways.apns.faults.set(Faults(dead_share=1.0))
    sender = ApnsSender(apns_settings_for(gateways, connections=1, in_flight=200))
    try:
        outcomes = await asyncio.gather(*(sender.send(push(i)) for i in range(3000)))
    finally:
        await sender.close()
    assert {o.verdict for o in outcomes} == {Verdict.DEAD_TOKEN}
    assert gateways.apns.counters.requests == 3000, "one connection, nothing sent twice"


async def test_bare_aioapns_loses_its_connection_on_the_same_run(gateways: FakeGateways) -> None:
    """The fake's flow control is real: aioapns, which never acknowledges
    error bodies, runs out of window, a body comes split, the connection dies
    and aioapns resends what was in flight (ours, above, sends 3,000 once)."""
    from aioapns import NotificationRequest

    from bench.peers import bare_aioapns

    gateways.apns.faults.set(Faults(dead_share=1.0))
    client = bare_aioapns(apns_settings_for(gateways, connections=1))

    async def one(i: int) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await client.send_notification(NotificationRequest(device_token=apns_token(i), message=ALERT))

    try:
        await asyncio.gather(*(one(i) for i in range(2000)))
    finally:
        client.pool.close()
    assert gateways.apns.counters.requests > 2000, "connections died and requests were sent again"


async def test_429_burst_then_delivered(sender: ApnsSender, gateways: FakeGateways) -> None:
    gateways.apns.faults.set(Faults(throttle_first=5, retry_after_s=7))
    outcomes = [await sender.send(push(i)) for i in range(8)]
    assert [o.verdict for o in outcomes[:5]] == [Verdict.TEMPORARY] * 5
    assert all(o.status == 429 and o.reason == "TooManyRequests" for o in outcomes[:5])
    assert [o.verdict for o in outcomes[5:]] == [Verdict.DELIVERED] * 3


@pytest.mark.parametrize(("status", "reason"), [(500, "InternalServerError"), (503, "ServiceUnavailable")])
async def test_5xx_is_temporary(sender: ApnsSender, gateways: FakeGateways, status: int, reason: str) -> None:
    gateways.apns.faults.set(Faults(error_first=2, error_status=status))
    outcomes = [await sender.send(push(i)) for i in range(3)]
    assert [(o.status, o.reason, o.verdict) for o in outcomes[:2]] == [(status, reason, Verdict.TEMPORARY)] * 2
    assert outcomes[2].delivered


async def test_slow_answer_times_out_and_the_sender_goes_on(gateways: FakeGateways) -> None:
    sender = ApnsSender(apns_settings_for(gateways, request_timeout_s=0.3))
    try:
        gateways.apns.faults.set(Faults(slow_share=1.0, slow_s=1.0))
        slow = await sender.send(push(1))
        gateways.apns.faults.set(Faults())
        fast = await sender.send(push(2))
    finally:
        await sender.close()
    assert (slow.verdict, slow.status, slow.reason) == (Verdict.TEMPORARY, None, "timeout")
    assert fast.delivered


async def test_dropped_connection_is_temporary_and_the_sender_reconnects(gateways: FakeGateways) -> None:
    # One connection: the fault counts requests per connection.
    sender = ApnsSender(apns_settings_for(gateways, connections=1))
    try:
        gateways.apns.faults.set(Faults(drop_after=3))
        outcomes = [await sender.send(push(i)) for i in range(6)]
        assert gateways.apns.server.dropped >= 1
        assert all(o.verdict in (Verdict.DELIVERED, Verdict.TEMPORARY) for o in outcomes)
        gateways.apns.faults.set(Faults())
        assert (await sender.send(push(99))).delivered
    finally:
        await sender.close()


async def test_goaway_resends_elsewhere_with_few_duplicates(gateways: FakeGateways) -> None:
    gateways.apns.faults.set(Faults(goaway_after=100))
    sender = ApnsSender(apns_settings_for(gateways, connections=2, in_flight=50))
    try:
        outcomes = await asyncio.gather(*(sender.send(push(i)) for i in range(1000)))
    finally:
        await sender.close()
    delivered = sum(1 for o in outcomes if o.delivered)
    assert gateways.apns.server.goaways >= 5
    assert delivered >= 990, [o for o in outcomes if not o.delivered][:5]
    counts = gateways.apns.counters.accepted
    assert len(counts) >= delivered
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates == 0, "only requests the server did not take are resent"


async def test_connections_each_held_to_the_servers_stream_limit(gateways: FakeGateways) -> None:
    """Apple sets MAX_CONCURRENT_STREAMS per connection: pushes past it wait
    for a stream (a client that opens more commits a protocol error, and
    the connection dies with what it carried). Until the server's SETTINGS
    arrive a client may assume h2's default (100), so the connections are
    opened first, with fewer pushes than that."""
    gateways.apns.server.max_concurrent_streams = 10
    sender = ApnsSender(apns_settings_for(gateways, connections=3, in_flight=300))
    try:
        opened = await asyncio.gather(*(sender.send(push(i)) for i in range(30)))
        gateways.apns.server.peak_streams = 0
        gateways.apns.faults.set(Faults(slow_share=1.0, slow_s=0.2))
        outcomes = await asyncio.gather(*(sender.send(push(i)) for i in range(30, 630)))
    finally:
        await sender.close()
    assert [o.reason for o in opened + outcomes if not o.delivered] == []
    stats = gateways.stats()["apns"]
    assert stats["connections"] == 3 and stats["requests"] == 630, stats
    assert gateways.apns.server.peak_streams == 10


async def test_quickly_expiring_provider_tokens_are_refreshed(gateways: FakeGateways) -> None:
    gateways.apns.faults.set(Faults(token_ttl_s=3))
    sender = ApnsSender(apns_settings_for(gateways, token_refresh_s=1))
    try:
        outcomes = []
        for i in range(12):
            outcomes.append(await sender.send(push(i)))
            await asyncio.sleep(0.35)
    finally:
        await sender.close()
    assert all(o.delivered for o in outcomes), [o for o in outcomes if not o.delivered]
    assert sender.provider is not None and sender.provider.minted >= 3
    assert gateways.apns.counters.rejected.get("TooManyProviderTokenUpdates", 0) == 0


async def test_expired_provider_token_gets_a_new_one_and_one_resend(gateways: FakeGateways) -> None:
    # Tokens minted on hour boundaries are older than the fake's 1 s limit.
    gateways.apns.faults.set(Faults(token_ttl_s=1))
    sender = ApnsSender(apns_settings_for(gateways, token_refresh_s=3600))
    try:
        outcome = await sender.send(push(1))
    finally:
        await sender.close()
    assert outcome.delivered
    assert gateways.apns.counters.rejected["ExpiredProviderToken"] == 1


async def test_all_connections_share_one_provider_token(gateways: FakeGateways) -> None:
    sender = ApnsSender(apns_settings_for(gateways, connections=4, in_flight=400))
    try:
        outcomes = await asyncio.gather(*(sender.send(push(i)) for i in range(2000)))
    finally:
        await sender.close()
    assert all(o.delivered for o in outcomes)
    assert sender.provider is not None and sender.provider.minted == 1


async def test_nodes_sharing_a_key_present_the_same_iat(gateways: FakeGateways) -> None:
    """Each node mints its own provider token; with iat on a period boundary
    every node's token carries the same one, so Apple sees no churn."""
    senders = [ApnsSender(apns_settings_for(gateways, token_refresh_s=600)) for _ in range(2)]
    try:
        iats = [jwt.decode(s.provider.get_header().split()[1], options={"verify_signature": False})["iat"]
                for s in senders if s.provider is not None]
    finally:
        for s in senders:
            await s.close()
    assert len(iats) == 2 and iats[0] == iats[1] and iats[0] % 600 == 0
    assert time.time() - 600 < iats[0] <= time.time()


async def test_wrong_team_id_is_our_configuration_error(gateways: FakeGateways) -> None:
    sender = ApnsSender(apns_settings_for(gateways).model_copy(update={"team_id": "ABCDEFGHIJ"}))
    try:
        outcome = await sender.send(push(1))
    finally:
        await sender.close()
    assert (outcome.status, outcome.reason, outcome.verdict) == (403, "InvalidProviderToken", Verdict.CONFIG)


async def test_certificate_auth(gateways: FakeGateways) -> None:
    c = gateways.credentials
    settings = ApnsSettings(cert_path=c.apns_client_cert_path, topic="com.example.news",
                            endpoint=f"127.0.0.1:{gateways.ports['apns']}", ca_path=c.ca_path)
    sender = ApnsSender(settings)
    try:
        outcome = await sender.send(push(5))
    finally:
        await sender.close()
    assert outcome.delivered and gateways.apns.counters.accepted[apns_token(5)] == 1


async def test_unreachable_gateway_is_temporary(gateways: FakeGateways) -> None:
    settings = apns_settings_for(gateways).model_copy(update={"endpoint": "127.0.0.1:1"})
    sender = ApnsSender(settings)
    try:
        outcome = await sender.send(push(1))
    finally:
        await sender.close()
    assert outcome.verdict is Verdict.TEMPORARY and outcome.status is None


async def test_unreadable_or_wrong_key_is_a_config_error(gateways: FakeGateways, tmp_path: Path) -> None:
    missing = apns_settings_for(gateways).model_copy(update={"key_path": tmp_path / "nope.p8"})
    with pytest.raises(ConfigError, match=r"apns.key_path: cannot read"):
        ApnsSender(missing)
    not_a_key = tmp_path / "AuthKey.p8"
    not_a_key.write_text("hello")
    with pytest.raises(ConfigError, match=r"apns.key_path: .* is not an ES256 .p8 key"):
        ApnsSender(apns_settings_for(gateways).model_copy(update={"key_path": not_a_key}))


@pytest.mark.parametrize("sizes", [(250,), (3000, 20)], ids=["same-size", "mixed-sizes"])
async def test_a_full_window_of_pushes_waits_for_the_servers_flow_control(gateways: FakeGateways,
                                                                          sizes: tuple[int, ...]) -> None:
    """1,000 pushes of ~300 bytes at once are ~300 KiB, past the 64 KiB a
    new HTTP/2 connection may send before the server grants more: the
    sender waits for the window instead of failing the pushes past it. With
    big and small pushes mixed, small ones go while big ones wait: streams
    must still open in the order of their ids."""
    sender = ApnsSender(apns_settings_for(gateways, connections=1, in_flight=1000))
    payloads = [encode({"aps": {"alert": {"title": "t", "body": "b" * size}}}) for size in sizes]
    gateways.apns.faults.set(Faults(slow_share=1.0, slow_s=0.5))  # all 1,000 on the wire at once
    try:
        outcomes = await asyncio.gather(*(sender.send(Push(apns_token(i), payloads[i % len(payloads)]))
                                          for i in range(1000)))
    finally:
        await sender.close()
    assert [o.reason for o in outcomes if not o.delivered] == []
    assert gateways.stats()["apns"]["connections"] == 1
