"""Settings: one TOML file plus environment overrides, validated once at start-up.

The file is named by ``--config`` or ``DISPATCHER_CONFIG``; every setting can be
overridden by ``DISPATCHER_<SECTION>__<NAME>`` (for example
``DISPATCHER_TARANTOOL__PORT=3302``). With neither, the defaults run a
single local node: its own Tarantool on 127.0.0.1:3301, data in ``./data``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from dispatcher.core.errors import ConfigError

CONFIG_ENV = "DISPATCHER_CONFIG"
# A directory of secret files, one per setting, named as its variable
# (dispatcher_tarantool__password): Docker's and Kubernetes' secrets, or
# what `dispatcher make-secrets` wrote.
SECRETS_ENV = "DISPATCHER_SECRETS_DIR"
DEV_PASSWORD = "dispatcher-dev-password"
MIN_SECRET_CHARS = 12


def _long_enough(value: SecretStr) -> SecretStr:
    # The value itself is never part of the message.
    if len(value.get_secret_value()) < MIN_SECRET_CHARS:
        raise ValueError(f"must be at least {MIN_SECRET_CHARS} characters")
    return value


# A password: at least MIN_SECRET_CHARS characters, masked when printed.
Password = Annotated[SecretStr, AfterValidator(_long_enough)]


class TarantoolSettings(BaseModel):
    """How the dispatcher reaches its node's Tarantool."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(3301, ge=1, le=65535)
    user: str = "dispatcher"
    password: Password = SecretStr(DEV_PASSWORD)
    # How long start-up waits for Tarantool to answer before giving up.
    startup_timeout_s: float = Field(30.0, gt=0)
    connect_timeout_s: float = Field(3.0, gt=0)
    request_timeout_s: float = Field(10.0, gt=0)
    # Pause between reconnect attempts after the connection drops.
    reconnect_interval_s: float = Field(0.5, gt=0)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class NodeSettings(BaseModel):
    """This node, and the Tarantool the dispatcher starts for it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("node1", pattern=r"^[\w.-]+$")
    # Start and stop the node's Tarantool ourselves (the default), or use
    # one that runs as its own service (systemd, a container).
    embedded: bool = True
    data_dir: Path = Path("data")
    memtx_memory_mb: int = Field(256, ge=32)
    tarantool_bin: str = "tarantool"
    # Other nodes' Tarantool addresses; replication is full mesh.
    peers: list[str] = Field(default_factory=list)
    replicator_password: Password | None = None
    # "real": APNs and FCM as each app's [apps.<name>.apns] and
    # [apps.<name>.fcm] say. "fake": the node runs the fake gateways in
    # process and sends every push to them (demos, tests): nothing reaches a
    # phone.
    gateways: Literal["real", "fake"] = "real"
    # Demo mode (`dispatcher run --demo`): fake gateways, demo devices in an
    # empty node, and an API key made at start-up when the API is on loopback.
    demo: bool = False

    @model_validator(mode="after")
    def _peers_need_replicator(self) -> NodeSettings:
        for peer in self.peers:
            host, _, port = peer.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"peers: {peer!r} is not host:port")
        if self.peers and self.replicator_password is None:
            raise ValueError("peers are set, so replicator_password must be set too")
        return self


HOST_PORT = r"^[^\s:]+:\d{1,5}$"


class ClusterNode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[\w.-]+$")
    tarantool: str = Field(..., pattern=HOST_PORT)
    http: str = Field(..., pattern=HOST_PORT)


class ClusterSettings(BaseModel):
    """Every node of the cluster; each node gets the same list and its own
    node.name, and takes its addresses and its peers from the list."""

    model_config = ConfigDict(extra="forbid")

    nodes: list[ClusterNode] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ClusterSettings:
        for what in ("name", "tarantool", "http"):
            values = [getattr(n, what) for n in self.nodes]
            if len(set(values)) != len(values):
                raise ValueError(f"cluster.nodes: two nodes have the same {what}")
        return self


class ApnsSettings(BaseModel):
    """One app's APNs: token auth (the .p8 key file, key id, team id; one key
    serves every app of its team, and apps with the same key and endpoint
    share connections) or certificate auth (a PEM with certificate and key,
    one per app), the app's topic, and where to send."""

    model_config = ConfigDict(extra="forbid")

    key_path: Path | None = None
    key_id: str | None = Field(None, pattern=r"^[A-Z0-9]{10}$")
    team_id: str | None = Field(None, pattern=r"^[A-Z0-9]{10}$")
    cert_path: Path | None = None
    # The app's bundle id; required with token auth (with certificate auth
    # APNs takes the certificate's topic when none is given).
    topic: str | None = Field(None, pattern=r"^[\w.-]+$")
    # "production", "sandbox", or host:port (a fake, a proxy).
    endpoint: str = Field("production", pattern=r"^(production|sandbox|[^\s:]+:\d{1,5})$")
    # A CA file to trust besides the system's (a fake, a TLS-inspecting proxy).
    ca_path: Path | None = None
    connections: int = Field(4, ge=1, le=100)
    in_flight: int = Field(1000, ge=1)
    request_timeout_s: float = Field(10.0, gt=0)
    # Close a connection idle this long (Apple frowns on frequent reconnects).
    idle_timeout_s: float = Field(600.0, gt=0)
    # Provider tokens are minted on boundaries of this period, the same on
    # every node; Apple wants 20 to 60 minutes.
    token_refresh_s: int = Field(50 * 60, ge=1, le=3600)
    # Apple: BadDeviceToken and DeviceTokenNotForTopic can also mean the
    # wrong environment or topic; False keeps such devices.
    bad_token_removes: bool = True

    @model_validator(mode="after")
    def _one_auth(self) -> ApnsSettings:
        token_auth = (self.key_path, self.key_id, self.team_id)
        if self.cert_path is not None and any(v is not None for v in token_auth):
            raise ValueError("apns: set either cert_path or key_path/key_id/team_id, not both")
        if self.cert_path is None and None in token_auth:
            raise ValueError("apns: token auth needs key_path, key_id and team_id (or set cert_path)")
        if self.cert_path is None and not self.topic:
            raise ValueError("apns.topic (the app's bundle id) is required with token auth")
        return self


class FcmSettings(BaseModel):
    """One app's FCM HTTP v1: its project's service-account file, and where
    to send."""

    model_config = ConfigDict(extra="forbid")

    service_account_path: Path
    # Defaults to the service account's project_id.
    project_id: str | None = None
    # HTTPS only: the gateways speak HTTP/2 over TLS.
    endpoint: str = Field("https://fcm.googleapis.com", pattern=r"^https://[^\s/]+$")
    # Overrides the service account's token_uri.
    token_uri: str | None = None
    # A CA file to trust besides the system's (a fake, a TLS-inspecting proxy).
    ca_path: Path | None = None
    connections: int = Field(2, ge=1, le=100)
    in_flight: int = Field(1000, ge=1)
    request_timeout_s: float = Field(10.0, gt=0)
    # Refresh the OAuth token this long before it expires (at most a
    # quarter of its lifetime).
    token_refresh_margin_s: float = Field(300.0, ge=0)


class AppSettings(BaseModel):
    """One app: its credentials for each platform it sends to. A device of
    this app on a platform without credentials is refused at registration."""

    model_config = ConfigDict(extra="forbid")

    apns: ApnsSettings | None = None
    fcm: FcmSettings | None = None

    @model_validator(mode="after")
    def _some_platform(self) -> AppSettings:
        if self.apns is None and self.fcm is None:
            raise ValueError("an app needs [apns] or [fcm] credentials (or both)")
        return self

    @property
    def platforms(self) -> frozenset[str]:
        return frozenset(p for p, creds in (("ios", self.apns), ("android", self.fcm)) if creds is not None)


APP_NAME = r"^[\w.-]{1,64}$"


class ApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: SecretStr = Field(..., min_length=16)
    # "admin": broadcasts; "backend": devices and pushes.
    scopes: list[Literal["admin", "backend"]] = Field(..., min_length=1)


class ApiSettings(BaseModel):
    """The HTTP API."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # Required, except in demo mode on loopback, where a key with both
    # scopes is made at start-up and printed.
    keys: list[ApiKey] | None = None
    # Above this many ready and delayed send tasks, new work gets 429.
    queue_limit: int = Field(2_000_000, ge=1)
    # Above this share of Tarantool's memtx quota in use, new work gets 429
    # (one-off pushes carry their message, so memory fills before the count).
    memory_limit_share: float = Field(0.85, gt=0, le=1)
    retry_after_s: int = Field(30, ge=1)
    # Slow clients are dropped: a request's headers must arrive within
    # header_timeout_s of the connection opening or the previous response
    # (so it also bounds an idle keep-alive), its body within body_timeout_s.
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    # Connections beyond this many are closed as they arrive.
    max_connections: int = Field(1000, ge=1)


class DispatchSettings(BaseModel):
    """Send workers and fan-out."""

    model_config = ConfigDict(extra="forbid")

    # Send tasks taken per request, at most (fewer when fewer slots are free).
    batch: int = Field(200, ge=1, le=5000)
    # Settled tasks go to Tarantool in batches of up to settle_batch, or
    # after settle_interval_s, whichever comes first.
    settle_batch: int = Field(200, ge=1, le=5000)
    settle_interval_s: float = Field(0.05, gt=0, le=5)
    # A taken task comes back to the queue after this long unsettled (the
    # dispatcher stalled or lost it); longer than a send and its settle.
    task_ttr_s: int = Field(120, ge=10)
    fanout_page: int = Field(1000, ge=1, le=10000)
    # Fan-out pauses above this many ready send tasks (delayed ones, such as
    # a local_time broadcast's, do not count).
    high_water: int = Field(200_000, ge=1)
    # A cascade range is cut into at most this many parts at a time.
    cascade_parts: int = Field(64, ge=2, le=1024)
    # The fan-out tasks (batons, cascade parts) of a node down this long are
    # re-issued by a live node.
    baton_silence_s: float = Field(15.0, gt=0)
    # Retention, in the node's Tarantool: days a finished broadcast keeps its
    # fan-out markers, holders and progress rows (its final counters stay
    # with it), a removed device its tombstone, a dead letter itself.
    broadcast_retention_days: int = Field(7, ge=1)
    tombstone_retention_days: int = Field(30, ge=1)
    dead_letter_retention_days: int = Field(30, ge=1)
    # Retries: exponential backoff with full jitter from retry_base_s up to
    # retry_cap_s, for as long as the push's ttl and retry_deadline_s (from
    # its first attempt) allow; a gateway's Retry-After is honoured up to
    # retry_after_cap_s, with jitter.
    retry_base_s: float = Field(1.0, gt=0)
    retry_cap_s: float = Field(300.0, gt=0)
    retry_deadline_s: float = Field(3600.0, gt=0)
    retry_after_cap_s: float = Field(600.0, gt=0)
    # A gateway that fails this many pushes in a row (no answer, 429, 5xx)
    # is paused: no sends but one probe per interval, growing from
    # pause_probe_s to pause_probe_cap_s (jittered), until a probe succeeds.
    # An error in our credentials or settings pauses it at once.
    breaker_failures: int = Field(20, ge=1)
    pause_probe_s: float = Field(5.0, gt=0)
    pause_probe_cap_s: float = Field(60.0, gt=0)
    # Mass-removal guard: a dead-token verdict removes a device only when
    # the same token is found dead again guard_confirm_s later, and only
    # while dead tokens are below guard_share of an app's last
    # guard_min_sends verdicts; above it, the app's gateway pauses (a
    # sandbox/production or topic mix-up looks like that).
    guard_share: float = Field(0.2, gt=0, le=1)
    guard_min_sends: int = Field(1000, ge=1)
    guard_confirm_s: float = Field(60.0, gt=0)
    # Seconds a SIGTERM waits for pushes in flight before giving up.
    drain_timeout_s: float = Field(30.0, gt=0)
    # Demo mode only: demo devices put in when the node has none (0: none).
    demo_devices: int = Field(1000, ge=0)


class Settings(BaseSettings):
    """All settings. Build with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="DISPATCHER_", env_nested_delimiter="__", extra="forbid"
    )

    node: NodeSettings = Field(default_factory=NodeSettings)
    tarantool: TarantoolSettings = Field(default_factory=TarantoolSettings)
    # The apps this node sends for, by name (a device's and an audience's
    # "app"). Required with real gateways; with node.gateways = "fake", none
    # means the demo apps "news" and "horoscope" on both platforms.
    apps: dict[Annotated[str, Field(pattern=APP_NAME)], AppSettings] = Field(default_factory=dict)
    api: ApiSettings = Field(default_factory=ApiSettings)
    dispatch: DispatchSettings = Field(default_factory=DispatchSettings)
    cluster: ClusterSettings | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values come in as init arguments; secret files win over
        # them, and the environment over both.
        secrets_dir = os.environ.get(SECRETS_ENV)
        if not secrets_dir:
            return (env_settings, init_settings)
        secrets = NestedSecretsSettingsSource(file_secret_settings, secrets_dir=secrets_dir,
                                              secrets_nested_delimiter="__", secrets_prefix="DISPATCHER_")
        return (env_settings, secrets, init_settings)

    @model_validator(mode="after")
    def _wire_cluster(self) -> Settings:
        if self.cluster is None:
            return self
        names = [n.name for n in self.cluster.nodes]
        me = next((n for n in self.cluster.nodes if n.name == self.node.name), None)
        if me is None:
            raise ValueError(f"node.name {self.node.name!r} is not one of cluster.nodes ({', '.join(names)})")
        peers = [n.tarantool for n in self.cluster.nodes if n is not me]
        if self.node.peers and self.node.peers != peers:
            raise ValueError("node.peers: leave it out with [cluster]; peers come from cluster.nodes")
        if peers and self.node.replicator_password is None:
            raise ValueError("node.replicator_password must be set for a cluster of several nodes")
        self.node.peers = peers
        host, _, port = me.tarantool.rpartition(":")
        self.tarantool.host, self.tarantool.port = host, int(port)
        host, _, port = me.http.rpartition(":")
        self.api.host, self.api.port = host, int(port)
        return self

    @model_validator(mode="after")
    def _no_dev_password_off_loopback(self) -> Settings:
        if self.tarantool.password.get_secret_value() == DEV_PASSWORD and not is_loopback(
            self.tarantool.host
        ):
            raise ValueError(
                "tarantool.password: the built-in development password is only allowed "
                "when tarantool.host is a loopback address; set a password of your own"
            )
        return self


def to_toml(settings: Settings) -> str:
    """The settings as a config file (secrets in clear; defaults left out), for
    tools and tests that start a node from a file."""
    top: list[str] = []  # keys of the root table come before any [section]
    tables: list[str] = []
    for section, value in settings:
        if isinstance(value, BaseModel):
            values = value.model_dump(exclude_defaults=True, exclude_none=True)
            if values:
                tables.append(f"[{section}]")
                tables += [f"{key} = {_toml_value(v)}" for key, v in values.items()]
        elif value:  # apps: a dict of models
            dumped = {k: v.model_dump(exclude_defaults=True, exclude_none=True) for k, v in value.items()}
            top.append(f"{section} = {_toml_value(dumped)}")
    return "\n".join(top + tables) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple | set):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "settings"
        lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines)


def load_settings(path: Path | str | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Settings:
    """Reads the file (``path``, else ``$DISPATCHER_CONFIG``, else none) and the
    environment, and returns checked settings or raises :class:`ConfigError`
    naming every setting at fault. ``overrides`` (per section) win over the
    file, as command-line flags do; the environment still wins over both."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    values = _read_file(Path(path)) if path is not None else {}
    secrets_dir = os.environ.get(SECRETS_ENV)
    if secrets_dir and not os.access(secrets_dir, os.R_OK | os.X_OK):
        raise ConfigError(f"{SECRETS_ENV}: {secrets_dir} is not a directory this user can read")
    for section, fields in (overrides or {}).items():
        values[section] = {**values.get(section, {}), **fields}
    try:
        return Settings(**values)
    except ValidationError as e:
        source = f" (file {path} and DISPATCHER_* environment)" if path else ""
        raise ConfigError(f"invalid settings{source}: {_describe(e)}") from None
