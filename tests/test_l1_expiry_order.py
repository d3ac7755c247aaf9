"""Expiry order when deadlines arrive in order (the compiled L1's FIFO fast path) and out
of order (its heap), mixed, with removals: both implementations drop entries earliest
(deadline, write) first, exactly as a model computes."""

from __future__ import annotations

import random
from typing import Any

import pytest

from l1_impls import IMPL_IDS, FakeClock, Recorder, load_l1


@pytest.fixture(params=IMPL_IDS)
def l1_impl(request: pytest.FixtureRequest) -> Any:
    return load_l1(request.param)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mixed_in_order_and_out_of_order_deadlines_expire_earliest_first(
    l1_impl: Any, seed: int
) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    events = Recorder()
    cache = l1_impl(100_000, timer=clock, on_evict=events)
    model: dict[int, tuple[float, int]] = {}  # key -> (deadline, write number)
    writes = 0
    for step in range(3000):
        key = rng.randrange(800)
        roll = rng.random()
        if roll < 0.15:
            cache.delete(key)
            model.pop(key, None)
            continue
        # Mostly one ttl (deadlines in order), sometimes a shorter or equal one.
        ttl = 50.0 if roll < 0.8 else float(rng.choice([1, 5, 20, 50]))
        writes += 1
        cache.set(key, step, ttl=ttl)
        model[key] = (clock.now + ttl, writes)
        if rng.random() < 0.3:
            clock.advance(rng.choice([0.0, 0.5, 1.0]))
    clock.advance(1000)
    before = len(events.calls)  # entries met expired during the loop were reported then
    assert cache.expire(len(model) + 10) == len(model)
    expected = sorted(model, key=lambda k: model[k])
    assert [c[0] for c in events.calls[before:]] == expected
    assert len(cache) == 0


def test_in_order_deadlines_survive_many_holes(l1_impl: Any) -> None:
    """Entries removed from the middle leave holes in the FIFO; compaction keeps order."""
    clock = FakeClock()
    events = Recorder()
    cache = l1_impl(1000, timer=clock, on_evict=events)
    for i in range(5000):
        cache.set(i, i, ttl=100)
        clock.advance(0.01)
        if i % 3:
            cache.delete(i - 1)
    live = sorted(cache.keys())
    assert cache.evictions > 0  # the oldest left by size, from the middle of the FIFO too
    clock.advance(1000)
    before = len(events.calls)
    assert cache.expire(10_000) == len(live)
    assert [c[0] for c in events.calls[before:]] == live
