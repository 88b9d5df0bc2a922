"""Files only their owner may read: data directories, keys, generated
configs and logs. Each is created with its mode, so there is no moment in
which another user could open it whatever the process's umask, and
tightened if it was already there with a looser one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """Makes ``path`` (and missing parents, with the usual mode) a
    directory only its owner may enter."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    path.chmod(PRIVATE_DIR)
    return path


def open_private(path: Path, append: bool = False) -> BinaryIO:
    """Opens ``path`` for writing (truncated, or appended to) as a file only
    its owner may read."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        return os.fdopen(fd, "ab" if append else "wb")
    except BaseException:
        os.close(fd)
        raise


def write_private(path: Path, data: bytes | str) -> None:
    """Writes ``data`` to ``path``, readable by its owner only."""
    with open_private(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)
