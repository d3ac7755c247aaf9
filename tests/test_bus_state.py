"""The bus's health bookkeeping (no I/O): transitions, their log lines and rate limit,
dead workers. A fake clock drives it; the bus on real Redis is in ``_async/test_bus.py``.
"""

from __future__ import annotations

import logging

import pytest

from stratacache._bus import BusPublisherState, BusState
from stratacache._bus_messages import (
    MAC_BYTES,
    Action,
    BusMessage,
    bus_keys,
    encode_message,
    sign_message,
)

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


# -- signed messages -------------------------------------------------------------------------

K1 = b"k1" * 16
K2 = b"k2" * 16
OTHER = b"\x02" * 16


def signed_state(clock: FakeClock, secrets: list[bytes]) -> tuple[BusState, list[str]]:
    return make(clock, keys=bus_keys(secrets, "ns:v1:bus"))


def test_only_verified_messages_reach_the_sequence_check() -> None:
    clock = FakeClock()
    state, flushes = signed_state(clock, [K1])
    applied: list[BusMessage] = []
    state._apply = applied.append
    key = bus_keys([K1], "ns:v1:bus")[0]
    them = BusPublisherState(OTHER, clock, key)
    state.on_payload(them.encode(Action.INVALIDATE_KEYS, ["a"]))
    assert [m.args for m in applied] == [("a",)]
    # a stranger's messages with the next sequence numbers and beyond: unsigned, forged
    # (another key, another channel's key), truncated; none may look like a gap
    for seq in (2, 5, 9):
        body = encode_message(BusMessage(OTHER, seq, 0.0, Action.CLEAR))
        state.on_payload(body)
        state.on_payload(sign_message(body, bus_keys([K2], "ns:v1:bus")[0]))
        state.on_payload(sign_message(body, bus_keys([K1], "other:v1:bus")[0]))
        state.on_payload(sign_message(body, key)[:-1])
        state.on_payload(sign_message(body, key)[:MAC_BYTES])
    assert state.forged == state.dropped == 15
    assert state.flushes_gap == 0 and flushes == [] and len(applied) == 1
    state.on_payload(them.encode(Action.INVALIDATE_KEYS, ["b"]))  # seq 2: no gap either
    assert [m.args for m in applied] == [("a",), ("b",)] and state.flushes_gap == 0


def test_a_replay_is_ignored_and_a_forged_own_heartbeat_proves_nothing() -> None:
    clock = FakeClock()
    state, flushes = signed_state(clock, [K2, K1])
    applied: list[BusMessage] = []
    state._apply = applied.append
    them = BusPublisherState(OTHER, clock, bus_keys([K1], "ns:v1:bus")[0])  # retiring key
    recorded = [them.encode(Action.CLEAR), them.encode(Action.INVALIDATE_KEYS, ["x"])]
    for message in recorded:
        state.on_payload(message)
    assert len(applied) == 2 and state.forged == 0
    for message in recorded * 3:
        state.on_payload(message)  # replays: old sequence numbers
    assert len(applied) == 2 and state.flushes_gap == 0 and flushes == []
    assert state.dropped == 6 and state.forged == 0
    # our own heartbeat, signed by a stranger's key: not heard; then ours, then a replay
    ours = BusPublisherState(SOURCE, clock, bus_keys([K2], "ns:v1:bus")[0])
    forged = BusPublisherState(SOURCE, clock, bus_keys([b"x" * 32], "ns:v1:bus")[0])
    state.on_payload(forged.encode(Action.HEARTBEAT))
    assert not state.healthy and state.forged == 1
    heartbeat = ours.encode(Action.HEARTBEAT)
    state.on_payload(heartbeat)
    assert state.healthy
    clock.advance(2.0)
    state.on_payload(heartbeat)  # replayed later: does not keep a deaf bus healthy
    assert not state.check_health()


def test_unsigned_sequences_are_not_trusted_backwards_either() -> None:
    """Without keys a forged high sequence number must not silence the real source: any
    break, backwards too, is a gap (a flush), never an ignored message."""
    clock = FakeClock()
    state, _ = make(clock)
    real = BusPublisherState(OTHER, clock)
    state.on_payload(real.encode(Action.INVALIDATE_KEYS, ["a"]))
    state.on_payload(encode_message(BusMessage(OTHER, 10**9, 0.0, Action.HEARTBEAT)))
    assert state.flushes_gap == 1
    state.on_payload(real.encode(Action.INVALIDATE_KEYS, ["b"]))
    assert state.flushes_gap == 2 and state.dropped == 0
