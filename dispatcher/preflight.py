"""What stops a node from starting, and what ``check-config`` warns about.

Settings (config.py) check each value and how values fit together; this
module judges whether the whole is safe to *run* as a node: credentials for
every app it sends for, API keys, and the combinations an operator
should be told about. ``dispatcher run`` refuses on any refusal;
``dispatcher check-config`` prints both lists.
"""

from __future__ import annotations

import stat
from pathlib import Path

from dispatcher.core.config import DEV_PASSWORD, AppSettings, Settings, is_loopback


def refusals(settings: Settings) -> list[str]:
    """Problems that stop ``dispatcher run``, each naming its setting."""
    s = settings
    out = []
    if s.node.demo and s.node.gateways != "fake":
        out.append('node.demo: demo mode sends to the fake gateways only; set node.gateways = "fake" too '
                   "(`dispatcher run --demo` sets both)")
    if s.node.gateways == "real" and not s.apps:
        out.append("apps: no app is configured, so nothing could be sent; add [apps.<name>.apns] (APNs "
                   "credentials and topic) and/or [apps.<name>.fcm] (an FCM service account) for each app, "
                   'or set node.gateways = "fake" (demos and tests: nothing reaches a phone)')
    if s.api.keys is None and not s.node.demo:
        out.append('api.keys: no API key is configured; add api.keys = [{key = "...", scopes = ["admin"]}, ...] '
                   "(a key is made at start-up only in demo mode, on a loopback api.host)")
    elif s.api.keys is None and not is_loopback(s.api.host):
        out.append(f"api.keys: api.host {s.api.host} is beyond loopback, so demo mode makes no key at start-up; "
                   "set api.keys")
    if s.api.keys is not None:
        values = [k.key.get_secret_value() for k in s.api.keys]
        if len(set(values)) != len(values):
            out.append("api.keys: two entries have the same key")
    return out


def warnings(settings: Settings, config_path: Path | None = None) -> list[str]:
    """Unsafe or surprising combinations that do not stop a node."""
    s = settings
    out = []
    if s.node.gateways == "fake":
        out.append('node.gateways = "fake": every push goes to the fake gateways in this process; none reaches a '
                   "phone")
    if s.node.demo:
        out.append(f"node.demo: demo mode; an empty node gets {s.dispatch.demo_devices} demo devices")
    if not is_loopback(s.api.host):
        out.append(f"api.host {s.api.host}: the API listens beyond loopback over plain HTTP; put TLS in front of it "
                   "(a proxy), and note that /metrics, /healthz and /readyz answer without a key")
    if not is_loopback(s.tarantool.host):
        who = "the other nodes" if s.node.peers else "nothing but this node's dispatcher"
        out.append(f"tarantool.host {s.tarantool.host}: Tarantool's port {s.tarantool.port} listens beyond "
                   f"loopback; firewall it so that only {who} can reach it")
    secrets = [s.tarantool.password.get_secret_value()]
    if s.node.replicator_password is not None:
        if s.node.replicator_password.get_secret_value() in secrets:
            out.append("node.replicator_password is the same as tarantool.password: give each user its own")
        secrets.append(s.node.replicator_password.get_secret_value())
    if s.tarantool.password.get_secret_value() == DEV_PASSWORD:
        out.append("tarantool.password: the built-in development password (allowed on loopback only); set one")
    if s.api.keys is not None:
        for i, k in enumerate(s.api.keys):
            if k.key.get_secret_value() in secrets:
                out.append(f"api.keys[{i}]: the same as a Tarantool password")
            if set(k.scopes) == {"admin", "backend"}:
                out.append(f"api.keys[{i}]: one key with both scopes; give the backend and the admin panel "
                           "a key each")
    if s.node.gateways == "real":
        for name, app in s.apps.items():
            out += _app_warnings(f"apps.{name}", app)
    if config_path is not None:
        out += _file_warnings(config_path)
    return out


def _app_warnings(where: str, app: AppSettings) -> list[str]:
    out = []
    for section, gateway, name in (("apns", app.apns, "APNs"), ("fcm", app.fcm, "FCM")):
        if gateway is not None and gateway.ca_path is not None:
            out.append(f"{where}.{section}.ca_path: {name}'s certificate is checked against {gateway.ca_path}, "
                       "not the system's CAs (meant for a fake or a proxy)")
    if app.apns is not None and app.apns.endpoint not in ("production", "sandbox"):
        out.append(f"{where}.apns.endpoint {app.apns.endpoint}: not Apple's production or sandbox endpoint")
    if app.fcm is not None and app.fcm.endpoint != "https://fcm.googleapis.com":
        out.append(f"{where}.fcm.endpoint {app.fcm.endpoint}: not Google's FCM endpoint")
    for section, field in (("apns", "key_path"), ("apns", "cert_path"), ("fcm", "service_account_path")):
        gateway = getattr(app, section)
        path = getattr(gateway, field, None) if gateway is not None else None
        if path is not None:
            out += _file_warnings(path, f"{where}.{section}.{field}")
    return out


def _file_warnings(path: Path, setting: str | None = None) -> list[str]:
    try:
        mode = path.stat().st_mode
    except OSError:
        return [f"{setting}: cannot read {path}"] if setting else []
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        what = f"{setting} ({path})" if setting else f"config file {path}"
        return [f"{what} is readable by other users (mode {stat.S_IMODE(mode):o}); it holds secrets: chmod 600"]
    return []
