"""The version rule of replicated rows is in place before any row is loaded,
also after a kill -9 and a restart (installed from box.ctl.on_schema_init)."""

from __future__ import annotations

from dispatcher.core.config import Settings
from dispatcher.node.tarantool_process import TarantoolProcess
from tests.admin import console


def test_rule_survives_a_restart(settings: Settings, tarantool: TarantoolProcess) -> None:
    data = settings.node.data_dir
    row = "{'tok', 'u', %d, %d, %d}"  # told apart by the profile field
    console(data, "box.space.subscriber:replace(" + row % (2, 2000, 2) + ")")
    tarantool.kill()
    tarantool.start()
    for space in ("subscriber", "broadcast", "progress"):
        assert console(data, f"return #box.space.{space}:before_replace()") == [1], space
    # An older version arriving after the restart (as from a lagging peer) loses.
    console(data, "box.space.subscriber:replace(" + row % (1, 1000, 3) + ")")
    assert console(data, "return box.space.subscriber:get('tok').profile") == [2]
