"""pytest-benchmark suite of the tiered cache: each group has its baseline and peers.

Run with ``make bench`` (pinned to one CPU). Figures are per ``N`` operations per round.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stratacache.testing import RedisServerProcess

from cache_cases import (
    close_resources,
    decorated_hit_cases,
    get_many_cases,
    l1_hit_cases,
    l2_hit_cases,
)

N_FAST = 10_000
N_REDIS = 500

_loop = asyncio.new_event_loop()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServerProcess() as server:
        yield server.url
        close_resources(_loop)


@pytest.mark.benchmark(group="cache get, L1 hit (x10k)")
@pytest.mark.parametrize("name", list(l1_hit_cases(1, _loop)))
def test_l1_hit(benchmark, name: str) -> None:
    benchmark(l1_hit_cases(N_FAST, _loop)[name])


@pytest.mark.benchmark(group="decorated hit (x10k)")
@pytest.mark.parametrize("name", list(decorated_hit_cases(1)))
def test_decorated_hit(benchmark, name: str) -> None:
    benchmark(decorated_hit_cases(N_FAST)[name])


@pytest.mark.benchmark(group="get, L2 hit (x500)")
@pytest.mark.parametrize(
    "name",
    [
        "redis-py GET + msgpack.unpackb (baseline)",
        "stratacache Cache.get (L2 hit)",
        "redis.asyncio GET + msgpack.unpackb (async baseline)",
        "stratacache await AsyncCache.get (L2 hit)",
    ],
)
def test_l2_hit(benchmark, redis_url: str, name: str) -> None:
    benchmark(l2_hit_cases(redis_url, N_REDIS, _loop)[name])


@pytest.mark.benchmark(group="get_many(100), L2 (x50)")
@pytest.mark.parametrize(
    "name",
    [
        "redis-py MGET(100) + msgpack.unpackb (baseline)",
        "stratacache get_many(100) (L2)",
        "redis.asyncio MGET(100) + msgpack.unpackb (async baseline)",
        "stratacache await AsyncCache.get_many(100) (L2)",
    ],
)
def test_get_many(benchmark, redis_url: str, name: str) -> None:
    benchmark(get_many_cases(redis_url, 50, _loop)[name])
