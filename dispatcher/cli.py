"""The ``dispatcher`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

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


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _run(settings: Settings) -> None:
    tarantool = TarantoolProcess(settings) if settings.node.embedded else None
    if tarantool is not None:
        log.info("starting Tarantool for node %s in %s", settings.node.name, settings.node.data_dir)
        await asyncio.to_thread(tarantool.start)
    store = Store(settings.tarantool)
    try:
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
        await _wait_for_signal()
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
        asyncio.run(_run(settings))
        return 0
    except ConfigError as e:
        print(f"dispatcher: {e}", file=sys.stderr)
        return 2
    except DispatcherError as e:
        print(f"dispatcher: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
