"""/metrics, /healthz and /readyz are public and do bounded work: a fixed
number of store calls per request however many come at once, and /readyz
gathers no statistics."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from dispatcher.service import Dispatcher
from tests.e2e import Client, register, start_broadcast, wait_done

# What the send and fan-out workers call, whatever the API does.
WORKERS = ("node.fanout_", "node.settle", "queue.tube.")


async def test_monitoring_makes_few_store_calls(node: Dispatcher, api: Client,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    await register(node, 10)
    await wait_done(api, (await start_broadcast(api, "m"))["id"])
    calls: Counter[str] = Counter()
    real_call = node.store.call

    async def counted(function: str, args: Any = None) -> list[Any]:
        if not function.startswith(WORKERS):  # the workers' own calls go on meanwhile
            calls[function] += 1
        return await real_call(function, args)

    monkeypatch.setattr(node.store, "call", counted)
    await asyncio.sleep(0.5)  # let the workers go quiet
    calls.clear()
    answers = await asyncio.gather(*(api.call("GET", "/readyz", key=None) for _ in range(50)))
    assert all(a == (200, {"ready": True}) for a in answers)
    assert set(calls) == {"node.info"} and calls["node.info"] <= 50, calls
    calls.clear()
    scrapes = await asyncio.gather(*(api.call("GET", "/metrics", key=None) for _ in range(50)))
    assert all(status == 200 for status, _ in scrapes)
    monitoring = {k: v for k, v in calls.items()
                  if k in ("queue.statistics", "node.memory", "node.broadcast_list", "node.progress_many")}
    assert sum(monitoring.values()) <= 4 * 50, calls
    assert monitoring["queue.statistics"] < 50, f"concurrent scrapes share one round of calls: {calls}"
    text = scrapes[0][1]
    assert 'dispatcher_broadcast_progress{' not in text, "no broadcast runs"
    for name in ('dispatcher_pushes_total{platform="ios",verdict="delivered"}',
                 'dispatcher_queue_tasks{state="ready",tube="ios"}',
                 'dispatcher_tarantool_memory_bytes{kind="index"}',
                 'dispatcher_tarantool_memory_bytes{kind="quota_size"}',
                 "dispatcher_queue_oldest_ready_seconds",
                 'dispatcher_api_requests_total{route="/readyz",status="200"}'):
        assert name in text, name


def _series(text: str, name: str) -> dict[str, float]:
    """The samples of metric ``name`` in an exposition, by their labels."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line[len(name):].rpartition(" ")
            out[labels] = float(value)
    return out


async def test_running_broadcasts_progress_is_reported_until_they_finish(node: Dispatcher, api: Client) -> None:
    from dispatcher.fakes.faults import Faults

    assert node.fakes is not None
    await register(node, 20)
    node.fakes.apns.faults.set(Faults(error_share=1.0))  # iOS pushes wait for another attempt
    started = await start_broadcast(api, "progress-metric")
    key = f'broadcast="{started["id"]}"'

    async def progress() -> dict[str, float]:
        _, text = await api.call("GET", "/metrics", key=None)
        return {labels.split('counter="')[1].split('"')[0]: v
                for labels, v in _series(text, "dispatcher_broadcast_progress").items() if key in labels}

    deadline = asyncio.get_running_loop().time() + 30
    while (seen := await progress()).get("delivered", 0) < 10:
        assert asyncio.get_running_loop().time() < deadline, seen
        await asyncio.sleep(0.2)
    assert seen["targeted"] == seen["enqueued"] == 20, seen
    assert seen["delivered"] == 10 and seen["pending"] == 10 and seen["settled"] == 10, seen
    node.fakes.apns.faults.set(Faults())
    await wait_done(api, started["id"])
    assert await progress() == {}, "a finished broadcast's series end"
