"""The bus's health bookkeeping (no I/O): transitions, their log lines and rate limit,
dead workers. A fake clock drives it; the bus on real Redis is in ``_async/test_bus.py``.
"""

from __future__ import annotations

import logging

import pytest

from stratacache._bus import BusPublisherState, BusState
from stratacache._bus_messages import Action

from concurrency import FakeClock

SOURCE = b"\x01" * 16


def make(clock: FakeClock, **options: object) -> tuple[BusState, list[str]]:
    flushes: list[str] = []
    state = BusState(
        SOURCE,
        lambda: flushes.append("flush"),
        lambda message: None,
        heartbeat_timeout=1.0,
        timer=clock,
        clock=clock,
        name="ns:v1:bus",
        **options,  # type: ignore[arg-type]
    )
    return state, flushes


def hear_heartbeat(state: BusState, outbox: BusPublisherState) -> None:
    state.on_payload(outbox.encode(Action.HEARTBEAT))


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "stratacache.bus" and r.levelno == level
    ]


def test_each_cause_of_ill_health_is_logged_once_and_recovery_with_its_length(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="stratacache.bus")
    clock = FakeClock()
    state, flushes = make(clock, log_interval=0.0)
    outbox = BusPublisherState(SOURCE, clock)
    hear_heartbeat(state, outbox)
    assert state.healthy and lines(caplog, logging.INFO) == []  # start-up is no recovery

    clock.advance(1.5)
    assert state.check_health() is False
    assert state.check_health() is False  # still the same spell: one line
    clock.advance(0.25)
    hear_heartbeat(state, outbox)
    state.on_disconnected()
    hear_heartbeat(state, outbox)
    state.on_publish_failed()
    hear_heartbeat(state, outbox)

    warnings = lines(caplog, logging.WARNING)
    assert len(warnings) == 3
    assert "'ns:v1:bus' unhealthy: our own heartbeat is overdue" in warnings[0]
    assert "the subscription was lost" in warnings[1]
    assert "a publish to Redis failed" in warnings[2]
    assert all("L1 is bypassed" in line for line in warnings)
    infos = lines(caplog, logging.INFO)
    assert len(infos) == 3
    assert infos[0].endswith("healthy again after 0.250 s")
    assert len(flushes) == 1 + 2 * 3  # first hearing; each spell: its start and its end


def test_repeated_spells_are_rate_limited_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stratacache.bus")
    clock = FakeClock()
    state, _ = make(clock, log_interval=60.0)
    outbox = BusPublisherState(SOURCE, clock)
    hear_heartbeat(state, outbox)
    for _ in range(50):  # a flapping bus: one spell a second
        state.on_publish_failed()
        clock.advance(0.5)
        hear_heartbeat(state, outbox)
        clock.advance(0.5)
    assert len(lines(caplog, logging.WARNING)) == 1
    assert len(lines(caplog, logging.INFO)) == 1  # only the logged spell's recovery
    clock.advance(60)
    state.on_disconnected()
    warnings = lines(caplog, logging.WARNING)
    assert len(warnings) == 2
    assert "(49 earlier unhealthy spells not logged)" in warnings[1]


def test_a_dead_worker_keeps_the_bus_unhealthy_until_restarted() -> None:
    clock = FakeClock()
    state, _ = make(clock)
    outbox = BusPublisherState(SOURCE, clock)
    hear_heartbeat(state, outbox)
    state.on_worker_died("publisher")
    assert not state.healthy and not state.l1_usable
    assert state.unhealthy_reason == "the bus publisher stopped"
    hear_heartbeat(state, outbox)  # one still in flight: proves nothing about the future
    assert not state.healthy
    state.on_workers_restarted()
    hear_heartbeat(state, outbox)
    assert state.healthy and state.l1_usable
    assert state.dead_workers == frozenset()


def test_serve_l1_policy_logs_that_l1_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    state, _ = make(clock, policy="serve_l1")
    outbox = BusPublisherState(SOURCE, clock)
    hear_heartbeat(state, outbox)
    with caplog.at_level(logging.WARNING, logger="stratacache.bus"):
        state.on_disconnected()
    assert state.l1_usable
    assert "L1 keeps serving" in lines(caplog, logging.WARNING)[0]
