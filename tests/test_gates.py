"""Gates, the removal guard and the reconnect delay: pure logic on a fake
clock and a seeded rng (no Tarantool, no network)."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from dispatcher.core import metrics
from dispatcher.core.backoff import Backoff, ReconnectDelay
from dispatcher.gateways.push import Verdict
from dispatcher.work.gates import Gate, RemovalGuard

JITTER = 0.2  # Backoff.jittered: give or take a fifth
_apps = itertools.count()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_gate(clock: Clock, failures: int = 3, probe_s: float = 5.0, cap_s: float = 40.0,
              guard: RemovalGuard | None = None) -> Gate:
    # Metrics are process-global: every gate gets an app name of its own.
    return Gate(f"gates-{next(_apps)}", "ios", Backoff(rng=random.Random(7)), failures, probe_s, cap_s,
                guard or RemovalGuard(0.5, 100), clock=clock)


def paused_samples(gate: Gate) -> dict[str, float]:
    """cause -> value of this gate's GATE_PAUSED samples."""
    return {s.labels["cause"]: s.value for m in metrics.GATE_PAUSED.collect() for s in m.samples
            if s.labels["app"] == gate.app and s.labels["platform"] == gate.platform}


def within_jitter(value: float, interval: float) -> bool:
    return interval * (1 - JITTER) - 1e-9 <= value <= interval * (1 + JITTER) + 1e-9


def probe(gate: Gate, clock: Clock, verdict: Verdict, reason: str = "probe") -> None:
    """Waits out the probe time, then sends the one probe and records its answer."""
    clock.now += gate.probe_in_s()
    assert gate.admit()
    gate.record(verdict, reason, probe=True)


def test_config_verdict_pauses_at_once() -> None:
    clock = Clock()
    gate = make_gate(clock)
    assert not gate.paused and gate.admit() and gate.probe_in_s() == 0
    gate.record(Verdict.CONFIG, "BadTopic")
    assert (gate.paused, gate.cause, gate.reason) == (True, "config", "BadTopic")
    assert paused_samples(gate) == {"config": 1.0}


@pytest.mark.parametrize("reset", [Verdict.DELIVERED, Verdict.PERMANENT, Verdict.DEAD_TOKEN])
def test_outage_needs_failures_in_a_row(reset: Verdict) -> None:
    gate = make_gate(Clock(), failures=3)
    for _ in range(2):
        gate.record(Verdict.TEMPORARY, "timeout")
    assert not gate.paused
    gate.record(reset, "")  # the gateway answered: the count starts over
    for _ in range(2):
        gate.record(Verdict.TEMPORARY, "timeout")
    assert not gate.paused
    gate.record(Verdict.TEMPORARY, "timeout")
    assert gate.cause == "outage" and gate.reason.startswith("3 failures in a row")
    assert paused_samples(gate) == {"outage": 1.0}


def test_one_probe_at_a_time_once_due() -> None:
    clock = Clock()
    gate = make_gate(clock, probe_s=5.0)
    gate.record(Verdict.CONFIG, "BadTopic")
    wait = gate.probe_in_s()
    assert within_jitter(wait, 5.0)
    clock.now += wait - 0.01
    assert not gate.admit()
    assert gate.probe_in_s() == pytest.approx(0.01)
    clock.now += 0.01
    assert gate.admit()
    # The probe is unanswered: no other send, however long it takes.
    clock.now += 1000
    assert not gate.admit()
    assert gate.probe_in_s() == 5.0


@pytest.mark.parametrize("cause", ["config", "outage"])
def test_failed_probes_back_off_to_the_cap(cause: str) -> None:
    clock = Clock()
    gate = make_gate(clock, failures=1, probe_s=5.0, cap_s=40.0)
    gate.record(Verdict.CONFIG if cause == "config" else Verdict.TEMPORARY, "first")
    for interval in [10.0, 20.0, 40.0, 40.0, 40.0]:
        probe(gate, clock, Verdict.TEMPORARY, "still down")
        assert gate.cause == cause  # the first cause stands
        assert within_jitter(gate.probe_in_s(), interval)
        assert not gate.admit()
    assert paused_samples(gate) == {cause: 1.0}


@pytest.mark.parametrize("cause", ["config", "outage"])
def test_probe_answered_resumes(cause: str) -> None:
    clock = Clock()
    gate = make_gate(clock, failures=2)
    for _ in range(2):
        gate.record(Verdict.CONFIG if cause == "config" else Verdict.TEMPORARY, "down")
    probe(gate, clock, Verdict.TEMPORARY)  # a failed probe first: the interval grows
    assert paused_samples(gate) == {cause: 1.0}
    probe(gate, clock, Verdict.DELIVERED)
    assert (gate.paused, gate.cause, gate.reason) == (False, None, "")
    assert gate.probe_in_s() == 0 and gate.admit()
    assert paused_samples(gate) == {}
    # Resumed afresh: one failure does not pause it again, and the next
    # pause probes at probe_s, not at the grown interval.
    gate.record(Verdict.TEMPORARY, "timeout")
    assert not gate.paused
    gate.record(Verdict.TEMPORARY, "timeout")
    assert gate.cause == "outage" and within_jitter(gate.probe_in_s(), 5.0)


def test_config_probe_during_outage_moves_the_metric() -> None:
    clock = Clock()
    gate = make_gate(clock, failures=1)
    gate.record(Verdict.TEMPORARY, "timeout")
    probe(gate, clock, Verdict.CONFIG, "InvalidProviderToken")
    assert (gate.cause, gate.reason) == ("config", "InvalidProviderToken")
    assert paused_samples(gate) == {"config": 1.0}


def test_a_task_meeting_a_paused_gate_waits_until_just_after_the_next_probe() -> None:
    clock = Clock()
    gate = make_gate(clock, probe_s=5.0)
    gate.record(Verdict.CONFIG, "BadTopic")
    probe(gate, clock, Verdict.TEMPORARY)  # the interval is now 10 s
    clock.now += 3
    wait = gate.retry_in_s()
    assert gate.probe_in_s() + 5.0 * (1 - JITTER) <= wait <= gate.probe_in_s() + 5.0 * (1 + JITTER)
    clock.now += gate.probe_in_s()
    assert gate.admit()  # the probe is out: its answer comes within the wait
    assert gate.retry_in_s() >= 10.0 + 5.0 * (1 - JITTER)


def test_removal_guard_window() -> None:
    assert RemovalGuard(0.2, 1000).limit == 200
    guard = RemovalGuard(0.3, 10)
    assert guard.limit == 3
    for dead in [True, True] + [False] * 7:
        guard.record(dead)
    assert not guard.tripped
    guard.record(True)  # 3 of the last 10
    assert guard.tripped and guard.share == pytest.approx(0.3)
    guard.record(False)  # the first dead one slides out
    assert not guard.tripped and guard.share == pytest.approx(0.2)


def test_confirming_dead_tokens_do_not_count() -> None:
    gate = make_gate(Clock(), guard=RemovalGuard(0.5, 4))  # trips at 2
    for _ in range(10):
        gate.record(Verdict.DEAD_TOKEN, "Unregistered", confirming=True)
    assert not gate.paused and gate.guard.share == 0
    gate.record(Verdict.DEAD_TOKEN, "Unregistered")
    assert not gate.paused
    gate.record(Verdict.DEAD_TOKEN, "Unregistered")
    assert gate.cause == "guard" and paused_samples(gate) == {"guard": 1.0}


def test_guard_pause_ends_only_with_a_delivered_probe() -> None:
    clock = Clock()
    gate = make_gate(clock, guard=RemovalGuard(0.5, 4))
    gate.record(Verdict.DEAD_TOKEN, "Unregistered")
    gate.record(Verdict.DEAD_TOKEN, "BadDeviceToken")
    assert gate.cause == "guard"
    # A push sent before the pause comes back delivered: not proof enough.
    gate.record(Verdict.DELIVERED, "")
    assert gate.cause == "guard"
    probe(gate, clock, Verdict.DEAD_TOKEN, "Unregistered")
    assert gate.cause == "guard" and within_jitter(gate.probe_in_s(), 10.0)
    probe(gate, clock, Verdict.DELIVERED, "")
    assert not gate.paused and paused_samples(gate) == {}
    assert gate.guard.share == 0 and not gate.guard.tripped
    # The dead verdicts that tripped it are forgotten.
    gate.record(Verdict.DEAD_TOKEN, "Unregistered")
    assert not gate.paused


def test_guard_pause_probe_answered_permanent_waits_an_interval() -> None:
    """While paused, one probe per interval. BUG (expected to fail): a probe
    answered PERMANENT during a guard pause re-arms nothing, so the next
    probe is admitted at once."""
    clock = Clock()
    gate = make_gate(clock, guard=RemovalGuard(0.5, 4))
    gate.record(Verdict.DEAD_TOKEN, "Unregistered")
    gate.record(Verdict.DEAD_TOKEN, "Unregistered")
    probe(gate, clock, Verdict.PERMANENT, "PayloadTooLarge")
    assert gate.cause == "guard"
    assert gate.probe_in_s() > 0
    assert not gate.admit()


def test_reconnect_delay() -> None:
    delay = ReconnectDelay(base_s=0.5, cap_s=4.0, rng=random.Random(3))
    now = 50.0
    assert delay.wait_s(now) == 0 and delay.attempts == 0
    for n, ceiling in enumerate([0.5, 1.0, 2.0, 4.0, 4.0, 4.0], start=1):
        delay.attempted(now, ok=False)
        assert ceiling / 2 <= delay.wait_s(now) <= ceiling
        assert delay.wait_s(now + ceiling) == 0
        assert delay.attempts == n
    delay.attempted(now, ok=True)
    assert delay.wait_s(now) == 0 and delay.attempts == 7
    delay.attempted(now, ok=False)  # a success starts the doubling over
    assert 0.25 <= delay.wait_s(now) <= 0.5


async def test_reconnect_delay_lets_one_request_try_and_counts_a_dial_once() -> None:
    delay = ReconnectDelay(base_s=0.5, cap_s=4.0, rng=random.Random(3))
    now = [50.0]

    def clock() -> float:
        return now[0]

    assert await delay.admit(clock) == (True, None), "the first request tries"
    waiting = asyncio.create_task(delay.admit(clock))
    await asyncio.sleep(0)
    assert not waiting.done(), "at first the others wait for its outcome"
    for _ in range(5):  # five requests waited on one failed dial
        delay.dial_failed(now[0])
    delay.tried()
    go, why = await waiting
    assert not go and why is not None and why.startswith("next attempt in")
    assert delay.attempts == 1 and 0.25 <= delay.wait_s(now[0]) <= 0.5
    now[0] += 0.5
    assert await delay.admit(clock) == (True, None), "after the delay, one tries again"
    assert await delay.admit(clock) == (False, "reconnecting"), "after a failure the others fail at once"
    delay.tried()  # no outcome (a timeout): the next may try
    assert await delay.admit(clock) == (True, None)
    delay.attempted(now[0], ok=True)
    delay.tried()
    assert delay.up and await delay.admit(clock) == (False, None)


def test_a_probe_answered_after_the_gate_resumed_is_an_ordinary_send() -> None:
    """A push sent before the pause comes back delivered and resumes the gate
    while the probe is still out; the probe's late timeout must not pause
    the gate again on its own (that takes failures_to_pause in a row)."""
    clock = Clock()
    gate = make_gate(clock, failures=3)
    gate.record(Verdict.CONFIG, "BadTopic")
    clock.now += gate.probe_in_s()
    assert gate.admit()
    gate.record(Verdict.DELIVERED, "OK")
    assert not gate.paused
    gate.record(Verdict.TEMPORARY, "timeout", probe=True)
    assert not gate.paused and gate.admit()
