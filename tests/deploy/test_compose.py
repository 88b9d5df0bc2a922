"""docker/: the image built and docker/compose.yaml run with podman-compose,
unchanged: three nodes, the fake gateways, Prometheus. Broadcasts go out
through node2's API and reach every device at the fakes; one broadcast
survives a node's container killed in its middle, another a node stopped
(SIGTERM drains: nothing sent twice); Prometheus scrapes every node, loads
our rules, and answers every dashboard panel's query with data.

Grafana is not started here (no registry, no package): its provisioning
files are checked for what they name, and the dashboard by its queries."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import yaml

from dispatcher.cluster_up import free_port
from tests.conftest import apns_token, fcm_token
from tests.deploy import podman as pm

PROJECT = f"{pm.PREFIX}-compose"
COMPOSE = pm.ROOT / "docker" / "compose.yaml"
DASHBOARD = pm.ROOT / "docker" / "grafana" / "dashboards" / "dispatcher.json"
PROMETHEUS_IMAGE = f"localhost/{pm.PREFIX}-prometheus:latest"
NODES = ("node1", "node2", "node3")
DEVICES = 3000
SERVICES = ("secrets", "fakes", *NODES, "prometheus")
MESSAGE = {"title": "Deploy test", "body": "Hello", "data": {"story": "1"}}

pytestmark = pytest.mark.timeout(1500)


@dataclass
class Compose:
    env: dict[str, str]
    ports: dict[str, int]
    key: str = ""

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return pm.run("podman-compose", "-p", PROJECT, "-f", str(COMPOSE), *args, timeout=timeout,
                      extra_env=self.env)

    def container(self, service: str) -> str:
        return f"{PROJECT}_{service}_1"

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def api(self, method: str, node: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.url(node, path), headers={"Authorization": f"Bearer {self.key}",
                                                                       **kwargs.pop("headers", {})},
                                timeout=15, **kwargs)

    def ready(self, node: str) -> bool:
        try:
            return requests.get(self.url(node, "/readyz"), timeout=3).status_code == 200
        except requests.RequestException:
            return False

    def fakes(self, path: str = "/stats", faults: dict[str, Any] | None = None) -> dict[str, Any]:
        if path == "/stats":
            r = requests.get(self.url("fakes", path), timeout=10)
        else:
            r = requests.post(self.url("fakes", path), json=faults or {}, timeout=10)
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def metric(self, node: str, name: str) -> float:
        """The sum of a metric's samples on one node."""
        text = requests.get(self.url(node, "/metrics"), timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))

    def prometheus(self, path: str, **params: str) -> Any:
        r = requests.get(self.url("prometheus", path), params=params, timeout=20)
        assert r.status_code == 200, f"{path} {params}: {r.status_code} {r.text[:500]}"
        return r.json()["data"]


def _figure(text: str) -> None:
    print(f"\nFIGURE {text}", flush=True)


@pytest.fixture(scope="module")
def compose() -> Iterator[Compose]:
    pm.cleanup(PROJECT)
    started = time.monotonic()
    pm.ensure_base_image()
    pm.build(pm.NODE_IMAGE, pm.ROOT / "docker" / "Dockerfile")
    pm.build(PROMETHEUS_IMAGE, pm.ROOT / "tests" / "deploy" / "prometheus.Containerfile", pm.ROOT / "tests" / "deploy")
    _figure(f"images ready in {time.monotonic() - started:.0f} s; node image {pm.image_size_mb(pm.NODE_IMAGE):.0f} MB")
    ports = {name: free_port() for name in (*NODES, "fakes", "prometheus")}
    env = {"DISPATCHER_IMAGE": pm.NODE_IMAGE, "PROMETHEUS_IMAGE": PROMETHEUS_IMAGE,
           "FAKES_STATS_PORT": str(ports["fakes"]), "PROMETHEUS_PORT": str(ports["prometheus"]),
           **{f"{n.upper()}_HTTP_PORT": str(ports[n]) for n in NODES}}
    cluster = Compose(env, ports)
    try:
        up = time.monotonic()
        # What Docker's depends_on conditions do and podman 4.3's ignore: the
        # nodes start once their secrets are made and the fakes answer.
        cluster.run("up", "-d", "secrets", "fakes", "prometheus")
        pm.wait_for("the fakes answering", lambda: bool(cluster.fakes()), 60, every_s=0.5)
        cluster.run("up", "-d", *SERVICES)
        took = pm.wait_for("every node ready", lambda: all(cluster.ready(n) for n in NODES), 180)
        _figure(f"compose up to a ready cluster: {time.monotonic() - up:.0f} s (ready {took:.0f} s after up returned)")
        keys = json.loads(pm.podman("exec", cluster.container("node1"), "cat",
                                    "/etc/dispatcher/secrets/dispatcher_api__keys").stdout)
        cluster.key = keys[0]["key"]
        yield cluster
    finally:
        for service in (*NODES, "fakes"):
            logs = pm.podman("logs", "--tail", "15", cluster.container(service), check=False)
            print(f"--- {service} ---\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}")
        cluster.run("down", "-v", timeout=300)
        pm.cleanup(PROJECT)


def _register(c: Compose, node: str, count: int) -> None:
    def put(i: int) -> int:
        token = apns_token(i) if i % 2 == 0 else fcm_token(i)
        body = {"user_id": f"user-{i}", "platform": "ios" if i % 2 == 0 else "android", "app": "news",
                "topics": ["breaking"]}
        return c.api("PUT", node, f"/v1/devices/{token}", json=body).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(put, range(count)))
    assert set(statuses) <= {200, 201}, sorted(set(statuses))


def _start(c: Compose, node: str, key: str, strategy: str) -> str:
    r = c.api("POST", node, "/v1/broadcasts", headers={"Idempotency-Key": key},
              json={"message": MESSAGE, "audience": {"app": "news"}, "strategy": strategy})
    assert r.status_code == 200, r.text
    broadcast_id: str = r.json()["id"]
    return broadcast_id


def _wait_done(c: Compose, node: str, broadcast_id: str, timeout_s: float = 300) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(c.api("GET", node, f"/v1/broadcasts/{broadcast_id}").json())
        return seen["state"] == "done"

    pm.wait_for(f"broadcast {broadcast_id} done (last seen {seen})", done, timeout_s, every_s=0.5)
    return seen


def _accepted(c: Compose) -> tuple[int, int]:
    """Distinct tokens the fakes accepted, and pushes accepted twice."""
    stats = c.fakes()
    return (stats["apns"]["accepted_tokens"] + stats["fcm"]["accepted_tokens"],
            stats["apns"]["duplicates"] + stats["fcm"]["duplicates"])


def _when_sending(c: Compose, node: str) -> None:
    """Waits until ``node`` has pushes in flight: the middle of a broadcast."""
    pm.wait_for(f"{node} sending", lambda: c.metric(node, "dispatcher_pushes_in_flight") > 0, 60, every_s=0.1)


def test_the_image_runs_as_its_own_user_with_private_data_and_a_health_check(compose: Compose) -> None:
    node = compose.container("node1")
    assert pm.podman("exec", node, "id", "-un").stdout.strip() == "dispatcher"
    modes = pm.podman("exec", node, "stat", "-c", "%a %U %n", "/var/lib/dispatcher", "/etc/dispatcher/secrets",
                      "/etc/dispatcher/secrets/dispatcher_tarantool__password").stdout.split("\n")
    assert modes[0].startswith("700 dispatcher") and modes[1].startswith("700 dispatcher"), modes
    assert modes[2].startswith("600 dispatcher"), modes
    snaps = pm.podman("exec", node, "sh", "-c", "stat -c %a /var/lib/dispatcher/*.snap").stdout.split()
    assert snaps and set(snaps) == {"600"}, snaps
    # The image's HEALTHCHECK (`dispatcher probe`), run as the engine runs it.
    assert pm.podman("healthcheck", "run", node, check=False).returncode == 0
    image = json.loads(pm.podman("image", "inspect", pm.NODE_IMAGE).stdout)[0]
    assert image["Healthcheck"]["Test"] == ["CMD", "dispatcher", "probe"], image["Healthcheck"]
    assert image["Config"]["User"] == "dispatcher"
    # Tarantool's iproto is on the cluster network only; nothing answers as guest.
    guest = pm.podman("exec", node, "tarantool", "-e",
                      "local ok, e = pcall(function() return require('net.box').connect('node2:3301')"
                      ":call('box.info') end) print(ok, e) os.exit(0)", check=False)
    assert guest.stdout.startswith("false"), guest.stdout + guest.stderr


def test_a_broadcast_through_node2_reaches_every_device(compose: Compose) -> None:
    started = time.monotonic()
    _register(compose, "node2", DEVICES)
    _figure(f"{DEVICES} devices registered through node2's API in {time.monotonic() - started:.1f} s")
    compose.fakes("/reset")
    started = time.monotonic()
    broadcast = _start(compose, "node2", "deploy-first", "baton")
    status = _wait_done(compose, "node2", broadcast)
    _figure(f"baton broadcast to {DEVICES} devices on 3 containers: {time.monotonic() - started:.1f} s")
    assert status["progress"]["delivered"] == DEVICES, status
    assert _accepted(compose) == (DEVICES, 0), compose.fakes()
    # Devices registered on node2 replicated: every node served the fan-out.
    sent = {n: compose.metric(n, "dispatcher_broadcast_tasks_enqueued_total") for n in NODES}
    assert all(v > 0 for v in sent.values()), sent


def test_a_broadcast_completes_when_a_node_container_is_killed_in_its_middle(compose: Compose) -> None:
    compose.fakes("/reset")
    for gateway in ("apns", "fcm"):
        compose.fakes(f"/faults/{gateway}", {"slow_share": 1.0, "slow_s": 2.0})
    try:
        started = time.monotonic()
        broadcast = _start(compose, "node2", "deploy-kill", "cascade")
        _when_sending(compose, "node3")
        pm.podman("kill", compose.container("node3"))
        killed = time.monotonic()
        # The others go on: the fan-out's parts held by node3 are re-issued
        # once it has been down baton_silence_s (15 s).
        pm.wait_for("fan-out finished without node3",
                    lambda: compose.api("GET", "node2", f"/v1/broadcasts/{broadcast}").json()["progress"]["enqueued"]
                    >= DEVICES, 120)
        fanned_out = time.monotonic() - killed
        # Its queued pushes go out when it is back.
        pm.podman("start", compose.container("node3"))
        status = _wait_done(compose, "node2", broadcast)
        _figure(f"kill -9 of node3 mid-broadcast: fan-out done {fanned_out:.0f} s after the kill, broadcast done "
                f"{time.monotonic() - started:.0f} s after its start, node3 back by then")
    finally:
        for gateway in ("apns", "fcm"):
            compose.fakes(f"/faults/{gateway}", {})
    accepted, duplicates = _accepted(compose)
    _figure(f"kill -9: {accepted} devices reached, {duplicates} pushes sent twice (node3's in flight)")
    assert accepted == DEVICES, status
    assert status["progress"]["delivered"] == DEVICES, status


def test_sigterm_drains_pushes_in_flight_so_none_is_sent_twice(compose: Compose) -> None:
    compose.fakes("/reset")
    for gateway in ("apns", "fcm"):
        compose.fakes(f"/faults/{gateway}", {"slow_share": 1.0, "slow_s": 2.0})
    try:
        broadcast = _start(compose, "node2", "deploy-stop", "cascade")
        _when_sending(compose, "node1")
        started = time.monotonic()
        pm.podman("stop", "-t", "60", compose.container("node1"), timeout=90)
        took = time.monotonic() - started
        state = pm.podman("inspect", "--format", "{{.State.ExitCode}}", compose.container("node1")).stdout.strip()
        logs = pm.podman("logs", compose.container("node1")).stderr
        _figure(f"podman stop of a sending node: {took:.1f} s, exit code {state}")
        assert state == "0", logs[-2000:]
        assert "stopping: finishing pushes in flight" in logs
        assert took < 45, "the drain is bounded by dispatch.drain_timeout_s"
        pm.podman("start", compose.container("node1"))
        pm.wait_for("node1 ready again", lambda: compose.ready("node1"), 120)
        status = _wait_done(compose, "node2", broadcast)
    finally:
        for gateway in ("apns", "fcm"):
            compose.fakes(f"/faults/{gateway}", {})
    assert status["progress"]["delivered"] == DEVICES, status
    assert _accepted(compose) == (DEVICES, 0), "a drained node leaves nothing to send again"


def test_prometheus_scrapes_every_node_and_loads_the_alert_rules(compose: Compose) -> None:
    def healthy() -> bool:
        targets = compose.prometheus("/api/v1/targets")["activeTargets"]
        return sorted((t["labels"]["instance"], t["health"]) for t in targets) == [
            (f"{n}:8080", "up") for n in NODES]

    pm.wait_for("every node a healthy target", healthy, 90)
    rules = compose.prometheus("/api/v1/rules")["groups"]
    loaded = {r["name"] for g in rules for r in g["rules"]}
    written = {r["alert"] for g in yaml.safe_load((pm.ROOT / "docker" / "prometheus" / "alerts.yml").read_text())[
        "groups"] for r in g["rules"]}
    assert loaded == written and len(written) >= 11, (loaded, written)
    assert all(r["health"] == "ok" for g in rules for r in g["rules"]), rules


def _dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every target of every panel, rows' too,
    with the dashboard's variables as "all"."""
    board = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                expr = target["expr"]
                expr = re.sub(r'\$\{?(node|platform)\}?', ".*", expr)
                expr = expr.replace("$__rate_interval", "2m").replace("$__interval", "1m")
                out.append((panel["title"], expr))

    walk(board["panels"])
    return out


def test_every_dashboard_query_returns_data_from_the_cluster(compose: Compose) -> None:
    board = json.loads(DASHBOARD.read_text())
    assert {v["name"] for v in board["templating"]["list"]} >= {"node", "platform"}
    queries = _dashboard_queries()
    assert len(queries) >= 15, queries
    # A running broadcast for its progress panel, and retries and paused
    # gateways for theirs: both gateways answer 503 until the end.
    for gateway in ("apns", "fcm"):
        compose.fakes(f"/faults/{gateway}", {"error_share": 1.0})
    broadcast = _start(compose, "node2", "deploy-dashboard", "baton")
    try:
        for scraped in ("dispatcher_broadcast_progress", "dispatcher_gateway_paused == 1"):
            pm.wait_for(f"{scraped} scraped", lambda q=scraped: compose.prometheus(
                "/api/v1/query", query=q)["result"], 90)

        def api_rate_scraped() -> bool:
            # An editor polling the broadcast; rates need two scrapes (15 s
            # apart) of a series, and a node restarted by the tests above
            # starts its API series afresh.
            compose.api("GET", "node2", f"/v1/broadcasts/{broadcast}")
            return bool(compose.prometheus("/api/v1/query", query="rate(dispatcher_api_requests_total[2m])")[
                "result"])

        pm.wait_for("API request rates", api_rate_scraped, 90, every_s=5)
        empty = []
        for title, expr in queries:
            result = compose.prometheus("/api/v1/query", query=expr)["result"]
            if not result:
                empty.append(f"{title}: {expr}")
        assert not empty, "panels without data:\n" + "\n".join(empty)
        for variable in board["templating"]["list"]:
            if variable.get("type") == "query":
                query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
                match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip())
                assert match, query
                values = compose.prometheus(f"/api/v1/label/{match.group(2)}/values", **{"match[]": match.group(1)})
                assert values, f"variable {variable['name']} has no values"
    finally:
        compose.api("POST", "node2", f"/v1/broadcasts/{broadcast}/cancel")
        for gateway in ("apns", "fcm"):
            compose.fakes(f"/faults/{gateway}", {})


def test_grafana_provisioning_names_the_data_source_and_dashboard_the_panels_use() -> None:
    provisioning = pm.ROOT / "docker" / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    board = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in board["panels"] for t in p.get("targets", [])}
    assert uids == {source["uid"]}, uids
    provider = yaml.safe_load((provisioning / "dashboards" / "dispatcher.yml").read_text())["providers"][0]
    mounts = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts, mounts
