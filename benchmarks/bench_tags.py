"""pytest-benchmark: invalidating one tag of 10,000 keys, beside the raw baselines.

Run with ``make bench`` (pinned to one CPU). Each round starts from a freshly written tag
(``Cache.set_many`` of 10,000 keys with ``tags=["bench"]``, not timed) and times one call:

* raw redis-py: ``SMEMBERS``, then one pipeline of ``DEL`` per data key (the baseline);
* the seed's Lua script: ``SMEMBERS`` + ``DEL`` of every key in one ``EVAL``;
  (our member sets are sorted sets: ``SMEMBERS`` is a ``ZRANGE`` of the whole set here)
* ``Cache.invalidate_tag``: the version bump and member-set ``RENAME`` (O(1) in Redis),
  the bus message, and dropping the tag from the writer's own L1, which holds the 10,000
  entries it just wrote (the ``empty L1`` row shows the call without that part). The keys
  are deleted afterwards by the background reclaim, which each round's setup waits for.

``tag_report.py`` measures the same thing on 1M keys, with reclaim rates and stalls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from stratacache import Cache
from stratacache._keys import KeySpace
from stratacache.testing import RedisServerProcess
from tag_report import SEED_LUA

N = 10_000
ROUNDS = 15
NS = "benchtags"
TAG = "bench"
KEYS = KeySpace(NS)
MEMBERS = KEYS.tag_members_key(TAG)


Setup = Callable[[], None]
Target = Callable[[], Any]

MAPPING = {f"item:{i}": {"id": i, "name": f"item {i}", "price": 9.99} for i in range(N)}


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServerProcess() as server:
        yield server.url


@pytest.fixture(scope="module")
def cache(redis_url: str) -> Iterator[Cache]:
    # a 10,000-key pipeline on a CPU shared with the server can exceed the 0.1 s default
    with Cache(redis_url, namespace=NS, redis_timeout=5.0) as c:
        yield c


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def _write_tag(cache: Cache, client: redis.Redis) -> None:
    deadline = time.monotonic() + 30
    while cache.stats().invalidation.reclaim_pending:  # the previous round's reclaim
        if time.monotonic() > deadline:
            raise TimeoutError("reclaim did not finish")
        time.sleep(0.001)
    cache.set_many(MAPPING, tags=[TAG])
    assert client.zcard(MEMBERS) == N


def _raw_del_pipeline(client: redis.Redis) -> None:
    members = client.zrange(MEMBERS, 0, -1)
    pipe = client.pipeline(transaction=False)
    for member in members:
        pipe.delete(KEYS.member_data_key(member))
    pipe.delete(MEMBERS)
    pipe.execute()


def _cases(cache: Cache, client: redis.Redis) -> dict[str, tuple[Setup, Target]]:
    """name -> (untimed setup of a round, the timed call)."""
    script = client.register_script(SEED_LUA)

    def write() -> None:
        _write_tag(cache, client)

    def write_then_clear_l1() -> None:
        _write_tag(cache, client)
        cache.l1.clear()

    def invalidate() -> object:
        return cache.invalidate_tag(TAG)

    return {
        "raw redis-py SMEMBERS + DEL pipeline (baseline)": (
            write,
            lambda: _raw_del_pipeline(client),
        ),
        "seed Lua SMEMBERS + DEL": (
            write,
            lambda: script(keys=[MEMBERS], args=[KEYS.data_key_prefix()]),
        ),
        "stratacache invalidate_tag (call; reclaim in background)": (write, invalidate),
        "stratacache invalidate_tag (call), empty L1": (write_then_clear_l1, invalidate),
    }


CASE_NAMES = [
    "raw redis-py SMEMBERS + DEL pipeline (baseline)",
    "seed Lua SMEMBERS + DEL",
    "stratacache invalidate_tag (call; reclaim in background)",
    "stratacache invalidate_tag (call), empty L1",
]


@pytest.mark.benchmark(group="invalidate one tag of 10k keys")
@pytest.mark.parametrize("name", CASE_NAMES)
def test_invalidate_tag(benchmark, cache: Cache, client: redis.Redis, name: str) -> None:
    setup, target = _cases(cache, client)[name]
    benchmark.pedantic(target, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert client.zcard(MEMBERS) == 0
