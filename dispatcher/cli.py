"""The ``dispatcher`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import uvloop
from pydantic import ValidationError

from dispatcher.api import curl_example
from dispatcher.cluster_up import cluster_up
from dispatcher.core.config import CONFIG_ENV, Settings, load_settings
from dispatcher.core.errors import ConfigError, DispatcherError
from dispatcher.fakes.faults import Faults
from dispatcher.fakes.gateways import FakeGateways
from dispatcher.preflight import refusals, warnings
from dispatcher.secrets_dir import make_secrets
from dispatcher.service import Dispatcher

log = logging.getLogger("dispatcher")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispatcher", description="Tarantool-backed push dispatcher")
    parser.add_argument(
        "--config", type=Path, default=None,
        help="TOML settings file (default: $DISPATCHER_CONFIG, else built-in defaults)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run this node: Tarantool (when embedded), workers, HTTP API")
    run.add_argument("--demo", action="store_true",
                     help="demo mode: fake gateways, demo devices, an API key made at start-up (loopback only)")
    check = commands.add_parser("check-config", help="validate the settings, print them and what is unsafe")
    check.add_argument("--demo", action="store_true", help="judge them as `run --demo` would")
    fakes = commands.add_parser("fake-gateways", help="run the fake APNs and FCM (and FCM's OAuth endpoint)")
    fakes.add_argument("--dir", type=Path, default=Path("data/fakes"), help="where keys and the CA are written")
    fakes.add_argument("--host", default="127.0.0.1")
    for name, port in (("apns", 2197), ("fcm", 8443), ("oauth", 8444), ("stats", 8445)):
        fakes.add_argument(f"--{name}-port", type=int, default=port, help=f"default {port}; 0 picks a free one")
    fakes.add_argument("--faults", type=Path, help='JSON file: {"apns": {...}, "fcm": {...}} (see fakes/faults.py)')
    fakes.add_argument("--public-host", help="the name nodes reach the fakes by (a container's), added to their "
                                             "certificate and to the service accounts' token_uri")
    fakes.add_argument("--apns-key-id", help="the APNs key's 10-character id (default: a random one), so that nodes' "
                                             "settings can name it in advance")
    fakes.add_argument("--apns-team-id", help="the APNs team id (default: a random one)")
    commands.add_parser("probe", help="exit 0 when this node's /readyz answers 200 (a container's health check)")
    secrets_cmd = commands.add_parser("make-secrets", help="write a cluster's secrets (Tarantool and replicator "
                                                           "passwords, an API key) as files for DISPATCHER_SECRETS_DIR")
    secrets_cmd.add_argument("dir", type=Path, help="the directory; secrets already in it are kept")
    cluster = commands.add_parser("cluster", help="a local cluster for development and tests")
    cluster.add_argument("action", choices=["up"], help="up: start the nodes, Ctrl-C stops them")
    cluster.add_argument("--nodes", type=int, default=3)
    cluster.add_argument("--dir", type=Path, default=Path("data/cluster"), help="data, configs and logs")
    cluster.add_argument("--tarantool-port", type=int, default=3301, help="first node's; 0 picks free ones")
    cluster.add_argument("--http-port", type=int, default=8081, help="first node's; 0 picks free ones")
    cluster.add_argument("--demo-devices", type=int, default=1000)
    return parser


def _stop_on_signals() -> asyncio.Event:
    """SIGINT and SIGTERM set the returned event from now on, so a Ctrl-C at
    any moment, even during start-up, leads to an orderly stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _run(settings: Settings) -> None:
    stop = _stop_on_signals()
    node = Dispatcher(settings)
    try:
        log.info("starting node %s (data in %s)", settings.node.name, settings.node.data_dir)
        await node.start()
        if stop.is_set():
            return
        seeded = await node.seed_demo_devices()
        print(_banner(node, seeded), flush=True)
        progress = asyncio.create_task(_show_progress(node, stop))
        await stop.wait()
        progress.cancel()
    finally:
        log.info("stopping: finishing pushes in flight")
        await node.stop()


def _banner(node: Dispatcher, seeded: int) -> str:
    s = node.settings
    api = f"http://{s.api.host}:{node.api_port}"
    key = next(iter(node.api_keys)) if s.api.keys is None else "<one of api.keys>"
    lines = [
        f"node {s.node.name} is up",
        f"  Tarantool:  {s.tarantool.address}, user {s.tarantool.user!r}",
        f"  HTTP API:   {api}  (OpenAPI at {api}/v1/openapi.json, metrics at {api}/metrics)",
        f"  API key:    {key}" + ("  (made for this run: scopes admin and backend)" if s.api.keys is None else ""),
    ]
    if node.fakes is not None:
        lines.append(f"  gateways:   fake (stats at http://127.0.0.1:{node.fakes.ports['stats']}/stats)")
    if node.tarantool is not None:
        lines.append(f"  console:    tarantoolctl connect {s.node.data_dir.resolve() / 'admin.sock'}")
    if seeded:
        lines.append(f"  demo:       {seeded} demo devices registered (app 'news')")
    lines += [
        "Start a broadcast:",
        f"  {curl_example(api, key)}",
        "Ctrl-C stops it.",
    ]
    return "\n".join(lines)


async def _show_progress(node: Dispatcher, stop: asyncio.Event) -> None:
    """Prints the progress of running broadcasts while they change."""
    last: dict[str, tuple[str, int]] = {}
    while not stop.is_set():
        await asyncio.sleep(2)
        try:
            for b in await node.broadcasts.list(5):
                p = await node.broadcasts.progress(b.id)
                now = (b.state, p["delivered"] + p["dead_tokens"] + p["failed"] + p["expired"])
                recent = b.finished is None or time.time() - b.finished < 60
                if last.get(b.id) != now and b.state != "scheduled" and (recent or b.id in last):
                    print(f"broadcast {b.id} [{b.state}]: {p['delivered']} delivered of {p['targeted']} targeted, "
                          f"{p['dead_tokens']} dead tokens, {p['failed']} failed, {p['pending']} pending",
                          flush=True)
                    last[b.id] = now
        except DispatcherError as e:
            log.warning("progress: %s", e)


async def _run_fakes(args: argparse.Namespace) -> None:
    faults: dict[str, Faults] = {}
    if args.faults is not None:
        try:
            doc = json.loads(args.faults.read_text())
            faults = {name: Faults.model_validate(doc.get(name, {})) for name in ("apns", "fcm")}
        except OSError as e:
            raise ConfigError(f"--faults: cannot read {args.faults}: {e.strerror}") from None
        except (ValueError, ValidationError) as e:
            raise ConfigError(f"--faults: {args.faults}: {e}") from None
    stop = _stop_on_signals()
    ports = {name: getattr(args, f"{name}_port") for name in ("apns", "fcm", "oauth", "stats")}
    for option in ("apns_key_id", "apns_team_id"):
        value = getattr(args, option)
        if value is not None and not (len(value) == 10 and value.isalnum()):
            raise ConfigError(f"--{option.replace('_', '-')}: 10 letters or digits")
    fakes = FakeGateways(args.dir, host=args.host, apns_faults=faults.get("apns"), fcm_faults=faults.get("fcm"),
                         ports=ports, public_host=args.public_host, apns_ids=(args.apns_key_id, args.apns_team_id))
    try:
        await fakes.start()
    except OSError as e:
        raise ConfigError(f"fake gateways: cannot listen: {e}") from None
    try:
        print(fakes.describe() + "\nCtrl-C stops them.", flush=True)
        await stop.wait()
    finally:
        await fakes.stop()


async def _run_cluster(args: argparse.Namespace) -> None:
    stop = _stop_on_signals()
    await cluster_up(args.nodes, args.dir, args.tarantool_port, args.http_port, args.demo_devices, stop)


def _check_config(settings: Settings, path: Path | None) -> int:
    """Prints the settings (secrets masked), then what is unsafe; exit 2 when
    `run` would refuse them."""
    print(settings.model_dump_json(indent=2))
    path = path or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    for line in warnings(settings, path):
        print(f"warning: {line}", file=sys.stderr)
    problems = refusals(settings)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    return 2 if problems else 0


def _probe(settings: Settings) -> int:
    """GET /readyz on the address the API listens on (loopback when that is
    every address), as a health check: 0 when ready, 1 with the reason."""
    host = settings.api.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{host}:{settings.api.port}/readyz" if ":" not in host else f"http://[{host}]:{settings.api.port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            print(f"{url}: {r.status}")
            return 0
    except urllib.error.HTTPError as e:
        print(f"{url}: {e.code}", file=sys.stderr)
    except OSError as e:
        print(f"{url}: {getattr(e, 'reason', e)}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    # Whatever this process writes (Tarantool's data when embedded, logs,
    # the fakes' keys, configs) is for its owner only.
    os.umask(0o077)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "fake-gateways":
            uvloop.run(_run_fakes(args))
            return 0
        if args.command == "make-secrets":
            try:
                made = make_secrets(args.dir)
            except OSError as e:
                raise ConfigError(f"make-secrets: cannot write secrets into {args.dir}: {e.strerror}") from None
            for path in made:
                print(f"made {path}")
            return 0
        if args.command == "cluster":
            if not 1 <= args.nodes <= 16:
                raise ConfigError("--nodes: between 1 and 16")
            uvloop.run(_run_cluster(args))
            return 0
        demo = {"node": {"demo": True, "gateways": "fake"}} if getattr(args, "demo", False) else None
        settings = load_settings(args.config, demo)
        if args.command == "check-config":
            return _check_config(settings, args.config)
        if args.command == "probe":
            return _probe(settings)
        uvloop.run(_run(settings))
        return 0
    except ConfigError as e:
        print(f"dispatcher: {e}", file=sys.stderr)
        return 2
    except DispatcherError as e:
        print(f"dispatcher: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
