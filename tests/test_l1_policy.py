"""The tinylfu eviction policy (W-TinyLFU): the compiled and the pure L1 make identical
decisions (an exact hit count on a fixed trace), and it keeps frequent keys through
one-hit scans where LRU loses them."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from stratacache._tinylfu import FrequencySketch, stable_hash

from l1_impls import IMPL_IDS, FakeClock, Recorder, load_l1


@pytest.fixture(params=IMPL_IDS)
def l1_impl(request: pytest.FixtureRequest) -> Any:
    return load_l1(request.param)


def zipf_trace(n_keys: int, n: int, s: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    cum = list(itertools.accumulate(1.0 / (i + 1) ** s for i in range(n_keys)))
    return [f"k{i}" for i in rng.choices(range(n_keys), cum_weights=cum, k=n)]


def scan_polluted(seed: int) -> list[str]:
    """Zipf traffic with a one-hit sequential scan of 600 fresh keys every 2,000 requests."""
    trace = zipf_trace(2000, 16_000, 0.99, seed)
    out: list[str] = []
    for i in range(0, len(trace), 2000):
        out += trace[i : i + 2000]
        out += [f"scan{i}:{j}" for j in range(600)]
    return out


def hits(cache: Any, trace: list[str]) -> int:
    count = 0
    for key in trace:
        if cache.get(key) is None:
            cache.set(key, key)
        else:
            count += 1
    return count


def test_stable_hash_is_fixed() -> None:
    """The same in every process (a str's hash() is not), so the counts below are too."""
    assert stable_hash("") == 0x877E2011D918DD23
    assert stable_hash("key:00000001") == 0x850B7F6654F94B3F
    assert stable_hash(b"key:00000001") == stable_hash("key:00000001")
    assert stable_hash(12345) == 0xDB917BB4EDCCE668
    assert stable_hash("ключ") != stable_hash("ключ2")


def test_sketch_counts_and_ages() -> None:
    sketch = FrequencySketch(16)
    h = stable_hash("a")
    for _ in range(20):
        sketch.increment(h)
    assert sketch.frequency(h) == 15  # 4-bit counters saturate
    assert sketch.frequency(stable_hash("never")) <= 1
    for i in range(1300):  # past SAMPLE_FACTOR (80) * 16 samples every counter is halved
        sketch.increment(stable_hash(f"other{i}"))
    assert sketch.frequency(h) <= 7


# Computed once with the pure spec; the compiled L1 must reach exactly the same counts.
ZIPF_HITS = {"lru": 11973, "tinylfu": 13578}
SCAN_HITS = {"lru": 9252, "tinylfu": 10656}


@pytest.mark.parametrize("policy", ["lru", "tinylfu"])
def test_exact_hits_on_a_fixed_zipf_trace(l1_impl: Any, policy: str) -> None:
    trace = zipf_trace(2000, 20_000, 0.99, seed=5)
    assert hits(l1_impl(200, policy=policy), trace) == ZIPF_HITS[policy]


@pytest.mark.parametrize("policy", ["lru", "tinylfu"])
def test_exact_hits_on_a_scan_polluted_trace(l1_impl: Any, policy: str) -> None:
    assert hits(l1_impl(200, policy=policy), scan_polluted(seed=3)) == SCAN_HITS[policy]


def test_tinylfu_beats_lru_under_scans() -> None:
    assert SCAN_HITS["tinylfu"] > 1.1 * SCAN_HITS["lru"]
    assert ZIPF_HITS["tinylfu"] > ZIPF_HITS["lru"]


def test_policy_is_checked(l1_impl: Any) -> None:
    assert l1_impl(10).policy == "lru"
    assert l1_impl(10, policy="tinylfu").policy == "tinylfu"
    with pytest.raises(ValueError):
        l1_impl(10, policy="lfu")
    with pytest.raises(TypeError):
        l1_impl(10, policy=1)


def test_tinylfu_protects_a_frequent_key_from_a_scan(l1_impl: Any) -> None:
    events = Recorder()
    cache = l1_impl(100, policy="tinylfu", on_evict=events)
    for _ in range(5):
        cache.set("hot", 1)
        assert cache.get("hot") == 1
    for i in range(1000):
        cache.set(f"scan{i}", i)
    assert cache.get("hot") == 1
    assert len(cache) == 100
    assert cache.evictions == len(events.calls) == 901
    assert {c[2] for c in events.calls} == {"size"}


def test_tinylfu_drops_expired_entries_before_live_ones(l1_impl: Any) -> None:
    clock = FakeClock()
    events = Recorder()
    cache = l1_impl(3, policy="tinylfu", timer=clock, on_evict=events)
    cache.set("a", 1)
    cache.set("short", 2, ttl=1)
    cache.set("b", 3)
    clock.advance(1)
    cache.set("new", 4)
    assert sorted(cache.keys()) == ["a", "b", "new"]
    assert events.calls == [("short", 2, "expired")]


def test_tinylfu_reset_forgets_frequencies(l1_impl: Any) -> None:
    cache = l1_impl(50, policy="tinylfu")
    trace = zipf_trace(500, 3000, 0.99, seed=9)
    first = hits(cache, trace)
    cache.reset()
    assert len(cache) == 0
    assert cache.policy == "tinylfu"
    assert hits(cache, trace) == first  # a fresh cache makes the same decisions
