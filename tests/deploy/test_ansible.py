"""The playbook (ansible/site.yml) run for real: three bare Debian hosts
with systemd (podman containers, host.Containerfile) get Tarantool and the
dispatcher from the roles, a second run changes nothing, a broadcast
reaches every device at the fake gateways, and a fourth host added by one
inventory line joins the cluster and takes part in the next broadcast.

The fake gateways run on this machine, on the podman network's gateway
address, and the nodes are configured for them through the same variables
a site sets for APNs and FCM (credential files and [apps.news])."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.deploy.podman import (
    HOST_CA,
    PREFIX,
    ROOT,
    build,
    cleanup,
    ensure_base_image,
    podman,
    run,
    wait_for,
)

ANSIBLE = ROOT / "ansible"
BIN = Path(sys.executable).parent  # the .venv's: ansible-playbook, ansible-lint, dispatcher
NAME = f"{PREFIX}-ans"
NETWORK = f"{NAME}-net"
HOST_IMAGE = f"localhost/{NAME}-host:latest"
NODES = [f"{NAME}-node{i}" for i in range(1, 5)]
DEVICES = 1000  # half iOS, half Android
ADMIN = "admin-" + secrets.token_urlsafe(18)
BACKEND = "backend-" + secrets.token_urlsafe(18)
APNS_KEY_ID, APNS_TEAM_ID = "ABCDE12345", "TEAM123456"
SECRETS_DIR = "/etc/dispatcher/secrets"
# The containers' addresses are this machine's own network: never through a proxy.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def ansible_env() -> dict[str, str]:
    return {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0"}


# --- the fast checks --------------------------------------------------------

def test_ansible_lint_is_clean() -> None:
    proc = run(str(BIN / "ansible-lint"), "--nocolor", cwd=ANSIBLE, check=False, timeout=300,
               extra_env=ansible_env())
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_playbook_syntax() -> None:
    run(str(BIN / "ansible-playbook"), "--syntax-check", "-i", "inventory/example.yml", "site.yml",
        cwd=ANSIBLE, extra_env=ansible_env())


# --- hosts, fakes, inventory ------------------------------------------------

def start_host(name: str) -> None:
    podman("run", "-d", "--systemd=always", "--network", NETWORK, "--name", name, "--hostname", name,
           HOST_IMAGE, "/sbin/init")

    def booted() -> bool:
        state = podman("exec", name, "systemctl", "is-system-running", check=False).stdout.strip()
        return state in ("running", "degraded")

    wait_for(f"{name}: systemd up", booted, timeout_s=60)


def address_of(name: str) -> str:
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    return podman("inspect", "--format", fmt, name).stdout.strip()


@pytest.fixture(scope="module")
def hosts() -> Iterator[None]:
    cleanup(NAME)
    try:
        ensure_base_image()
        build(HOST_IMAGE, Path(__file__).parent / "host.Containerfile", context=Path(__file__).parent)
        podman("network", "create", NETWORK)
        for name in NODES[:3]:
            start_host(name)
        yield
    finally:
        cleanup(NAME)


@dataclass
class Fakes:
    host: str  # the podman network's gateway: this machine, as the containers see it
    ports: dict[str, int]
    directory: Path

    def stats(self) -> dict[str, Any]:
        with HTTP.open(f"http://{self.host}:{self.ports['stats']}/stats", timeout=5) as r:
            body: dict[str, Any] = json.load(r)
            return body

    def reset(self) -> None:
        request = urllib.request.Request(f"http://{self.host}:{self.ports['stats']}/reset", method="POST")
        HTTP.open(request, timeout=5).close()


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def fakes(hosts: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fakes]:
    """``dispatcher fake-gateways`` on the network's gateway address (the
    bridge exists once a container runs on it)."""
    fmt = "{{range .Subnets}}{{.Gateway}}{{end}}"
    gateway = podman("network", "inspect", "--format", fmt, NETWORK).stdout.strip()
    directory = tmp_path_factory.mktemp("fakes")
    ports = {name: free_port(gateway) for name in ("apns", "fcm", "oauth", "stats")}
    log = (directory.parent / "fakes.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "dispatcher"), "fake-gateways", "--dir", str(directory), "--host", gateway,
         "--public-host", gateway, "--apns-key-id", APNS_KEY_ID, "--apns-team-id", APNS_TEAM_ID,
         *[arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]],
        stdout=log, stderr=subprocess.STDOUT)
    fake = Fakes(gateway, ports, directory)
    try:
        wait_for("fake gateways up", lambda: proc.poll() is None and bool(fake.stats()), timeout_s=30, every_s=0.3)
        yield fake
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def extra_vars(fakes: Fakes) -> dict[str, Any]:
    """What a site keeps in group_vars and its vault, for these fakes."""
    d = fakes.directory
    return {
        "vault_tarantool_password": "tnt-" + secrets.token_urlsafe(18),
        "vault_replicator_password": "repl-" + secrets.token_urlsafe(18),
        "vault_dispatcher_api_keys": [{"key": ADMIN, "scopes": ["admin"]}, {"key": BACKEND, "scopes": ["backend"]}],
        "dispatcher_memtx_memory_mb": 256,
        "dispatcher_secret_files": {
            "fakes-ca.pem": (d / "ca.pem").read_text(),
            f"AuthKey_{APNS_KEY_ID}.p8": (d / f"AuthKey_{APNS_KEY_ID}.p8").read_text(),
            "news-firebase.json": (d / "fcm-service-account.json").read_text(),
        },
        "dispatcher_apps": {"news": {
            "apns": {"key_path": f"{SECRETS_DIR}/AuthKey_{APNS_KEY_ID}.p8", "key_id": APNS_KEY_ID,
                     "team_id": APNS_TEAM_ID, "topic": "com.example.news",
                     "endpoint": f"{fakes.host}:{fakes.ports['apns']}", "ca_path": f"{SECRETS_DIR}/fakes-ca.pem"},
            "fcm": {"service_account_path": f"{SECRETS_DIR}/news-firebase.json",
                    "endpoint": f"https://{fakes.host}:{fakes.ports['fcm']}",
                    "ca_path": f"{SECRETS_DIR}/fakes-ca.pem"},
        }},
        # Pages of 100 devices: every node gets a share of a broadcast of 1,000.
        "dispatcher_dispatch_settings": {"fanout_page": 100, "drain_timeout_s": 10},
        # This machine reaches the package index through a TLS-inspecting proxy.
        "dispatcher_pip_ca_file": str(HOST_CA) if HOST_CA.exists() else "",
    }


def write_inventory(directory: Path, nodes: list[str]) -> Path:
    """The example inventory's shape (and its group_vars), with these hosts,
    reached through podman; the first node also monitors."""
    shutil.copytree(ANSIBLE / "inventory" / "group_vars", directory / "group_vars", dirs_exist_ok=True)
    connection = {"ansible_connection": "containers.podman.podman", "ansible_python_interpreter": "/usr/bin/python3"}
    inventory = {"all": {"children": {
        "dispatcher_nodes": {"vars": connection, "hosts": {name: None for name in nodes}},
        "monitoring": {"hosts": {nodes[0]: None}},
    }}}
    path = directory / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def playbook(inventory: Path, extra: Path, what: str) -> dict[str, dict[str, int]]:
    """Runs site.yml; the recap per host. Fails with the end of the output,
    and when the output shows any of the secrets."""
    start = time.monotonic()
    proc = run(str(BIN / "ansible-playbook"), "-i", str(inventory), "-e", f"@{extra}", "site.yml",
               cwd=ANSIBLE, timeout=900, check=False, extra_env=ansible_env())
    took = time.monotonic() - start
    recap = {m[1]: {"ok": int(m[2]), "changed": int(m[3]), "unreachable": int(m[4]), "failed": int(m[5])}
             for m in RECAP.finditer(proc.stdout)}
    print(f"\nplaybook, {what}: {took:.0f} s; " + ", ".join(f"{h}: changed={r['changed']}" for h, r in recap.items()),
          flush=True)
    assert proc.returncode == 0, f"{what}: exit {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    shown = [name for name, value in secret_values(json.loads(extra.read_text())).items()
             if value in proc.stdout or value in proc.stderr]
    assert not shown, f"{what}: the output shows {shown}"
    return recap


def secret_values(variables: dict[str, Any]) -> dict[str, str]:
    """The secrets among the extra variables, by name: passwords, API keys,
    and a line from the middle of each private key file."""
    values = {"tarantool password": variables["vault_tarantool_password"],
              "replicator password": variables["vault_replicator_password"]}
    values |= {f"API key {i}": k["key"] for i, k in enumerate(variables["vault_dispatcher_api_keys"])}
    for name, content in variables["dispatcher_secret_files"].items():
        if "PRIVATE KEY" in content:
            lines = content.replace("\\n", "\n").splitlines()
            values[name] = lines[len(lines) // 2]
    return values


# --- talking to the nodes ---------------------------------------------------

def apns_token(i: int) -> str:
    return f"{i:064x}"


def fcm_token(i: int) -> str:
    return f"fcm-token-{i:08d}:" + "A" * 120


async def register_devices(api: str, count: int) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {BACKEND}"}) as http:
        limit = asyncio.Semaphore(16)

        async def put(i: int) -> None:
            ios = i % 2 == 0
            body = {"user_id": f"user-{i}", "platform": "ios" if ios else "android", "app": "news",
                    "topics": ["breaking"]}
            async with limit, http.put(f"{api}/v1/devices/{apns_token(i) if ios else fcm_token(i)}", json=body) as r:
                assert r.status in (200, 201), await r.text()

        await asyncio.gather(*(put(i) for i in range(count)))


async def broadcast(api: str, key: str, timeout_s: float) -> dict[str, Any]:
    """Starts a broadcast to every device of 'news' and waits until it is done."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        spec = {"message": {"title": "Deployed", "body": "by ansible"}, "audience": {"app": "news"},
                "strategy": "cascade"}
        async with http.post(f"{api}/v1/broadcasts", json=spec, headers={"Idempotency-Key": key}) as r:
            body = await r.json()
            assert r.status == 200, body
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            async with http.get(f"{api}/v1/broadcasts/{body['id']}") as r:
                body = await r.json()
            if body["state"] in ("done", "cancelled"):
                return body  # type: ignore[no-any-return]
            await asyncio.sleep(0.5)
        raise AssertionError(f"broadcast {key} not done in {timeout_s:.0f} s: {body}")


def metric(api: str, name: str) -> float:
    """The sum of a metric's series on one node."""
    with HTTP.open(f"{api}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def peers_alive(api: str, count: int) -> bool:
    return metric(api, "dispatcher_peers_alive") == count


def console(node: str, lua: str) -> str:
    """One Lua expression on a node's admin console (the unix socket in its
    data directory); Tarantool's YAML answer."""
    proc = run("podman", "exec", "-i", node, "tarantoolctl", "connect", "/var/lib/dispatcher/admin.sock",
               input_=lua + "\n", timeout=30)
    return proc.stdout


def check_files_and_units(node: str) -> None:
    """What the roles promise about the host: a nologin user, private data
    and secrets, systemd's limits, and no Debian example instance."""
    def sh(cmd: str) -> str:
        return podman("exec", node, "sh", "-c", cmd).stdout.strip()

    assert sh("getent passwd dispatcher | cut -d: -f7") == "/usr/sbin/nologin"
    assert sh("stat -c '%U %a' /var/lib/dispatcher") == "dispatcher 700"
    for path in ("/etc/dispatcher/dispatcher.toml", "/etc/dispatcher/tarantool.json",
                 f"{SECRETS_DIR}/AuthKey_{APNS_KEY_ID}.p8"):
        assert sh(f"stat -c '%U %a' {path}") == "dispatcher 600", path
    for unit in ("dispatcher-tarantool", "dispatcher"):
        assert sh(f"systemctl is-active {unit}") == "active"
        assert sh(f"systemctl is-enabled {unit}") == "enabled"
        assert sh(f"systemctl show -p LimitNOFILE --value {unit}") == "65536"
        assert sh(f"systemctl show -p Restart --value {unit}") == "on-failure"
        assert sh(f"systemctl show -p User --value {unit}") == "dispatcher"
    assert sh("systemctl is-enabled tarantool@example.service || true") == "masked"
    assert "embedded = false" in sh("cat /etc/dispatcher/dispatcher.toml")


def a_bad_value_stops_the_play(inventory: Path, extra: Path, node: str) -> None:
    """A value the dispatcher would refuse fails the play, named by
    check-config, before it reaches the node, which keeps running on the
    configuration it has."""
    apps = json.loads(extra.read_text())["dispatcher_apps"]
    apps["news"]["apns"]["key_id"] = "not-an-id"
    bad = extra.with_name("bad-vars.json")
    bad.write_text(json.dumps({"dispatcher_apps": apps}))
    before = podman("exec", node, "sha256sum", "/etc/dispatcher/dispatcher.toml").stdout
    proc = run(str(BIN / "ansible-playbook"), "-i", str(inventory), "-e", f"@{extra}", "-e", f"@{bad}",
               "--limit", node, "site.yml", cwd=ANSIBLE, timeout=300, check=False, extra_env=ansible_env())
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "apps.news.apns.key_id" in proc.stdout, proc.stdout[-3000:]
    assert not any(value in proc.stdout for value in secret_values(json.loads(extra.read_text())).values())
    assert podman("exec", node, "sha256sum", "/etc/dispatcher/dispatcher.toml").stdout == before
    assert podman("exec", node, "systemctl", "is-active", "dispatcher").stdout.strip() == "active"


def check_monitoring(monitor: str, nodes: list[str]) -> None:
    """Prometheus on the monitoring host scrapes every node (its targets are
    up) with the alert rules loaded; Grafana's provisioning is in place."""
    query = ("import json, urllib.request\n"
             "def get(p): return json.load(urllib.request.urlopen('http://127.0.0.1:9090' + p, timeout=5))['data']\n"
             "print(json.dumps({'targets': get('/api/v1/targets')['activeTargets'],"
             " 'groups': get('/api/v1/rules')['groups']}))\n")

    def all_up() -> bool:
        proc = podman("exec", monitor, "python3", "-c", query, check=False)
        if proc.returncode != 0:  # not listening yet
            return False
        out = json.loads(proc.stdout)
        up = {t["labels"].get("node") for t in out["targets"]
              if t["labels"]["job"] == "dispatcher" and t["health"] == "up"}
        return up == set(nodes) and any(g["rules"] for g in out["groups"])

    wait_for("Prometheus scrapes every node", all_up, timeout_s=60, every_s=2)
    listed = podman("exec", monitor, "find", "/etc/grafana/provisioning", "-type", "f").stdout.split()
    assert any(p.endswith(".json") for p in listed) and any("datasources" in p for p in listed), listed


# --- the test ------------------------------------------------------------------

def test_playbook_deploys_a_cluster_that_grows_by_one_line(fakes: Fakes, tmp_path: Path) -> None:
    extra = tmp_path / "extra-vars.json"  # the test's "vault"
    extra.write_text(json.dumps(extra_vars(fakes)))
    extra.chmod(0o600)
    inventory = write_inventory(tmp_path, NODES[:3])

    first = playbook(inventory, extra, "first run, 3 nodes")
    assert set(first) == set(NODES[:3]) and all(r["failed"] == 0 for r in first.values())
    second = playbook(inventory, extra, "second run, nothing to do")
    assert {h: r["changed"] for h, r in second.items()} == {h: 0 for h in NODES[:3]}, "not idempotent"
    for node in NODES[:3]:
        check_files_and_units(node)
    a_bad_value_stops_the_play(inventory, extra, NODES[1])

    apis = {node: f"http://{address_of(node)}:8080" for node in NODES[:3]}
    start = time.monotonic()
    asyncio.run(register_devices(apis[NODES[1]], DEVICES))
    registered = time.monotonic()
    done = asyncio.run(broadcast(apis[NODES[0]], "first", timeout_s=120))
    print(f"{DEVICES} devices registered in {registered - start:.1f} s, broadcast to them on 3 nodes in "
          f"{time.monotonic() - registered:.1f} s: {done['progress']}; fan-out taken over: "
          f"{[metric(api, 'dispatcher_fanout_taken_over_total') for api in apis.values()]}", flush=True)
    assert done["progress"]["delivered"] == DEVICES, done
    stats = fakes.stats()
    assert stats["apns"]["accepted_tokens"] == DEVICES // 2 and stats["fcm"]["accepted_tokens"] == DEVICES // 2, stats
    for node in NODES[:3]:
        assert metric(apis[node], "dispatcher_pushes_total") > 0, f"{node} sent no push"
    check_monitoring(NODES[0], NODES[:3])

    # One more host, one more inventory line.
    start_host(NODES[3])
    apis[NODES[3]] = f"http://{address_of(NODES[3])}:8080"
    inventory = write_inventory(tmp_path, NODES)
    playbook(inventory, extra, "third run, a fourth node added")
    check_files_and_units(NODES[3])
    assert f'"{NODES[3]}"' in podman("exec", NODES[0], "cat", "/etc/dispatcher/dispatcher.toml").stdout
    for api in apis.values():  # the old nodes restarted with the new list
        wait_for(f"{api} reaches its 3 peers", partial(peers_alive, api, 3), timeout_s=30)
    following = ("local n = 0 for _, r in pairs(box.info.replication) do "
                 "if r.upstream ~= nil and r.upstream.status == 'follow' then n = n + 1 end end return n")
    for node in NODES:
        assert "- 3" in console(node, following), f"{node} does not replicate from its 3 peers"
    assert f"- {DEVICES}" in console(NODES[3], "box.space.subscriber:count()"), "devices replicated to node4"

    fakes.reset()
    sent_before = metric(apis[NODES[3]], "dispatcher_pushes_total")
    start = time.monotonic()
    done = asyncio.run(broadcast(apis[NODES[2]], "second", timeout_s=120))
    print(f"broadcast on 4 nodes: {time.monotonic() - start:.1f} s: {done['progress']}", flush=True)
    assert done["progress"]["delivered"] == DEVICES, done
    stats = fakes.stats()
    assert stats["apns"]["accepted_tokens"] + stats["fcm"]["accepted_tokens"] == DEVICES, stats
    assert metric(apis[NODES[3]], "dispatcher_pushes_total") > sent_before, "the new node took no part"
    check_monitoring(NODES[0], NODES)
