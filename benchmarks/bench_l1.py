"""pytest-benchmark suite for the L1, compiled and pure, beside dict and peer caches.

Each round is 1,000 calls (``benchmark.pedantic``): at ~50 ns a call, pytest-benchmark's
own per-round overhead would otherwise be most of what it measures. Divide the reported
times by 1,000 for ns per call; ``benchmarks/l1_report.py`` prints them that way.
"""

from __future__ import annotations

from typing import Any

import pytest

from l1_report import TTL, Adapter, adapters, close, fill, make_keys

CALLS = 1_000
ADAPTERS = {a.name: a for a in adapters()}
L1_NAMES = [name for name in ADAPTERS if name.startswith("stratacache.L1") and "ttl" not in name]


def _ids(names: list[str]) -> list[str]:
    return [n.replace("stratacache.", "").replace(" ", "") for n in names]


@pytest.fixture(params=list(ADAPTERS), ids=_ids(list(ADAPTERS)))
def adapter(request: pytest.FixtureRequest) -> Any:
    return ADAPTERS[request.param]


def _run(benchmark: Any, loop: Any, rounds: int = 200) -> None:
    benchmark.extra_info["calls_per_round"] = CALLS
    benchmark.pedantic(loop, rounds=rounds, iterations=1, warmup_rounds=5)


@pytest.mark.benchmark(group="L1 get hit (x1000 calls)")
def test_get_hit(benchmark: Any, adapter: Adapter) -> None:
    keys = make_keys(CALLS, "key")
    cache = adapter.make(CALLS)
    fill(adapter, cache, keys, "value")
    get = adapter.get(cache)

    def loop() -> None:
        for k in keys:
            get(k)

    _run(benchmark, loop)
    close(cache)


@pytest.mark.benchmark(group="L1 get miss (x1000 calls)")
def test_get_miss(benchmark: Any, adapter: Adapter) -> None:
    keys = make_keys(CALLS, "key")
    absent = make_keys(CALLS, "absent")
    cache = adapter.make(CALLS)
    fill(adapter, cache, keys, "value")
    get = adapter.get(cache)

    def loop() -> None:
        for k in absent:
            get(k)

    _run(benchmark, loop)
    close(cache)


@pytest.mark.benchmark(group="L1 set with eviction (x1000 calls)")
def test_set_with_eviction(benchmark: Any, adapter: Adapter) -> None:
    if adapter.name == "dict":
        pytest.skip("a dict never evicts")
    keys = make_keys(CALLS, "key")
    other = make_keys(CALLS, "new")
    cache = adapter.make(CALLS)
    value = object()
    fill(adapter, cache, keys, value)
    put = adapter.set(cache)
    batches = [other, keys]
    turn = [0]
    ttl = adapter.ttl

    def loop() -> None:  # every key is new to the (full) cache: each set evicts
        batch = batches[turn[0] % 2]
        turn[0] += 1
        if ttl is None:
            for k in batch:
                put(k, value)
        else:
            for k in batch:
                put(k, value, ttl)

    _run(benchmark, loop)
    close(cache)


@pytest.mark.benchmark(group="L1 invalidate_tag over 10k tagged keys")
@pytest.mark.parametrize("name", L1_NAMES, ids=_ids(L1_NAMES))
def test_invalidate_tag_10k(benchmark: Any, name: str) -> None:
    keys = make_keys(10_000, "tagged")
    cache = ADAPTERS[name].make(10_000)
    tags = ("t",)

    def setup() -> tuple[tuple[()], dict[str, Any]]:
        for k in keys:
            cache.set(k, k, TTL, tags)
        return (), {}

    def run() -> None:
        assert cache.invalidate_tag("t") == 10_000

    benchmark.pedantic(run, setup=setup, rounds=20, iterations=1)
