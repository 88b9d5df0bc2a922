"""Settings: TOML file, environment overrides, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.core.config import load_settings
from dispatcher.core.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DISPATCHER_CONFIG", "DISPATCHER_TARANTOOL__PORT", "DISPATCHER_NODE__NAME"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dispatcher.toml"
    path.write_text(text)
    return path


def test_defaults_run_a_local_node() -> None:
    s = load_settings()
    assert s.node.embedded and s.node.name == "node1"
    assert s.tarantool.address == "127.0.0.1:3301"


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[node]\nname = "paris-1"\n[tarantool]\nport = 4000\nrequest_timeout_s = 2.5\n')
    monkeypatch.setenv("DISPATCHER_TARANTOOL__PORT", "4001")
    s = load_settings(path)
    assert s.node.name == "paris-1"
    assert s.tarantool.port == 4001, "the environment wins over the file"
    assert s.tarantool.request_timeout_s == 2.5, "the rest of the file's section stays"


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_CONFIG", str(write(tmp_path, '[node]\nname = "from-env"\n')))
    assert load_settings().node.name == "from-env"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tarantool]\nport = 70000\n", r"tarantool.port: Input should be less than or equal to 65535"),
        ("[tarantool]\nprot = 3301\n", r"tarantool.prot: Extra inputs are not permitted"),
        ('[node]\nname = "has space"\n', r"node.name: String should match pattern"),
        ('[node]\npeers = ["10.0.0.2:3301"]\n', r"replicator_password must be set"),
        ('[node]\npeers = ["nonsense"]\nreplicator_password = "x" \n',
         r"replicator_password: Value error, must be at least 12 characters"),
        ('[node]\npeers = ["nonsense"]\nreplicator_password = "replicate-me"\n', r"peers: 'nonsense' is not host:port"),
        ('[tarantool]\npassword = "short-pass1"\n',
         r"tarantool.password: Value error, must be at least 12 characters"),
        ('[tarantool]\nhost = "10.0.0.5"\n', r"tarantool.password: the built-in development password"),
        ("[tarantool\n", r"is not valid TOML"),
        ('[apps.news.apns]\ncert_path = "c.pem"\nkey_path = "k.p8"\n', r"either cert_path or key_path"),
        ('[apps.news.apns]\nkey_path = "k.p8"\nkey_id = "ABCDE12345"\nteam_id = "TEAM123456"\n',
         r"apps.news.apns: .*apns.topic .* required"),
        ('[apps.news.apns]\nkey_path = "k.p8"\nkey_id = "short"\n', r"apps.news.apns.key_id: String should match"),
        ('[apps.news.apns]\ncert_path = "c.pem"\nendpoint = "staging"\n',
         r"apps.news.apns.endpoint: String should match"),
        ('[apps.news.fcm]\nendpoint = "https://fcm.googleapis.com"\n',
         r"apps.news.fcm.service_account_path: Field required"),
        ('[apps.news]\n', r"apps.news: .*an app needs \[apns\] or \[fcm\]"),
        ('[apps."news app".fcm]\nservice_account_path = "sa.json"\n', r"apps.news app.\[key\]: String should match"),
        ('[apns]\ncert_path = "c.pem"\n', r"apns: Extra inputs are not permitted"),
    ],
)
def test_errors_name_the_setting(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope.toml does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_to_toml_round_trip(tmp_path: Path) -> None:
    from pydantic import SecretStr

    from dispatcher.core.config import (
        ApiKey,
        ApiSettings,
        ApnsSettings,
        AppSettings,
        FcmSettings,
        Settings,
        TarantoolSettings,
        to_toml,
    )

    settings = Settings(
        tarantool=TarantoolSettings(port=4100, password=SecretStr("a-secret-password")),
        api=ApiSettings(keys=[ApiKey(key=SecretStr("k" * 20), scopes=["admin", "backend"])]),
        apps={"news": AppSettings(apns=ApnsSettings(cert_path=tmp_path / "c.pem", topic="com.example.news",
                                                    bad_token_removes=False)),
              "horoscope": AppSettings(fcm=FcmSettings(service_account_path=tmp_path / "sa.json"))},
    )
    path = tmp_path / "round.toml"
    path.write_text(to_toml(settings))
    again = load_settings(path)
    assert again.model_dump() == settings.model_dump()
    assert again.tarantool.password.get_secret_value() == "a-secret-password"


CLUSTER = """
[node]
name = "{name}"
replicator_password = "replicate-me"
[cluster]
nodes = [
  {{name = "a", tarantool = "127.0.0.1:3301", http = "127.0.0.1:8081"}},
  {{name = "b", tarantool = "127.0.0.1:3302", http = "127.0.0.1:8082"}},
  {{name = "c", tarantool = "127.0.0.1:3303", http = "127.0.0.1:8083"}},
]
"""


def test_cluster_list_gives_each_node_its_addresses_and_peers(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, CLUSTER.format(name="b")))
    assert s.tarantool.address == "127.0.0.1:3302" and s.api.port == 8082
    assert s.node.peers == ["127.0.0.1:3301", "127.0.0.1:3303"]


def test_cluster_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node.name 'z' is not one of cluster.nodes \(a, b, c\)"):
        load_settings(write(tmp_path, CLUSTER.format(name="z")))
    doubled = CLUSTER.format(name="a").replace("127.0.0.1:3302", "127.0.0.1:3301")
    with pytest.raises(ConfigError, match=r"two nodes have the same tarantool"):
        load_settings(write(tmp_path, doubled))
    no_password = CLUSTER.format(name="a").replace('replicator_password = "replicate-me"\n', "")
    with pytest.raises(ConfigError, match=r"replicator_password must be set"):
        load_settings(write(tmp_path, no_password))
