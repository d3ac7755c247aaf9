"""The I/O-free parts of warming (``_warm.py``) and scheduling (``_schedule.py``)."""

from __future__ import annotations

import math

import pytest

from stratacache._schedule import (
    LastFired,
    ScheduleSpec,
    decode_definition,
    decode_last,
    latest_tick,
    next_tick,
    tick_key_ms,
)
from stratacache._warm import (
    Checkpoint,
    RateLimiter,
    batches,
    decode_checkpoint,
    validate_warm_options,
)

from concurrency import FakeClock

DAY = 86400.0
T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


def test_batches_cut_iterables_and_mappings() -> None:
    assert list(batches(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(batches({"a": 1, "b": 2}, 5)) == [[("a", 1), ("b", 2)]]
    assert list(batches(iter(()), 3)) == []


def test_the_checkpoint_is_the_contiguous_prefix() -> None:
    cp = Checkpoint()
    assert cp.complete(1) is False and cp.value == 0
    assert cp.complete(0) is True and cp.value == 2
    cp.fail(3)
    cp.complete(4)
    assert cp.complete(2) is True and cp.value == 3  # stops before the failed batch
    cp.complete(3)  # even if it is completed later by something else
    assert cp.value == 3
    assert Checkpoint(7).value == 7


def test_checkpoint_decoding_tolerates_foreign_values() -> None:
    assert decode_checkpoint(None) == 0
    assert decode_checkpoint(b"12") == 12
    assert decode_checkpoint(b"x") == 0
    assert decode_checkpoint(b"-4") == 0


def test_the_rate_limiter_spaces_batches() -> None:
    clock = FakeClock(100.0)
    limiter = RateLimiter(100.0, clock)
    assert limiter.delay(50) == 0.0
    assert limiter.delay(50) == pytest.approx(0.5)  # 50 items at 100/s after the first 50
    clock.advance(1.0)
    assert limiter.delay(100) == 0.0
    clock.advance(10.0)  # idle: at most one second of burst is saved
    assert limiter.delay(100) == 0.0
    assert limiter.delay(100) == pytest.approx(0.0)
    assert limiter.delay(100) == pytest.approx(1.0)
    assert RateLimiter(None, clock).delay(10**9) == 0.0


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ((0, 1, None, None), ValueError),
        ((1, 0, None, None), ValueError),
        ((1, 1, 0, None), ValueError),
        ((1, 1, math.inf, None), ValueError),
        ((1, 1, "fast", None), TypeError),
        ((1, 1, None, ""), ValueError),
        ((True, 1, None, None), ValueError),
    ],
)
def test_warm_options_are_checked(options: tuple[object, ...], error: type) -> None:
    with pytest.raises(error):
        validate_warm_options(*options)


def test_ticks_are_the_latest_at_or_before_now_and_the_next_after() -> None:
    daily = "0 3 * * *"
    three = T0 - 5 * 3600  # 03:00 that day
    assert latest_tick(daily, three) == three
    assert latest_tick(daily, three - 0.5) == three - DAY
    assert latest_tick(daily, three + 0.5) == three
    assert next_tick(daily, three) == three + DAY
    assert next_tick(daily, three - 1) == three
    assert tick_key_ms(daily, three) == int(2 * DAY * 1000)
    assert tick_key_ms("* * * * *", three) == 3600 * 1000  # at least an hour


def test_schedule_specs_are_validated() -> None:
    spec = ScheduleSpec.build(name="n-1_x", cron="0 3 * * *", tag=["a", "b"], key="k")
    assert spec.tags == ("a", "b") and spec.keys == ("k",)
    assert spec.describe() == "tag 'a', tag 'b', key 'k'"
    assert decode_definition(spec.encode("host:1", T0))["cron"] == "0 3 * * *"  # type: ignore[index]
    for bad in ("", "a.b", "a b", "x" * 101, 5):
        with pytest.raises(ValueError):
            ScheduleSpec.build(name=bad, cron="0 3 * * *", tag="a")
    with pytest.raises(ValueError):
        ScheduleSpec.build(name="n", cron="61 * * * *", tag="a")
    with pytest.raises(TypeError):
        ScheduleSpec.build(name="n", cron=None, tag="a")
    with pytest.raises(ValueError):
        ScheduleSpec.build(name="n", cron="0 3 * * *")
    assert ScheduleSpec.build(name="n", cron="@daily", everything=True).everything


def test_last_fired_records_round_trip_and_refuse_garbage() -> None:
    record = LastFired(T0, T0 + 1.5, "host:7#ab")
    assert decode_last(record.encode().encode()) == record
    assert decode_last(LastFired(T0).encode()) == LastFired(T0)
    assert decode_last(b"1.5|2|a|b") == LastFired(1.5, 2.0, "a|b")
    for junk in (b"", b"x|y|z", b"nan||", b"1|inf|x"):
        assert decode_last(junk) is None
    assert decode_last(None) is None
    assert decode_definition(b"\xc1") is None and decode_definition(None) is None
