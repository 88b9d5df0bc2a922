"""A minimal client of a node's admin console (the unix socket in its data
directory): send a line of Lua, get its results back (the console answers
in YAML)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import yaml


def console(data_dir: Path, lua: str, timeout_s: float = 10.0) -> list[Any]:
    """Runs `lua` (one line) on the node's console; returns its results."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(data_dir / "admin.sock"))
        greeting = b""
        while greeting.count(b"\n") < 2:
            greeting += s.recv(4096)
        s.sendall(lua.encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n...\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    values: list[Any] = yaml.safe_load(reply.decode()) or []
    if any(isinstance(v, dict) and "error" in v for v in values):
        raise AssertionError(f"console error: {reply.decode()}")
    return values
