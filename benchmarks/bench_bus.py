"""pytest-benchmark suite of the invalidation bus; each group carries its raw baseline.

In-process (instances in one process, each with its own listener thread): the time from a
write in one instance until another serves the new value, beside raw redis-py
PUBLISH -> receive; and invalidations with batching on and off, beside raw PUBLISH.
The cross-process figures (3 reader processes) come from ``bus_report.py``.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stratacache import MISSING, Cache
from stratacache.testing import RedisServerProcess

from bus_cases import CHANNEL, invalidations_per_second

N_INVALIDATIONS = 1000


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServerProcess() as server:
        yield server.url


@pytest.mark.benchmark(group="propagation, write -> other instance serves it (x1)")
def test_raw_publish_to_receive_baseline(benchmark, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    pubsub.get_message(timeout=1.0)
    counter = itertools.count()

    def once() -> None:
        client.publish(CHANNEL, str(next(counter)))
        while pubsub.get_message(timeout=1.0) is None:
            pass

    try:
        benchmark(once)
    finally:
        pubsub.close()
        client.close()


@pytest.mark.benchmark(group="propagation, write -> other instance serves it (x1)")
@pytest.mark.parametrize("window", [0.0, 0.001])
def test_bus_propagation(benchmark, redis_url: str, window: float) -> None:
    writer = Cache(redis_url, namespace="benchbus", bus_batch_window=window)
    reader = Cache(redis_url, namespace="benchbus")
    writer.set("k", -1)
    reader.get("k")
    counter = itertools.count()

    def once() -> None:
        n = next(counter)
        writer.set("k", n)
        deadline = time.monotonic() + 5
        while reader.l1.peek("k", MISSING) is not MISSING and time.monotonic() < deadline:
            time.sleep(0)
        assert reader.get("k") == n

    try:
        benchmark(once)
    finally:
        writer.close()
        reader.close()


@pytest.mark.benchmark(group=f"invalidations until heard (x{N_INVALIDATIONS})")
@pytest.mark.parametrize(
    "window", [None, 0.0, 0.001], ids=["raw-publish-baseline", "batching-off", "batching-on"]
)
def test_invalidations(benchmark, redis_url: str, window: float | None) -> None:
    benchmark.pedantic(
        invalidations_per_second,
        args=(redis_url, window, N_INVALIDATIONS),
        rounds=5,
        iterations=1,
    )
