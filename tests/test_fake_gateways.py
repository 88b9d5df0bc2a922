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

import aiohttp
import jwt

from dispatcher.apns import ApnsSender
from dispatcher.config import ApnsSettings, FcmSettings
from dispatcher.fakes.gateways import FakeGateways
from dispatcher.fcm import FcmSender
from dispatcher.push import Push, Verdict
from tests.conftest import apns_settings_for, apns_token, fcm_token, free_port


async def test_stats_faults_and_reset_over_http(gateways: FakeGateways) -> None:
    base = f"http://127.0.0.1:{gateways.ports['stats']}"
    sender = ApnsSender(apns_settings_for(gateways))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/faults/apns", json={"dead_tokens": [apns_token(2)]}) as r:
                assert r.status == 200
            await sender.send(Push(apns_token(1), {"aps": {}}))
            await sender.send(Push(apns_token(2), {"aps": {}}))
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
            assert (await apns.send(Push(apns_token(1), {"aps": {}}))).delivered
            assert (await apns.send(Push(apns_token(9), {"aps": {}}))).verdict is Verdict.DEAD_TOKEN
            assert (await fcm.send(Push(fcm_token(1), {"data": {"a": "b"}}))).delivered
        finally:
            await apns.close()
            await fcm.close()
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_fake_gateways_bad_faults_file(tmp_path: Path) -> None:
    faults = tmp_path / "faults.json"
    faults.write_text('{"apns": {"dead_share": "lots"}}')
    run = subprocess.run([sys.executable, "-m", "dispatcher", "fake-gateways", "--faults", str(faults)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert "dead_share" in run.stderr and "Traceback" not in run.stderr
