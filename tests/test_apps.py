"""Apps: which sender, topic and gate each app and platform gets, built from
real (fake) key material. Nothing is dialled, so no gateway runs here."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from dispatcher.core.backoff import Backoff
from dispatcher.core.config import AppSettings, DispatchSettings
from dispatcher.core.errors import ConfigError
from dispatcher.fakes.credentials import FakeCredentials, make_credentials
from dispatcher.work.apps import Apps

Build = Callable[[dict[str, AppSettings]], Apps]


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> FakeCredentials:
    # RSA key generation is slow: one set of keys for the module.
    return make_credentials(tmp_path_factory.mktemp("creds"))


@pytest.fixture
async def build() -> AsyncIterator[Build]:
    """Builds Apps (inside the loop, as the service does) and closes them all."""
    made: list[Apps] = []

    def _build(apps: dict[str, AppSettings]) -> Apps:
        made.append(Apps(apps, DispatchSettings(), Backoff(rng=random.Random(0))))
        return made[-1]

    yield _build
    for apps in made:
        await apps.close()


async def test_token_apps_share_one_sender_with_their_own_topics(creds: FakeCredentials, build: Build) -> None:
    apps = build({
        "news": AppSettings(apns=creds.apns_settings(4431, topic="com.example.news", in_flight=300)),
        "horoscope": AppSettings(apns=creds.apns_settings(4431, topic="com.example.horoscope", in_flight=300)),
    })
    news, horoscope = apps.route("news", "ios"), apps.route("horoscope", "ios")
    assert news is not None and horoscope is not None
    # A provider token serves every topic of its team: one set of connections.
    assert news.sender is horoscope.sender
    assert (news.topic, horoscope.topic) == ("com.example.news", "com.example.horoscope")
    # ... but each app pauses on its own.
    assert news.gate is not horoscope.gate and (news.gate.app, horoscope.gate.app) == ("news", "horoscope")
    assert apps.window("ios") == 300  # the shared sender counted once


async def test_other_settings_get_their_own_senders(creds: FakeCredentials, build: Build) -> None:
    apps = build({
        "news": AppSettings(apns=creds.apns_settings(4431, in_flight=100),
                            fcm=creds.fcm_settings(4432, project="fake-news", in_flight=10)),
        "sport": AppSettings(apns=creds.apns_settings(4433, topic="com.example.sport", in_flight=200)),
        "weather": AppSettings(apns=creds.apns_settings(4431, topic="com.example.weather", in_flight=100)),
        "horoscope": AppSettings(fcm=creds.fcm_settings(4432, project="fake-horoscope", in_flight=20)),
    })
    ios = {name: apps.route(name, "ios") for name in ("news", "sport", "weather")}
    senders = {name: r.sender for name, r in ios.items() if r is not None}
    assert senders["news"] is senders["weather"]  # same key and endpoint
    assert senders["sport"] is not senders["news"]  # another endpoint
    assert apps.window("ios") == 100 + 200
    news_fcm, horoscope_fcm = apps.route("news", "android"), apps.route("horoscope", "android")
    assert news_fcm is not None and horoscope_fcm is not None
    assert news_fcm.sender is not horoscope_fcm.sender  # each FCM project its own
    assert news_fcm.topic is None
    assert apps.window("android") == 10 + 20


async def test_certificate_apps_never_share(creds: FakeCredentials, build: Build) -> None:
    def cert(topic: str) -> AppSettings:
        return AppSettings(apns={"cert_path": creds.apns_client_cert_path, "topic": topic,
                                 "endpoint": "127.0.0.1:4431", "ca_path": creds.ca_path, "in_flight": 5})

    apps = build({"a": cert("com.example.a"), "b": cert("com.example.b")})
    a, b = apps.route("a", "ios"), apps.route("b", "ios")
    assert a is not None and b is not None
    assert a.sender is not b.sender and apps.window("ios") == 10


async def test_routes_by_app_and_sole_app(creds: FakeCredentials, build: Build) -> None:
    apps = build({
        "news": AppSettings(apns=creds.apns_settings(4431), fcm=creds.fcm_settings(4432)),
        "horoscope": AppSettings(apns=creds.apns_settings(4431, topic="com.example.horoscope")),
    })
    route = apps.route("news", "android")
    assert route is not None and (route.app, route.platform) == ("news", "android")
    assert apps.route("nope", "ios") is None
    assert apps.route("horoscope", "android") is None  # no FCM credentials
    assert apps.by_app() == {"news": {"ios", "android"}, "horoscope": {"ios"}}
    assert apps.platforms() == {"ios", "android"}
    assert apps.sole_app("android") == "news"
    assert apps.sole_app("ios") is None  # two send to it
    assert [g.app for g in apps.gates("android")] == ["news"]
    only_fcm = build({"news": AppSettings(fcm=creds.fcm_settings(4432))})
    assert only_fcm.sole_app("ios") is None and only_fcm.window("ios") == 0


async def test_nothing_is_dialled_at_construction(creds: FakeCredentials, build: Build) -> None:
    with socket.socket() as apns, socket.socket() as fcm:
        for listener in (apns, fcm):
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            listener.setblocking(False)
        apps = build({"news": AppSettings(apns=creds.apns_settings(apns.getsockname()[1]),
                                          fcm=creds.fcm_settings(fcm.getsockname()[1]))})
        for _ in range(20):  # give any task it started a chance to connect
            await asyncio.sleep(0)
        for listener in (apns, fcm):
            with pytest.raises(BlockingIOError):
                listener.accept()
    assert apps.route("news", "ios") is not None and apps.route("news", "android") is not None


def _garbage_p8(creds: FakeCredentials, d: Path) -> AppSettings:
    (d / "AuthKey.p8").write_text("not a key\n")
    return AppSettings(apns=creds.apns_settings(4431, key_path=d / "AuthKey.p8"))


def _binary_p8(creds: FakeCredentials, d: Path) -> AppSettings:
    # A key saved as DER, or any file that is not text.
    (d / "AuthKey.p8").write_bytes(b"\x30\x81\x87\x02\x01\x00\xff\xfe")
    return AppSettings(apns=creds.apns_settings(4431, key_path=d / "AuthKey.p8"))


def _missing_p8(creds: FakeCredentials, d: Path) -> AppSettings:
    return AppSettings(apns=creds.apns_settings(4431, key_path=d / "missing.p8"))


def _garbage_cert(creds: FakeCredentials, d: Path) -> AppSettings:
    (d / "cert.pem").write_text("not a certificate\n")
    return AppSettings(apns={"cert_path": d / "cert.pem", "topic": "com.example.news", "endpoint": "127.0.0.1:1"})


def _cert_without_key(creds: FakeCredentials, d: Path) -> AppSettings:
    # The certificate alone: TLS client auth needs its private key too.
    pem = creds.apns_client_cert_path.read_text()
    end = "-----END CERTIFICATE-----"
    start = pem.index("-----BEGIN CERTIFICATE-----")
    (d / "cert.pem").write_text(pem[start:pem.index(end, start)] + end + "\n")
    return AppSettings(apns={"cert_path": d / "cert.pem", "topic": "com.example.news", "endpoint": "127.0.0.1:1"})


def _garbage_apns_ca(creds: FakeCredentials, d: Path) -> AppSettings:
    (d / "ca.pem").write_text("not a certificate\n")
    return AppSettings(apns=creds.apns_settings(4431, ca_path=d / "ca.pem"))


def _missing_fcm_ca(creds: FakeCredentials, d: Path) -> AppSettings:
    return AppSettings(fcm=creds.fcm_settings(4432, ca_path=d / "missing.pem"))


def _garbage_account(creds: FakeCredentials, d: Path) -> AppSettings:
    (d / "account.json").write_text("{not json")
    return AppSettings(fcm=creds.fcm_settings(4432, service_account_path=d / "account.json"))


def _account_not_an_object(creds: FakeCredentials, d: Path) -> AppSettings:
    (d / "account.json").write_text("[]")
    return AppSettings(fcm=creds.fcm_settings(4432, service_account_path=d / "account.json"))


def _account_without_project(creds: FakeCredentials, d: Path) -> AppSettings:
    account = creds.fcm_service_account()
    del account["project_id"]
    (d / "account.json").write_text(json.dumps(account))
    return AppSettings(fcm=creds.fcm_settings(4432, service_account_path=d / "account.json"))


@pytest.mark.parametrize(("make", "setting"), [
    (_garbage_p8, "apns.key_path"),
    (_binary_p8, "apns.key_path"),
    (_missing_p8, "apns.key_path"),
    (_garbage_cert, "apns.cert_path"),
    (_cert_without_key, "apns.cert_path"),
    (_garbage_apns_ca, "apns.ca_path"),
    (_missing_fcm_ca, "fcm.ca_path"),
    (_garbage_account, "fcm.service_account_path"),
    (_account_not_an_object, "fcm.service_account_path"),
    (_account_without_project, "fcm.project_id"),
], ids=lambda v: v.__name__.strip("_") if callable(v) else None)
async def test_credential_that_does_not_load(creds: FakeCredentials, build: Build, tmp_path: Path,
                                              make: Callable[[FakeCredentials, Path], AppSettings],
                                              setting: str) -> None:
    # A good app first: the error still names the one that is wrong.
    good = AppSettings(apns=creds.apns_settings(4431, topic="com.example.good"))
    with pytest.raises(ConfigError) as e:
        build({"good": good, "news": make(creds, tmp_path)})
    assert str(e.value).startswith(f"apps.news.{setting}")


async def test_certificate_without_topic_or_uid(creds: FakeCredentials, build: Build) -> None:
    # trustme's certificate has no UID, so there is no topic to fall back on.
    app = AppSettings(apns={"cert_path": creds.apns_client_cert_path, "endpoint": "127.0.0.1:1"})
    with pytest.raises(ConfigError, match=r"^apps\.news\.apns\.topic: "):
        build({"news": app})
