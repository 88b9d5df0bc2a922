"""Starts and stops the node's own Tarantool (``tarantool lua/init.lua``).

Used by ``dispatcher run`` on embedded defaults and by the tests, so that both
start Tarantool the same way. Tarantool's log goes to ``<data_dir>/tarantool.log``;
the data directory and everything in it are readable by their owner only.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from dispatcher.core.config import Settings
from dispatcher.core.errors import ConfigError, NodeUnavailable
from dispatcher.core.files import open_private, private_dir

_READY_MARK = b" ready: listening on "
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:")
_ERROR_LINE = re.compile(r" [EF!]> ")


def lua_dir() -> Path:
    """lua/ as packaged into the wheel, else the source checkout's."""
    package = Path(__file__).resolve().parent.parent  # dispatcher/
    for candidate in (package / "lua", package.parent / "lua"):
        if (candidate / "init.lua").is_file():
            return candidate
    raise ConfigError(f"cannot find the node's Lua code (init.lua) near {package}")


def node_environment(settings: Settings) -> dict[str, str]:
    """The NODE_* variables lua/node/config.lua reads, from our settings."""
    node, tnt = settings.node, settings.tarantool
    env = {
        "NODE_NAME": node.name,
        # An IPv6 host in brackets, as Tarantool's URIs take it.
        "NODE_LISTEN": f"[{tnt.host}]:{tnt.port}" if ":" in tnt.host else tnt.address,
        "NODE_DATA_DIR": str(node.data_dir.resolve()),
        "NODE_MEMTX_MEMORY_MB": str(node.memtx_memory_mb),
        "NODE_DISPATCHER_PASSWORD": tnt.password.get_secret_value(),
        "NODE_PEERS": ",".join(node.peers),
        "NODE_TASK_TTR_S": str(settings.dispatch.task_ttr_s),
        "NODE_BROADCAST_RETENTION_DAYS": str(settings.dispatch.broadcast_retention_days),
        "NODE_TOMBSTONE_RETENTION_DAYS": str(settings.dispatch.tombstone_retention_days),
        "NODE_DEAD_LETTER_RETENTION_DAYS": str(settings.dispatch.dead_letter_retention_days),
        # A first start waits for its peers as long as we wait for it.
        "NODE_BOOTSTRAP_TIMEOUT_S": str(math.ceil(tnt.startup_timeout_s)),
    }
    if node.replicator_password is not None:
        env["NODE_REPLICATOR_PASSWORD"] = node.replicator_password.get_secret_value()
    return env


class TarantoolProcess:
    """One Tarantool child process for this node."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log_path = settings.node.data_dir.resolve() / "tarantool.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, wait: bool = True) -> None:
        """Starts Tarantool and returns once it accepts the dispatcher's calls;
        raises with the end of Tarantool's log if it exits or stalls first.
        ``wait=False`` returns at once (nodes of a new cluster start together:
        each waits for the others); then call :meth:`wait_ready`."""
        # Tarantool makes both private itself (lua/init.lua); we get there first.
        private_dir(self.log_path.parent)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {**os.environ, **node_environment(self.settings)}
        binary = self.settings.node.tarantool_bin
        with open_private(self.log_path, append=True) as log:
            try:
                self._proc = subprocess.Popen(
                    [binary, str(lua_dir() / "init.lua")],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    # Our own process group: a Ctrl-C at the terminal reaches the
                    # dispatcher, which then stops Tarantool in order.
                    start_new_session=True,
                )
            except FileNotFoundError:
                raise ConfigError(
                    f"node.tarantool_bin: {binary!r} not found; install Debian's package "
                    "'tarantool' (apt-get install tarantool) or point node.tarantool_bin at it"
                ) from None
        self._offset = offset
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        self._wait_ready(self._offset)

    def _log_since(self, offset: int) -> bytes:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read()

    def _failure(self, offset: int, what: str) -> str:
        lines = self._log_since(offset).decode(errors="replace").strip().splitlines()
        # Error lines, and lines that are no log records (our config errors).
        errors = [line for line in lines if _ERROR_LINE.search(line) or not _LOG_RECORD.match(line)]
        shown = errors[-5:] or lines[-8:]
        return f"Tarantool {what}; from {self.log_path}:\n  " + "\n  ".join(shown)

    def _wait_ready(self, offset: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.settings.tarantool.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NodeUnavailable(self._failure(offset, f"exited with code {self._proc.returncode}"))
            if _READY_MARK in self._log_since(offset):
                return
            time.sleep(0.02)
        self.kill()
        raise NodeUnavailable(
            self._failure(offset, f"was not ready in {self.settings.tarantool.startup_timeout_s:g} s")
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if Tarantool has not exited in ``timeout_s``."""
        if not self.running:
            return
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: what a crash looks like to the data on disk."""
        if self.running:
            assert self._proc is not None
            self._proc.kill()
            self._proc.wait()
