"""The OpenAPI document against the API it describes: schemathesis (every
check, the stateful phase included) against a real node, with a fixed seed
and a bounded number of examples, must find no failure and no schema error.

JSON Schema cannot state three of the API's rules (models.py lists them):
an APNs token must be hex when the body's platform is "ios" (the token is
in the path), ``send_at`` lies in a window around now, and a message's
gateway payloads fit in 4 KB. The hook below keeps the requests
schemathesis generates as *valid* within those rules; it leaves the
invalid ones alone, so every check still judges them.

The module is also schemathesis' hooks module (SCHEMATHESIS_HOOKS).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from pydantic import ValidationError

from dispatcher.api.models import APNS_TOKEN, SEND_AT_FUTURE_S
from dispatcher.core.config import ApiKey
from dispatcher.gateways.messages import Message
from dispatcher.service import Dispatcher
from tests.e2e import settings_for

FUZZ_KEY = "fuzz-key-both-scopes-0123456789"
SEED = 20261123
MAX_EXAMPLES = 100
ROOT = Path(__file__).resolve().parent.parent


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return case
    body: dict[str, Any] = case.body
    if case.path == "/v1/devices/{token}" and body.get("platform") == "ios":
        token = str(case.path_parameters.get("token", ""))
        if not re.fullmatch(APNS_TOKEN, token):
            case.path_parameters["token"] = hashlib.sha256(token.encode()).hexdigest()
    if isinstance(body.get("send_at"), str):
        # A time inside the window, chosen by the generated value.
        ahead_s = int(hashlib.sha256(body["send_at"].encode()).hexdigest(), 16) % (SEND_AT_FUTURE_S - 60)
        at = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=ahead_s + 60)
        body["send_at"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    message = body.get("message")
    if isinstance(message, dict):
        _fit(message)
    return case


def _fit(message: dict[str, Any]) -> None:
    """Shortens a generated message until APNs' and FCM's payloads fit."""
    for _ in range(8):
        try:
            Message.model_validate(message)
            return
        except ValidationError as e:
            if "takes at most" not in str(e):
                return  # not a size problem: leave it to the checks
        message["data"] = dict(list(message.get("data", {}).items())[: len(message.get("data", {})) // 2])
        for name in ("title", "body", "image"):
            if isinstance(message.get(name), str) and len(message[name]) > 1:
                message[name] = message[name][: len(message[name]) // 2]


@pytest.fixture
async def fuzz_node(tmp_path: Path) -> Any:
    s = settings_for(tmp_path)
    keys = [*(s.api.keys or []), ApiKey(key=FUZZ_KEY, scopes=["admin", "backend"])]
    d = Dispatcher(s.model_copy(update={"api": s.api.model_copy(update={"keys": keys})}))
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


@pytest.mark.timeout(300)
async def test_schemathesis_finds_nothing(fuzz_node: Dispatcher, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{fuzz_node.api_port}"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.test_api_schemathesis", "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run", f"{base}/v1/openapi.json",
        "--checks", "all", "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES), "--workers", "1",
        "--generation-database", "none", "--no-color", "--header", f"Authorization: Bearer {FUZZ_KEY}",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    report = out.decode(errors="replace")
    print(report[-6000:])
    summary = report.strip().splitlines()[-1] if report.strip() else ""
    assert proc.returncode == 0, report[-12000:]
    assert "failure" not in summary and "error" not in summary, summary
    assert re.search(r"[1-9]\d* generated", report), "schemathesis generated no test case"
