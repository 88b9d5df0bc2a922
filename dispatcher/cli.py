"""The ``dispatcher`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

import uvloop

from dispatcher.config import Settings, load_settings
from dispatcher.errors import ConfigError, DispatcherError
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
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
