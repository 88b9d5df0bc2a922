"""The ``dispatcher`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

import uvloop
from pydantic import ValidationError

from dispatcher.config import Settings, load_settings
from dispatcher.errors import ConfigError, DispatcherError
from dispatcher.fakes.faults import Faults
from dispatcher.fakes.gateways import FakeGateways
from dispatcher.store import Store
from dispatcher.tarantool_process import TarantoolProcess

log = logging.getLogger("dispatcher")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dispatcher", description="Tarantool-backed push dispatcher")
    parser.add_argument(
        "--config", type=Path, default=None,
        help="TOML settings file (default: $DISPATCHER_CONFIG, else built-in defaults)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run this node (its Tarantool too, when embedded)")
    commands.add_parser("check-config", help="validate the settings and print them")
    fakes = commands.add_parser("fake-gateways", help="run the fake APNs and FCM (and FCM's OAuth endpoint)")
    fakes.add_argument("--dir", type=Path, default=Path("data/fakes"), help="where keys and the CA are written")
    fakes.add_argument("--host", default="127.0.0.1")
    for name, port in (("apns", 2197), ("fcm", 8443), ("oauth", 8444), ("stats", 8445)):
        fakes.add_argument(f"--{name}-port", type=int, default=port, help=f"default {port}; 0 picks a free one")
    fakes.add_argument("--faults", type=Path, help='JSON file: {"apns": {...}, "fcm": {...}} (see fakes/faults.py)')
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
    tarantool = TarantoolProcess(settings) if settings.node.embedded else None
    store = Store(settings.tarantool)
    try:
        if tarantool is not None:
            log.info("starting Tarantool for node %s in %s", settings.node.name, settings.node.data_dir)
            await asyncio.to_thread(tarantool.start)
        if stop.is_set():
            return
        info = await store.connect()
        admin = settings.node.data_dir.resolve() / "admin.sock"
        print(
            f"node {info['name']} is up (schema version {info['schema_version']})\n"
            f"  Tarantool:     {settings.tarantool.address}, user {settings.tarantool.user!r}\n"
            + (f"  admin console: tarantoolctl connect {admin}\n" if tarantool else "")
            + (f"  log:           {tarantool.log_path}\n" if tarantool else "")
            + "  Ctrl-C stops it.",
            flush=True,
        )
        await stop.wait()
    finally:
        await store.close()
        if tarantool is not None:
            log.info("stopping Tarantool")
            await asyncio.to_thread(tarantool.stop)


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
    fakes = FakeGateways(args.dir, host=args.host, apns_faults=faults.get("apns"), fcm_faults=faults.get("fcm"),
                         ports=ports)
    try:
        await fakes.start()
    except OSError as e:
        raise ConfigError(f"fake gateways: cannot listen: {e}") from None
    try:
        print(fakes.describe() + "\nCtrl-C stops them.", flush=True)
        await stop.wait()
    finally:
        await fakes.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "fake-gateways":
            uvloop.run(_run_fakes(args))
            return 0
        settings = load_settings(args.config)
        if args.command == "check-config":
            print(settings.model_dump_json(indent=2))
            return 0
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
