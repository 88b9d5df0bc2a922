"""Retention's settings reach the node's Tarantool (the pass itself is
tested in tests/lua/retention.test.lua)."""

from __future__ import annotations

from pathlib import Path

from dispatcher.node.tarantool_process import TarantoolProcess
from tests.admin import console
from tests.conftest import node_settings


def test_retention_days_reach_the_node(tmp_path: Path) -> None:
    s = node_settings(tmp_path / "node")
    s = s.model_copy(update={"dispatch": s.dispatch.model_copy(update={
        "broadcast_retention_days": 3, "tombstone_retention_days": 40, "dead_letter_retention_days": 5})})
    node = TarantoolProcess(s)
    node.start()
    try:
        got = console(s.node.data_dir, "local r = require('node.retention') "
                                       "return r.cfg.broadcast_days, r.cfg.tombstone_days, r.cfg.dead_letter_days, "
                                       "r.interval_s")
        assert got == [3, 40, 5, 600]
    finally:
        node.stop()
