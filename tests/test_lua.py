"""Runs the Lua tests (tests/lua/*.test.lua, Tarantool's tap) under pytest."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

LUA_TESTS = sorted((Path(__file__).parent / "lua").glob("*.test.lua"))


@pytest.mark.parametrize("script", LUA_TESTS, ids=[p.name for p in LUA_TESTS])
def test_lua(script: Path) -> None:
    run = subprocess.run(["tarantool", str(script)], capture_output=True, text=True, timeout=120)
    tap = run.stdout
    failures = [line.strip() for line in tap.splitlines() if line.strip().startswith("not ok")]
    assert run.returncode == 0 and not failures, f"{script.name} failed:\n{tap}\n{run.stderr[-3000:]}"
    assert "1.." in tap, f"{script.name} printed no TAP plan:\n{tap}\n{run.stderr[-3000:]}"


def test_lua_tests_found() -> None:
    assert {p.name for p in LUA_TESTS} >= {"queue.test.lua", "node.test.lua"}
