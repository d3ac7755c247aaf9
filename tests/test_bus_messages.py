"""Bus messages and bookkeeping without Redis: encoding, hostile bytes, gaps, health."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratacache._bus import BusPublisherState, BusState, apply_to_l1, new_source_id
from stratacache._bus_messages import (
    BUS_FORMAT_VERSION,
    MAX_MESSAGE_BYTES,
    Action,
    BusMessage,
    decode_message,
    encode_message,
    split_args,
)
from stratacache._l1 import L1

from concurrency import FakeClock

SOURCE = b"s" * 16
OTHER = b"o" * 16


def test_a_message_round_trips() -> None:
    msg = BusMessage(SOURCE, 7, 1234.5, Action.INVALIDATE_KEYS, ("a", "b:é", ""))
    assert decode_message(encode_message(msg)) == msg


def test_messages_never_carry_values_and_stay_small() -> None:
    data = encode_message(BusMessage(SOURCE, 1, 1.0, Action.INVALIDATE_KEYS, ("user:1",)))
    assert len(data) < 50


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\x92\x01\x02",
        msgpack.packb([BUS_FORMAT_VERSION + 1, SOURCE, 1, 1.0, 1, ["k"]]),
        msgpack.packb([BUS_FORMAT_VERSION, b"short", 1, 1.0, 1, ["k"]]),
        msgpack.packb([BUS_FORMAT_VERSION, SOURCE, 0, 1.0, 1, ["k"]]),
        msgpack.packb([BUS_FORMAT_VERSION, SOURCE, -1, 1.0, 1, ["k"]]),
        msgpack.packb([BUS_FORMAT_VERSION, SOURCE, True, 1.0, 1, ["k"]]),
        msgpack.packb([BUS_FORMAT_VERSION, SOURCE, 1, "now", 1, ["k"]]),
        msgpack.packb([BUS_FORMAT_VERSION, SOURCE, 1, float("nan"), 1, ["k"]]),
        msgpack.packb([BUS_FORMAT_VERSION, SOURCE, 1, 1.0, 99, ["k"]]),
        msgpack.packb([BUS_FORMAT_VERSION, SOURCE, 1, 1.0, 1, [b"bytes-key"]]),
        msgpack.packb([BUS_FORMAT_VERSION, SOURCE, 1, 1.0, 1, "k"]),
        msgpack.packb([BUS_FORMAT_VERSION, SOURCE, 1, 1.0, int(Action.CLEAR), ["k"]]),
        msgpack.packb({"v": 1}),
        msgpack.packb([BUS_FORMAT_VERSION, SOURCE, 1, 1.0, 1, ["k"]]) + b"trailing",
        msgpack.packb([BUS_FORMAT_VERSION, SOURCE, 1, 1.0, 1, ["k" * (MAX_MESSAGE_BYTES + 1)]]),
        b"\xdd\xff\xff\xff\xff",  # an array header claiming 4 billion items
        "a str, not bytes",
        None,
    ],
)
def test_hostile_input_is_dropped_not_raised(data: object) -> None:
    assert decode_message(data) is None


@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = decode_message(data)
    assert result is None or isinstance(result, BusMessage)


def test_long_batches_split_within_the_size_bound() -> None:
    keys = [f"key:{i}:" + "x" * 900 for i in range(300)]
    chunks = list(split_args(keys))
    assert len(chunks) > 1
    assert [k for chunk in chunks for k in chunk] == keys
    out = BusPublisherState(SOURCE, lambda: 1.0)
    for payload in out.encode_all(Action.INVALIDATE_KEYS, keys):
        assert len(payload) <= MAX_MESSAGE_BYTES
        assert decode_message(payload) is not None


def test_an_unbatched_clear_is_one_message() -> None:
    # bus_batch_window=0 (or at_once) sends through encode_all: a CLEAR has no args to
    # split, and must still go out (it once went out as no message at all)
    out = BusPublisherState(SOURCE, lambda: 1.0)
    messages = [decode_message(p) for p in out.encode_all(Action.CLEAR, ())]
    assert [(m.seq, m.action, m.args) for m in messages if m] == [(1, Action.CLEAR, ())]


def test_a_batch_is_one_message_per_action_with_consecutive_sequence_numbers() -> None:
    out = BusPublisherState(SOURCE, lambda: 5.0)
    assert out.add(Action.INVALIDATE_KEYS, ["a", "b"]) is True
    assert out.add(Action.INVALIDATE_KEYS, ["b", "c"]) is False
    out.add(Action.INVALIDATE_TAGS, ["t"])
    messages = [decode_message(p) for p in out.drain()]
    assert [(m.seq, m.action, m.args) for m in messages if m] == [
        (1, Action.INVALIDATE_KEYS, ("a", "b", "c")),
        (2, Action.INVALIDATE_TAGS, ("t",)),
    ]
    assert not out.pending() and out.drain() == []


class Recorder:
    def __init__(self) -> None:
        self.flushes = 0
        self.applied: list[BusMessage] = []

    def flush(self) -> None:
        self.flushes += 1

    def apply(self, message: BusMessage) -> None:
        self.applied.append(message)


def make_state(rec: Recorder, clock: FakeClock, policy: str = "bypass_l1") -> BusState:
    return BusState(
        SOURCE,
        rec.flush,
        rec.apply,
        heartbeat_timeout=1.0,
        policy=policy,  # type: ignore[arg-type]
        timer=clock,
        clock=clock,
    )


def msg(source: bytes, seq: int, action: Action = Action.INVALIDATE_KEYS) -> bytes:
    args = ("k",) if action is Action.INVALIDATE_KEYS else ()
    return encode_message(BusMessage(source, seq, 0.0, action, args))


def test_own_messages_are_ignored_and_others_applied() -> None:
    rec, clock = Recorder(), FakeClock()
    state = make_state(rec, clock)
    state.on_payload(msg(SOURCE, 1))
    state.on_payload(msg(OTHER, 1))
    assert [m.source for m in rec.applied] == [OTHER]


def test_a_sequence_gap_flushes_and_hostile_bytes_are_counted() -> None:
    rec, clock = Recorder(), FakeClock()
    state = make_state(rec, clock)
    state.on_payload(msg(OTHER, 4))
    state.on_payload(msg(OTHER, 5))
    assert rec.flushes == 0
    state.on_payload(msg(OTHER, 7))  # 6 was lost
    assert (rec.flushes, state.flushes_gap) == (1, 1)
    state.on_payload(b"\x00garbage")
    assert state.dropped == 1
    state.on_payload(msg(OTHER, 8, Action.HEARTBEAT))  # heartbeats count in the sequence
    assert rec.flushes == 1


def test_subscribe_flushes_and_forgets_sequences() -> None:
    rec, clock = Recorder(), FakeClock()
    state = make_state(rec, clock)
    state.on_payload(msg(OTHER, 1))
    state.on_subscribed()
    state.on_payload(msg(OTHER, 9))  # first heard since the subscribe: no gap
    assert (rec.flushes, state.flushes_subscribe, state.flushes_gap) == (1, 1, 0)


def test_health_follows_our_own_heartbeat() -> None:
    rec, clock = Recorder(), FakeClock()
    state = make_state(rec, clock)
    assert not state.healthy and not state.l1_usable
    state.on_payload(msg(SOURCE, 1, Action.HEARTBEAT))
    assert state.healthy and state.l1_usable
    clock.advance(0.9)
    assert state.check_health()
    clock.advance(0.2)
    flushes = rec.flushes
    assert not state.check_health()
    assert not state.l1_usable and rec.flushes == flushes + 1
    clock.advance(2.0)
    state.on_payload(msg(SOURCE, 2, Action.HEARTBEAT))
    assert state.healthy and state.l1_usable and rec.flushes == flushes + 2  # before reuse
    assert state.unhealthy_seconds() == pytest.approx(2.0)  # from detection to recovery
    assert state.flushes_heartbeat == 3  # first hearing, unhealthy, recovered


def test_the_serve_l1_policy_keeps_l1_while_unhealthy() -> None:
    rec, clock = Recorder(), FakeClock()
    state = make_state(rec, clock, "serve_l1")
    state.on_payload(msg(SOURCE, 1, Action.HEARTBEAT))
    flushes = rec.flushes
    clock.advance(5)
    assert not state.check_health()
    assert state.l1_usable and rec.flushes == flushes
    state.on_disconnected()
    assert state.l1_usable and rec.flushes == flushes


def test_a_lost_subscription_makes_the_bus_unhealthy_at_once() -> None:
    rec, clock = Recorder(), FakeClock()
    state = make_state(rec, clock)
    state.on_payload(msg(SOURCE, 1, Action.HEARTBEAT))
    state.on_disconnected()
    assert not state.healthy and not state.l1_usable


def test_messages_are_applied_to_an_l1_through_its_index() -> None:
    l1 = L1(100)
    for i in range(4):
        l1.set(f"user:{i}", i, tags=["users"] if i < 2 else ())
    l1.set("other", 0)
    apply_to_l1(l1, BusMessage(OTHER, 1, 0, Action.INVALIDATE_KEYS, ("user:3",)))
    apply_to_l1(l1, BusMessage(OTHER, 2, 0, Action.INVALIDATE_TAGS, ("users",)))
    assert sorted(l1.keys()) == ["other", "user:2"]
    apply_to_l1(l1, BusMessage(OTHER, 3, 0, Action.INVALIDATE_MATCHING, ("user:*",)))
    assert l1.keys() == ["other"]
    ticket = l1.ticket("late")
    apply_to_l1(l1, BusMessage(OTHER, 4, 0, Action.CLEAR))
    assert len(l1) == 0
    assert not l1.install(ticket, "late", 1)  # a fill from before the clear is refused


def test_source_ids_are_random_and_sized() -> None:
    a, b = new_source_id(), new_source_id()
    assert a != b and len(a) == len(b) == 16
