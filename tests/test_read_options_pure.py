"""The pure parts of the read options, without Redis: XFetch's rule, AdaptiveTTL's rule
(fake clock), the load time in the entry envelope, the copier and the sync job set."""

from __future__ import annotations

import math
import threading
from datetime import timedelta

import msgpack  # type: ignore[import-untyped]
import pytest

from stratacache import AdaptiveTTL, Codec
from stratacache._adaptive import check_ttl_option, is_dynamic_ttl, resolve_ttl
from stratacache._background import Background
from stratacache._codec import FORMAT_VERSION
from stratacache._copying import make_copier
from stratacache._xfetch import early_beta, should_refresh

from concurrency import FakeClock

# -- XFetch ------------------------------------------------------------------------------


def draw(x: float) -> float:
    """The uniform draw whose -ln is ``x``."""
    return math.exp(-x)


def test_xfetch_rule() -> None:
    expiry, delta = 100.0, 2.0
    # now + delta * beta * x >= expiry
    assert not should_refresh(90.0, expiry, delta, 1.0, lambda: draw(4.9))
    assert should_refresh(90.0, expiry, delta, 1.0, lambda: draw(5.0))
    assert should_refresh(90.0, expiry, delta, 2.0, lambda: draw(2.5))
    assert not should_refresh(90.0, expiry, delta, 0.5, lambda: draw(9.9))
    # at or after expiry: always (any draw in (0, 1])
    assert should_refresh(100.0, expiry, delta, 1.0, lambda: 1.0)
    # a draw of 0 is ln(0) = -inf: now
    assert should_refresh(0.0, expiry, delta, 1.0, lambda: 0.0)
    # never for an entry that does not expire, or of unknown cost
    assert not should_refresh(99.0, None, delta, 1.0, lambda: 0.0)
    assert not should_refresh(99.0, expiry, 0.0, 1.0, lambda: 0.0)


def test_xfetch_probability_matches_the_paper() -> None:
    """A read x load times before expiry refreshes with probability exp(-x)."""
    import random

    rng = random.Random(7)
    n = 20_000
    hits = sum(should_refresh(98.0, 100.0, 1.0, 1.0, rng.random) for _ in range(n))
    assert abs(hits / n - math.exp(-2)) < 0.01


def test_early_beta_option() -> None:
    assert early_beta(True) == 1.0
    assert early_beta(False) is None
    assert early_beta(0.5) == 0.5
    assert early_beta(2) == 2.0
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="early_refresh"):
            early_beta(bad)
    for bad in ("yes", None, [1]):
        with pytest.raises(TypeError, match="early_refresh"):
            early_beta(bad)


# -- AdaptiveTTL ---------------------------------------------------------------------------


def curve(gap: float, high: float) -> float:
    return math.sqrt(gap * gap + high * high) - gap


def test_adaptive_ttl_rule() -> None:
    clock = FakeClock(0.0)
    ttl = AdaptiveTTL(10, 100, timer=clock)
    assert ttl.ttl_for("k") == 10  # first fill: min
    # one read in its life, refilled 150 s after the fill: gap 150 / 2 = 75 -> 125 - 75
    ttl.hit("k")
    clock.advance(150)
    assert ttl.ttl_for("k") == pytest.approx(50)
    # read often (20 reads in a 50 s life): gap 50 / 21, close to max
    for _ in range(20):
        ttl.hit("k")
    clock.advance(50)
    assert ttl.ttl_for("k") == pytest.approx(curve(50 / 21, 100))
    assert 95 < curve(50 / 21, 100) < 100
    # never above max, however hot
    for _ in range(10_000):
        ttl.hit("k")
    clock.advance(1)  # refilled early (a set): the reads are spread over the last ttl
    assert 99.9 < ttl.ttl_for("k") <= 100
    # no read in 1000 s: curve(1000) ~ 5 -> min
    clock.advance(1000)
    assert ttl.ttl_for("k") == 10
    # reads spread over the whole time since the fill: 9 reads in one 10 s lifetime, but
    # the next fill comes an hour later -> gap 360 -> ~13.6, not ~max
    for _ in range(9):
        ttl.hit("k")
    clock.advance(3600)
    assert ttl.ttl_for("k") == pytest.approx(curve(360, 100))
    # a hit on a key never filled is ignored
    ttl.hit("other")
    assert ttl.reads("other") == 0
    ttl.forget("k")
    assert ttl.ttl_for("k") == 10


def test_adaptive_ttl_bounds_its_history() -> None:
    clock = FakeClock(0.0)
    ttl = AdaptiveTTL(1, 8, max_keys=2, timer=clock)
    for key in ("a", "b", "c"):
        ttl.ttl_for(key)
    assert ttl.reads("a") == 0 and len(ttl._history) == 2
    ttl.hit("c")
    assert ttl.reads("c") == 1


def test_adaptive_ttl_options() -> None:
    assert AdaptiveTTL(timedelta(seconds=5), 60).min == 5
    with pytest.raises(ValueError, match="max"):
        AdaptiveTTL(10, 5)
    with pytest.raises(ValueError, match="min"):
        AdaptiveTTL(0, 5)
    with pytest.raises(ValueError, match="max_keys"):
        AdaptiveTTL(1, 5, max_keys=0)
    assert repr(AdaptiveTTL(1, 5)) == "AdaptiveTTL(min=1, max=5)"


def test_ttl_options() -> None:
    assert not is_dynamic_ttl(None) and not is_dynamic_ttl(5) and not is_dynamic_ttl(
        timedelta(1)
    )
    assert is_dynamic_ttl(len) and is_dynamic_ttl(AdaptiveTTL(1, 2))
    assert resolve_ttl(lambda v: v * 2, "k", 21) == 42
    assert resolve_ttl(lambda v: None, "k", 1) is None
    assert resolve_ttl(7, "k", 1) == 7
    with pytest.raises(ValueError):
        resolve_ttl(lambda v: -1, "k", 1)
    with pytest.raises(TypeError):
        resolve_ttl(lambda v: "soon", "k", 1)
    with pytest.raises(TypeError):
        check_ttl_option("soon")
    with pytest.raises(ValueError):
        check_ttl_option(0, allow_zero=False)
    check_ttl_option(len)


# -- the load time in the envelope -----------------------------------------------------


def test_load_time_round_trips_and_old_envelopes_still_read() -> None:
    codec = Codec()
    blob = codec.encode("k", {"a": 1}, created_at=1.0, expires_at=2.0, load_time=0.0505)
    assert msgpack.unpackb(blob)[-1] == 50_500
    assert codec.decode("k", blob).load_time == pytest.approx(0.0505)
    # a sub-microsecond load rounds up: a filled entry never reads as "unknown cost"
    tiny = codec.encode("k", 1, created_at=1.0, load_time=1e-9)
    assert codec.decode("k", tiny).load_time == pytest.approx(1e-6)
    # without a load time: the 8-item envelope of before, byte for byte
    plain = codec.encode("k", {"a": 1}, created_at=1.0, expires_at=2.0)
    old = msgpack.packb([FORMAT_VERSION, "k", 1.0, 2.0, [], [], 0, {"a": 1}], use_bin_type=True)
    assert plain == old
    assert codec.decode("k", old).load_time == 0.0
    with pytest.raises(ValueError):
        codec.encode("k", 1, created_at=1.0, load_time=-1.0)
    with pytest.raises(ValueError):
        codec.encode("k", 1, created_at=1.0, load_time=float("nan"))


def test_signed_entries_carry_the_load_time() -> None:
    codec = Codec(secret=b"s" * 32)
    blob = codec.encode("k", "v", created_at=1.0, load_time=2.0)
    assert codec.decode("k", blob).load_time == 2.0


# -- copies ------------------------------------------------------------------------------


def test_copier_is_deep_and_keeps_types() -> None:
    copy = make_copier(Codec())
    value = {"a": [1, {"b": (2, 3)}], "s": {1, 2}}
    copied = copy(value)
    assert copied == value
    assert copied is not value and copied["a"] is not value["a"]
    assert copied["a"][1] is not value["a"][1]
    assert type(copied["a"][1]["b"]) is tuple
    assert copy("text") == "text"


def test_copier_falls_back_to_deepcopy() -> None:
    class Thing:
        def __init__(self) -> None:
            self.items = [1]

    copy = make_copier(Codec())
    thing = Thing()
    copied = copy({"t": thing})
    assert copied["t"] is not thing and copied["t"].items == [1]


# -- the sync job set --------------------------------------------------------------------


def test_background_bounds_and_close_waits() -> None:
    jobs = Background(2)
    gate = threading.Event()
    done: list[int] = []

    def job(n: int) -> None:
        gate.wait(30)
        done.append(n)

    assert jobs.spawn(lambda: job(1), "t")
    assert jobs.spawn(lambda: job(2), "t")
    assert not jobs.spawn(lambda: job(3), "t")  # at the limit: not run
    assert len(jobs) == 2
    gate.set()
    jobs.close(30)
    assert sorted(done) == [1, 2]
    assert len(jobs) == 0
    assert not jobs.spawn(lambda: job(4), "t")  # closed
