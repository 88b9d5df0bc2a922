"""The fakes as operators and tests use them: stats and fault endpoints,
the OAuth endpoint's checks, and ``dispatcher fake-gateways``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from pydantic import ValidationError

from dispatcher.core.config import ApnsSettings, FcmSettings
from dispatcher.fakes.apns import REASON_STATUS
from dispatcher.fakes.credentials import FCM_PROJECTS
from dispatcher.fakes.faults import Faults, FaultState
from dispatcher.fakes.fcm import ERROR_CODES, FCM_ERROR
from dispatcher.fakes.gateways import FakeGateways
from dispatcher.gateways.apns import ApnsSender
from dispatcher.gateways.fcm import FcmSender
from dispatcher.gateways.http2 import Answer
from dispatcher.gateways.push import Outcome, Push, Verdict, encode
from tests.conftest import apns_settings_for, apns_token, fcm_settings_for, fcm_token, free_port


async def test_stats_faults_and_reset_over_http(gateways: FakeGateways) -> None:
    base = f"http://127.0.0.1:{gateways.ports['stats']}"
    sender = ApnsSender(apns_settings_for(gateways))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/faults/apns", json={"dead_tokens": [apns_token(2)]}) as r:
                assert r.status == 200
            await sender.send(Push(apns_token(1), encode({"aps": {}})))
            await sender.send(Push(apns_token(2), encode({"aps": {}})))
            async with http.get(f"{base}/stats") as r:
                stats = await r.json()
            assert stats["apns"]["accepted_total"] == 1
            assert stats["apns"]["rejected"] == {"Unregistered": 1}
            async with http.post(f"{base}/faults/apns", json={"dead_share": 2}) as r:
                assert r.status == 400 and "dead_share" in (await r.json())["error"]
            async with http.post(f"{base}/faults/xmpp", json={}) as r:
                assert r.status == 404
            async with http.post(f"{base}/reset") as r:
                assert r.status == 200
            async with http.get(f"{base}/stats") as r:
                assert (await r.json())["apns"]["requests"] == 0
    finally:
        await sender.close()


async def test_oauth_endpoint_refuses_an_assertion_signed_by_another_key(gateways: FakeGateways) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    account = gateways.credentials.fcm_service_account()
    claims = {"iss": account["client_email"], "aud": "https://oauth2.googleapis.com/token", "iat": now,
              "exp": now + 3600, "scope": "https://www.googleapis.com/auth/firebase.messaging"}
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": jwt.encode(claims, other, algorithm="RS256")}
    async with aiohttp.ClientSession() as http:
        ssl_ctx = __import__("ssl").create_default_context(cafile=str(gateways.credentials.ca_path))
        async with http.post(account["token_uri"], data=form, ssl=ssl_ctx) as r:
            assert r.status == 400
            assert (await r.json())["error"] == "invalid_grant"
    assert gateways.fcm.tokens_issued == 0


async def test_fake_gateways_command_serves_both_gateways(tmp_path: Path) -> None:
    """The fakes as `dispatcher fake-gateways` runs them (on uvloop), with
    a push through each."""
    ports = {name: free_port() for name in ("apns", "fcm", "oauth", "stats")}
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"apns": {"dead_tokens": [apns_token(9)]}, "fcm": {}}))
    args = [sys.executable, "-m", "dispatcher", "fake-gateways", "--dir", str(tmp_path / "fakes"),
            "--faults", str(faults)]
    for name, port in ports.items():
        args += [f"--{name}-port", str(port)]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=dict(os.environ))
    try:
        assert proc.stdout is not None
        lines = [(await proc.stdout.readline()).decode() for _ in range(5)]
        assert lines[0].startswith(f"fake APNs:  https://127.0.0.1:{ports['apns']}")
        key_id, team_id = re.search(r"key id (\w+), team id (\w+)", lines[0]).groups()  # type: ignore[union-attr]
        fakes = tmp_path / "fakes"
        ca = Path(lines[3].split()[1])
        apns = ApnsSender(ApnsSettings(key_path=next(fakes.glob("AuthKey_*.p8")), key_id=key_id, team_id=team_id,
                                       topic="com.example.news", endpoint=f"127.0.0.1:{ports['apns']}", ca_path=ca))
        fcm = FcmSender(FcmSettings(service_account_path=fakes / "fcm-service-account.json", ca_path=ca,
                                    endpoint=f"https://127.0.0.1:{ports['fcm']}"))
        try:
            assert (await apns.send(Push(apns_token(1), encode({"aps": {}})))).delivered
            assert (await apns.send(Push(apns_token(9), encode({"aps": {}})))).verdict is Verdict.DEAD_TOKEN
            assert (await fcm.send(Push(fcm_token(1), encode({"data": {"a": "b"}})))).delivered
        finally:
            await apns.close()
            await fcm.close()
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_fake_gateways_for_containers_name_their_host_and_fixed_ids(tmp_path: Path) -> None:
    """As compose runs them: listening on every address, reached by a
    service name that their certificate and OAuth endpoint carry, with APNs
    ids fixed in advance so that nodes' settings can name them."""
    from cryptography import x509

    fakes = FakeGateways(tmp_path / "fakes", host="0.0.0.0", public_host="fakes.internal",
                         apns_ids=("ABCDE12345", "TEAM123456"))
    await fakes.start()
    try:
        cert = x509.load_pem_x509_certificates((tmp_path / "fakes" / "server.pem").read_bytes())[0]
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "fakes.internal" in names.get_values_for_type(x509.DNSName)
        account = json.loads((tmp_path / "fakes" / "fcm-service-account.json").read_text())
        assert account["token_uri"] == f"https://fakes.internal:{fakes.ports['oauth']}/token"
        assert f"https://fakes.internal:{fakes.ports['apns']}" in fakes.describe()
        apns = ApnsSender(ApnsSettings(key_path=tmp_path / "fakes" / "AuthKey_ABCDE12345.p8", key_id="ABCDE12345",
                                       team_id="TEAM123456", topic="com.example.news",
                                       endpoint=f"127.0.0.1:{fakes.ports['apns']}", ca_path=fakes.credentials.ca_path))
        try:
            assert (await apns.send(Push(apns_token(1), encode({"aps": {}})))).delivered
        finally:
            await apns.close()
    finally:
        await fakes.stop()


def test_fake_gateways_bad_apns_id_names_the_option(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "dispatcher", "fake-gateways", "--dir", str(tmp_path),
                          "--apns-key-id", "short"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert "--apns-key-id" in run.stderr and "Traceback" not in run.stderr


def test_fake_gateways_bad_faults_file(tmp_path: Path) -> None:
    faults = tmp_path / "faults.json"
    faults.write_text('{"apns": {"dead_share": "lots"}}')
    run = subprocess.run([sys.executable, "-m", "dispatcher", "fake-gateways", "--faults", str(faults)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert "dead_share" in run.stderr and "Traceback" not in run.stderr


# --- refusals, per-app faults, FCM projects, refused connections ---

async def _send_until_delivered(sender: ApnsSender | FcmSender, push: Push, within_s: float = 10.0) -> bool:
    """Sends until delivered: after a failed connect a sender waits out a
    jittered reconnect delay, failing at once meanwhile."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if (await sender.send(push)).delivered:
            return True
        await asyncio.sleep(0.1)
    return False


def _spy_fcm_bodies(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The raw bodies the fake FCM answered, as the sender read them: the
    Outcome alone cannot show that a body carried no details."""
    bodies: list[dict[str, Any]] = []
    outcome = FcmSender._outcome

    def spy(answer: Answer) -> Outcome:
        bodies.append(json.loads(answer.body) if answer.body else {})  # 2xx bodies go unread
        return outcome(answer)

    monkeypatch.setattr(FcmSender, "_outcome", staticmethod(spy))
    return bodies


async def test_apns_reject_all_answers_that_reason_and_status(gateways: FakeGateways) -> None:
    sender = ApnsSender(apns_settings_for(gateways))
    try:
        for reason in ("BadCertificateEnvironment", "TopicDisallowed", "Shutdown"):
            gateways.apns.faults.set(Faults(reject_all=reason))
            outcome = await sender.send(Push(apns_token(1), encode({"aps": {}})))
            assert (outcome.status, outcome.reason) == (REASON_STATUS[reason], reason)
        assert gateways.stats()["apns"]["accepted_total"] == 0
    finally:
        await sender.close()


@pytest.mark.parametrize(("answer", "status", "reason"), [
    ("SENDER_ID_MISMATCH", 403, "SENDER_ID_MISMATCH"),
    ("UNAUTHENTICATED", 401, "UNAUTHENTICATED"),
    ("PERMISSION_DENIED", 403, "PERMISSION_DENIED"),
    ("INVALID_ARGUMENT_BARE", 400, "INVALID_ARGUMENT"),
])
async def test_fcm_reject_all_with_and_without_details(gateways: FakeGateways, monkeypatch: pytest.MonkeyPatch,
                                                       answer: str, status: int, reason: str) -> None:
    bodies = _spy_fcm_bodies(monkeypatch)
    gateways.fcm.faults.set(Faults(reject_all=answer))
    sender = FcmSender(fcm_settings_for(gateways))
    try:
        outcome = await sender.send(Push(fcm_token(1), encode({"data": {"a": "b"}})))
    finally:
        await sender.close()
    assert (outcome.status, outcome.reason, outcome.delivered) == (status, reason, False)
    error = bodies[-1]["error"]
    assert error["code"] == status and error["status"] == ERROR_CODES.get(answer, (status, reason))[1]
    expected = [{"@type": FCM_ERROR, "errorCode": answer}] if answer in ERROR_CODES else []
    assert error["details"] == expected


async def test_apns_reject_topics_refuses_only_that_topic(gateways: FakeGateways) -> None:
    gateways.apns.faults.set(Faults(reject_topics={"com.example.horoscope": "TopicDisallowed"}))
    sender = ApnsSender(apns_settings_for(gateways))
    try:
        refused = await sender.send(Push(apns_token(1), encode({"aps": {}}), topic="com.example.horoscope"))
        accepted = await sender.send(Push(apns_token(2), encode({"aps": {}}), topic="com.example.news"))
    finally:
        await sender.close()
    assert (refused.status, refused.reason) == (400, "TopicDisallowed")
    assert accepted.delivered
    assert dict(gateways.apns.counters.accepted_by_app) == {"com.example.news": 1}
    assert gateways.apns.tokens_by_topic == {"com.example.news": {apns_token(2)}}
    assert gateways.stats()["apns"]["accepted_by_topic"] == {"com.example.news": 1}


async def test_fcm_projects_each_with_its_own_service_account(gateways: FakeGateways,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    bodies = _spy_fcm_bodies(monkeypatch)
    assert set(gateways.credentials.fcm_projects) == set(FCM_PROJECTS) == {"fake-news", "fake-horoscope"}
    news = FcmSender(fcm_settings_for(gateways, project="fake-news"))
    horoscope = FcmSender(fcm_settings_for(gateways, project="fake-horoscope"))
    # fake-news's account sending to fake-horoscope: Google's bare 403.
    crossed = FcmSender(fcm_settings_for(gateways, project="fake-news", project_id="fake-horoscope"))
    push = Push(fcm_token(1), encode({"data": {"a": "b"}}))
    try:
        assert (await news.send(push)).delivered
        assert (await horoscope.send(push)).delivered
        assert (await horoscope.send(Push(fcm_token(2), encode({"data": {"a": "b"}})))).delivered
        outcome = await crossed.send(push)
        assert (outcome.status, outcome.reason) == (403, "PERMISSION_DENIED")
        assert bodies[-1]["error"]["details"] == []
        assert gateways.stats()["fcm"]["accepted_by_project"] == {"fake-news": 1, "fake-horoscope": 2}

        gateways.fcm.faults.set(Faults(reject_projects={"fake-horoscope": "SENDER_ID_MISMATCH"}))
        assert (await news.send(push)).delivered
        outcome = await horoscope.send(push)
        assert (outcome.status, outcome.reason) == (403, "SENDER_ID_MISMATCH")
        assert gateways.stats()["fcm"]["accepted_by_project"] == {"fake-news": 2, "fake-horoscope": 2}
    finally:
        for sender in (news, horoscope, crossed):
            await sender.close()


async def test_refused_connections_are_counted_and_healing_lets_sends_through(gateways: FakeGateways) -> None:
    apns, fcm = ApnsSender(apns_settings_for(gateways)), FcmSender(fcm_settings_for(gateways))
    pushes: dict[str, tuple[ApnsSender | FcmSender, Push]] = {
        "apns": (apns, Push(apns_token(1), encode({"aps": {}}))),
        "fcm": (fcm, Push(fcm_token(1), encode({"data": {}}))),
    }
    try:
        for name, (sender, push) in pushes.items():
            fake = gateways.apns if name == "apns" else gateways.fcm
            fake.faults.set(Faults(refuse_connections=True))
            outcome = await sender.send(push)  # an outcome, not an exception
            assert not outcome.delivered and outcome.status is None, (name, outcome)
            stats = gateways.stats()[name]
            assert stats["refused_connections"] >= 1
            assert stats["connections"] == stats["refused_connections"], (name, stats)
            fake.faults.set(Faults())
            assert await _send_until_delivered(sender, push), name
            stats = gateways.stats()[name]
            assert stats["connections"] > stats["refused_connections"] and stats["accepted_total"] == 1
    finally:
        await apns.close()
        await fcm.close()


async def test_unknown_refusal_answers_are_refused(gateways: FakeGateways) -> None:
    with pytest.raises(ValidationError, match="NoSuchReason"):
        Faults(reject_all="NoSuchReason")
    with pytest.raises(ValidationError, match="reject_topics"):
        Faults(reject_topics={"com.example.news": "SENDER_ID_MISMATCH"})  # an FCM answer for an APNs topic
    # Valid on one gateway or the other, so Faults takes it; the fake it is
    # set on does not.
    with pytest.raises(ValueError, match="reject_all"):
        FaultState(Faults(reject_all="BadTopic"), "fcm")
    base = f"http://127.0.0.1:{gateways.ports['stats']}"
    async with aiohttp.ClientSession() as http:
        for gateway, answer in (("fcm", "BadTopic"), ("apns", "SENDER_ID_MISMATCH")):
            async with http.post(f"{base}/faults/{gateway}", json={"reject_all": answer}) as r:
                assert r.status == 400
                assert f"reject_all: unknown answer '{answer}'" in (await r.json())["error"]
    assert gateways.fcm.faults.faults.reject_all is None and gateways.apns.faults.faults.reject_all is None


async def test_a_refresh_after_expired_provider_token_is_no_token_update_too_many(gateways: FakeGateways) -> None:
    """The fake answers ExpiredProviderToken (a fault); the sender mints a
    fresh token at once and resends: that refresh was asked for, so it is
    not TooManyProviderTokenUpdates, however soon after the last one."""
    expired = apns_token(7)
    gateways.apns.faults.set(Faults(answers={expired: "ExpiredProviderToken"}))
    sender = ApnsSender(apns_settings_for(gateways))
    assert sender.provider is not None
    provider = sender.provider

    def presented_iat() -> int:
        iat: int = jwt.decode(provider.get_header().split()[1], options={"verify_signature": False})["iat"]
        return iat

    async def next_second() -> None:
        # A token minted in the same second as the last has the same iat and
        # is not a refresh at all: wait for the clock so every round tests one.
        await asyncio.sleep(1 - time.time() % 1 + 0.01)

    try:
        for _ in range(4):
            await next_second()
            minted = sender.provider.minted
            outcome = await sender.send(Push(expired, encode({"aps": {}})))
            assert (outcome.status, outcome.reason) == (403, "ExpiredProviderToken")
            assert sender.provider.minted == minted + 1  # it did resend with a fresh token
            # ... which the fake took as the latest, not as one too many.
            assert gateways.apns.latest_iat == presented_iat()
        assert "TooManyProviderTokenUpdates" not in gateways.apns.counters.rejected
        assert gateways.apns.counters.rejected["ExpiredProviderToken"] == 8
        # The rule the exemption is from still holds: the last answer asked
        # for one refresh; a second refresh nobody asked for is one too many.
        for expected in ((200, "OK"), (429, "TooManyProviderTokenUpdates")):
            await next_second()
            sender.provider.force_refresh()
            outcome = await sender.send(Push(apns_token(1), encode({"aps": {}})))
            assert (outcome.status, outcome.reason) == expected
    finally:
        await sender.close()
