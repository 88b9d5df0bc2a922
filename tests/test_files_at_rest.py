"""Every device token is in the snapshots and the WAL, keys are keys, and
generated configs hold passwords: a node's files are their owner's alone
(directories 0700, files and the console's socket 0600), whatever the umask
of whoever started the node."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.cluster_up import NodeProcess
from dispatcher.core.config import Settings
from dispatcher.fakes.gateways import FakeGateways
from dispatcher.node.tarantool_process import TarantoolProcess
from dispatcher.service import Dispatcher
from tests.admin import console
from tests.conftest import node_settings


@pytest.fixture(autouse=True)
def loose_umask() -> Iterator[None]:
    """The loosest umask there is, for this test and what it starts."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def loose_modes(top: Path) -> dict[str, str]:
    """Everything under `top` (itself included) not 0700 for a directory or
    0600 otherwise: path -> its mode."""
    out = {}
    for path in [top, *(top.rglob("*") if top.is_dir() else [])]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            out[str(path.relative_to(top.parent))] = oct(mode)
    return out


def test_tarantool_keeps_its_data_private(settings: Settings, tarantool: TarantoolProcess) -> None:
    data_dir = settings.node.data_dir
    console(data_dir, "box.space.subscriber:replace{'tok', 'u', 0, 1, 1}")
    console(data_dir, "box.snapshot()")
    names = {p.suffix if p.suffix in (".snap", ".xlog") else p.name for p in data_dir.iterdir()}
    assert {".snap", ".xlog", "tarantool.log", "admin.sock"} <= names, names
    assert loose_modes(data_dir) == {}


def test_a_loose_data_dir_of_an_older_release_is_tightened(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "node")
    data_dir = settings.node.data_dir
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    (data_dir / "tarantool.log").touch(mode=0o644)
    (data_dir / "notes").mkdir(mode=0o755)
    proc = TarantoolProcess(settings)
    proc.start()
    try:
        assert loose_modes(data_dir) == {}
    finally:
        proc.kill()


def test_fake_gateways_keys_are_private(tmp_path: Path) -> None:
    fakes = FakeGateways(tmp_path / "fakes")
    names = {p.name for p in fakes.directory.iterdir()}
    assert {"ca.pem", "server.pem", "apns-client.pem", "fcm-service-account.json"} <= names
    assert any(name.startswith("AuthKey_") and name.endswith(".p8") for name in names)
    fakes.credentials.set_token_uri("https://127.0.0.1:1/token")  # rewritten once the fakes listen
    assert loose_modes(fakes.directory) == {}


def test_cluster_up_node_configs_are_private(tmp_path: Path) -> None:
    # Passwords and API keys in clear.
    node = NodeProcess(tmp_path, node_settings(tmp_path / "node1", name="node1"))
    assert node.config.read_text().count("password") >= 1
    assert loose_modes(node.config) == {}


async def test_a_whole_node_keeps_its_files_private(node: Dispatcher) -> None:
    data_dir = node.settings.node.data_dir
    assert (data_dir / "fakes").is_dir() and (data_dir / "admin.sock").exists()
    console(data_dir, "box.snapshot()")
    assert loose_modes(data_dir) == {}
