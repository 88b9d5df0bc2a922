"""A minimal client of a node's admin console (the unix socket in its data
directory): send a Lua chunk, get its results back, decoded from YAML-ish
text only as far as the tests need (numbers, strings, booleans)."""

from __future__ import annotations

import socket
from pathlib import Path


def console(data_dir: Path, lua: str, timeout_s: float = 10.0) -> list[str]:
    """Runs `lua` (one line) on the node's console; returns its results as the
    console prints them, one string per value."""
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
    lines = reply.decode().splitlines()
    values = [line[2:] for line in lines if line.startswith("- ")]
    if any(v.startswith("error:") for v in values):
        raise AssertionError(f"console error: {reply.decode()}")
    return values
