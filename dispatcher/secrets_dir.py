"""``dispatcher make-secrets DIR``: a cluster's shared secrets as files a
node reads through DISPATCHER_SECRETS_DIR, made once (kept when present), so
that a compose cluster starts on secrets of its own rather than on ones
written in the repository."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from dispatcher.core.files import private_dir, write_private


def _api_keys() -> str:
    return json.dumps([{"key": "dsp_" + secrets.token_urlsafe(24), "scopes": ["admin", "backend"]}])


MADE = {
    "dispatcher_tarantool__password": lambda: secrets.token_urlsafe(24),
    "dispatcher_node__replicator_password": lambda: secrets.token_urlsafe(24),
    "dispatcher_api__keys": _api_keys,
}


def make_secrets(directory: Path) -> list[Path]:
    """Writes each missing secret (owner-only) and returns the files made."""
    private_dir(directory)
    made = []
    for name, value in MADE.items():
        path = directory / name
        if not path.exists():
            write_private(path, value())
            made.append(path)
    return made
