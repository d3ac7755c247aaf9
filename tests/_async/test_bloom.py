"""Bloom filters in Redis (``cache.bloom``): answers, round trips, the measured
false-positive rate, the guard of ``get_or_set`` / ``cached``, rebuilds without a window,
parameters that disagree. Real Redis, standalone and a 3-master cluster; the sync twin
is generated.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
import redis.cluster

from stratacache import (
    AsyncBloomFilter,
    AsyncCache,
    BloomFilterMismatch,
    BloomRebuildConflict,
    InvalidBloomParameters,
    _bloom,
)
from stratacache._keys import KeySpace

from concurrency import AsyncTask

NS = "t-bloom"


@pytest.fixture
async def cache(target: tuple[str, bool]):
    url, cluster = target
    # a generous budget: bulk calls hold Redis for a while on a loaded machine
    c = AsyncCache(url, cluster=cluster, namespace=NS, redis_timeout=5.0)
    yield c
    await c.close()


@pytest.fixture
async def other(target: tuple[str, bool]):
    """A second instance of the namespace (another process, as far as Redis can tell)."""
    url, cluster = target
    c = AsyncCache(url, cluster=cluster, namespace=NS, redis_timeout=5.0)
    yield c
    await c.close()


class RoundTrips:
    """Counts the calls the cache's Redis tier makes (one pipeline = one call)."""

    def __init__(self, cache: AsyncCache) -> None:
        tier = cache._tier
        assert tier is not None
        self.count = 0
        real = tier._call

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await real(*args, **kwargs)

        tier._call = counted  # type: ignore[method-assign]


async def script_calls(raw: Any, cluster: bool) -> int:
    """EVAL + EVALSHA calls Redis has run (on every master of a cluster)."""
    await raw.ping()
    nodes = raw.get_primaries() if cluster else [None]
    total = 0
    for node in nodes:
        info = (
            await raw.info("commandstats", target_nodes=node)
            if cluster
            else await raw.info("commandstats")
        )
        for name in ("cmdstat_eval", "cmdstat_evalsha"):
            total += int(info.get(name, {}).get("calls", 0))
    return total


async def test_add_and_might_contain_across_instances(cache: AsyncCache, other: AsyncCache) -> None:
    users = cache.bloom("users", 1000, 0.01)
    assert cache.bloom("users", 1000, 0.01) is users
    assert isinstance(users, AsyncBloomFilter)
    # never built: every answer is "maybe", and an add records nothing yet
    assert await users.might_contain("nobody") is True
    assert users.stats().unknown == 1
    await users.rebuild([], progress=False)
    assert await users.might_contain("nobody") is False
    assert await users.add("alice") is True
    assert await users.add("alice") is False  # every bit was set already
    assert await users.add(42) is True
    theirs = other.bloom("users", 1000, 0.01)
    assert await theirs.might_contain("alice") is True  # seen by every instance
    assert await theirs.might_contain("42") is True  # 42, "42" and b"42" are one item
    assert await theirs.might_contain(b"42") is True
    assert await theirs.might_contain("bob") is False
    assert await theirs.might_contain_many(["bob", "alice", 42, "carol"]) == [
        False,
        True,
        True,
        False,
    ]
    stats = theirs.stats()
    assert stats.checks == 8 and stats.absent == 3 and stats.unknown == 0
    with pytest.raises(TypeError):
        await users.add(1.5)
    with pytest.raises(TypeError):
        await users.might_contain(None)


async def test_bad_parameters_are_typed_errors(cache: AsyncCache) -> None:
    for capacity, rate in ((0, 0.01), (100, 0.0), (100, 1.0), (100, float("nan")), (-1, 0.5)):
        with pytest.raises(InvalidBloomParameters):
            cache.bloom("x", capacity, rate)
    with pytest.raises(ValueError):
        cache.bloom("x", 100, 0.01, refresh_interval=0)
    with pytest.raises(ValueError):
        cache.bloom("", 100, 0.01)
    cache.bloom("x", 100, 0.01)
    with pytest.raises(ValueError, match="other parameters"):
        cache.bloom("x", 200, 0.01)
    with pytest.raises(ValueError, match="Redis"):
        AsyncCache(namespace=NS).bloom("x", 100, 0.01)


async def test_other_parameters_on_the_same_name_are_refused(
    cache: AsyncCache, other: AsyncCache
) -> None:
    """Bits laid out for another size would read as absent: refused, not answered."""
    mine = cache.bloom("ids", 1000, 0.01)
    await mine.rebuild(["a", "b"], progress=False)
    theirs = other.bloom("ids", 5000, 0.01)
    with pytest.raises(BloomFilterMismatch, match="the filter in Redis has"):
        await theirs.might_contain("a")
    with pytest.raises(BloomFilterMismatch):
        await theirs.add("c")
    assert theirs.stats().pending == 0  # refused for good: not queued
    assert await mine.might_contain("a") is True


async def test_add_many_is_one_round_trip(
    cache: AsyncCache, raw: Any, target: tuple[str, bool]
) -> None:
    _, cluster = target
    ids = cache.bloom("ids", 10_000, 0.01, shards=4)
    await ids.rebuild([], progress=False)
    trips = RoundTrips(cache)
    before = await script_calls(raw, cluster)
    items = [f"user:{i}" for i in range(900)]
    assert await ids.add_many(items) == 900
    # one pipeline, one script call per shard (redis-py sends a cluster pipeline to
    # each master involved once)
    assert trips.count == 1
    assert await script_calls(raw, cluster) - before == 4
    assert await ids.might_contain_many(items) == [True] * 900
    assert trips.count == 2
    assert await ids.might_contain("user:1") is True
    assert trips.count == 3
    # more than a batch: one round trip per 1000 items
    assert await ids.add_many(f"more:{i}" for i in range(2500)) == 2500
    assert trips.count == 6
    assert await ids.add_many([]) == 0
    assert trips.count == 6


async def test_shards_spread_over_the_cluster(cache: AsyncCache, raw: Any, target) -> None:
    _, cluster = target
    if not cluster:
        pytest.skip("a cluster matter")
    ids = cache.bloom("spread", 10_000, 0.01, shards=12)
    await ids.rebuild((f"id{i}" for i in range(500)), progress=False)
    holders = set()
    for shard in range(12):
        state = KeySpace(NS).bloom_keys("spread", shard)[0]
        assert await raw.exists(state) == 1  # (and the client has learnt the slots)
        holders.add(raw.get_node_from_key(state).name)
    assert len(holders) == 3  # every master holds some shards


async def test_measured_false_positive_rate_matches_the_configured_one(
    cache: AsyncCache,
) -> None:
    ids = cache.bloom("fpr", 20_000, 0.01)
    assert await ids.rebuild(range(20_000), progress=False) == 20_000
    # no false negatives
    assert all(await ids.might_contain_many(range(20_000)))
    answers = await ids.might_contain_many(range(1_000_000, 1_100_000))
    rate = sum(answers) / len(answers)
    assert 0.008 <= rate <= 0.012, rate  # within 20 % of 1 %


async def test_guard_skips_the_loader_for_absent_ids(cache: AsyncCache) -> None:
    users = cache.bloom("users", 1000, 0.01)
    await users.rebuild(["1", "2", "3"], progress=False)
    calls: list[str] = []

    def loader(key: str) -> Any:
        def load() -> Any:
            calls.append(key)
            return {"id": key}

        return load

    # present: the loader runs (and the value is cached as usual)
    assert await cache.get_or_set("user:1", loader("1"), bloom=users, bloom_item="1") == {"id": "1"}
    assert calls == ["1"]
    # absent: the default, no loader, no L2 read, counted
    assert await cache.get_or_set("user:9", loader("9"), bloom=users, bloom_item=9) is None
    assert (
        await cache.get_or_set(
            "user:10", loader("10"), bloom=users, bloom_item=10, bloom_default="nope"
        )
        == "nope"
    )
    assert calls == ["1"]
    assert cache.stats().bloom_rejected == 2
    assert cache.stats().l2_misses == 1  # only user:1 went to L2
    # without bloom_item the key itself is the item
    await users.add("user:20")
    assert await cache.get_or_set("user:20", loader("20"), bloom=users) == {"id": "20"}
    assert await cache.get_or_set("user:21", loader("21"), bloom=users) is None
    assert calls == ["1", "20"]
    assert cache.stats().bloom_rejected == 3
    with pytest.raises(ValueError):
        await cache.get_or_set("", loader("x"), bloom=users)


async def test_guard_on_the_decorator(cache: AsyncCache) -> None:
    users = cache.bloom("users", 1000, 0.01)
    await users.rebuild([1, 2], progress=False)
    calls: list[int] = []

    @cache.cached(key="user:{user_id}", bloom=users, bloom_item=lambda user_id: user_id)
    async def get_user(user_id: int) -> Any:
        calls.append(user_id)
        return {"id": user_id}

    @cache.cached(bloom=users, bloom_default="missing")
    async def by_key(name: str) -> Any:
        calls.append(-1)
        return name

    assert await get_user(1) == {"id": 1}
    assert await get_user(1) == {"id": 1}  # L1
    assert await get_user(7) is None
    assert await get_user(user_id=8) is None
    assert calls == [1]
    assert cache.stats().bloom_rejected == 2
    assert await by_key("z") == "missing"  # its cache key is not in the filter
    await users.add(by_key.cache_key("z"))
    assert await by_key("z") == "z"
    assert calls == [1, -1]


async def test_rebuild_has_no_window(cache: AsyncCache, other: AsyncCache, raw: Any) -> None:
    """A reader never sees a present id as absent while the filter is rebuilt; adds made
    during the rebuild (by another instance) survive the switch; items left out of the
    new source are gone after it; the old generation is deleted."""
    mine = cache.bloom("live", 20_000, 0.01, shards=3)
    theirs = other.bloom("live", 20_000, 0.01, shards=3)
    old = [f"old:{i}" for i in range(3000)]
    kept = old[:2000]
    await mine.rebuild(old, progress=False)
    assert all(await theirs.might_contain_many(old))
    done = False
    reads = 0
    wrong: list[str] = []
    added: list[str] = []

    async def reader() -> None:
        nonlocal reads
        while not done:
            answers = await theirs.might_contain_many(kept[:300] + added[-50:])
            reads += 1
            wrong.extend(x for x, ok in zip(kept[:300] + added[-50:], answers) if not ok)

    progress: list[tuple[int, Any]] = []
    task = AsyncTask(reader)
    # the system of record: an id is written there, then added; bulk ids make the rebuild
    # long enough (a dozen batches) for the writer to add ids while it runs
    database = list(kept) + [f"bulk:{i}" for i in range(10_000)]

    snapshot: list[str] = []

    def source() -> Any:
        # a cursor opened after the rebuild began, seeing the database as it was then (a
        # generator: no len(), so the callback's total is None); the ids written after
        # that reach the new generation only through the adds made during the rebuild
        snapshot.extend(database)
        for i, item in enumerate(snapshot):
            if i % 1000 == 999:
                time.sleep(0.002)  # Cache: the writer thread gets the GIL between batches
            yield item

    async def writer() -> None:
        for i in range(100_000):
            if done:
                return
            item = f"new:{i}"
            database.append(item)
            await theirs.add(item)
            added.append(item)

    writing = AsyncTask(writer)
    try:
        count = await mine.rebuild(source(), progress=lambda n, total: progress.append((n, total)))
    finally:
        done = True
        await task.join()
        await writing.join()
    assert count == len(snapshot) >= 12_000
    assert reads > 0
    assert len(database) > len(snapshot)  # ids were written during the rebuild
    assert wrong == []
    assert (1000, None) in progress and progress[-1] == (count, None)  # per batch
    # every add made during the rebuild is still there, and the new source is
    assert all(await theirs.might_contain_many(kept + added))
    # the 1000 left out read absent now, bar false positives
    dropped = await theirs.might_contain_many(old[2000:])
    assert sum(dropped) < 50
    # one generation per shard is left
    for shard in range(3):
        _, a, b = KeySpace(NS).bloom_keys("live", shard)
        assert await raw.exists(a) + await raw.exists(b) == 1


async def test_a_failed_rebuild_keeps_the_current_generation(cache: AsyncCache) -> None:
    ids = cache.bloom("ids", 1000, 0.01)
    await ids.rebuild(["a", "b"], progress=False)

    def bad_source() -> Any:
        yield "c"
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError):
        await ids.rebuild(bad_source(), progress=False)
    assert await ids.might_contain_many(["a", "b", "zz"]) == [True, True, False]
    with pytest.raises(TypeError):
        await ids.rebuild(["ok", 1.5], progress=False)
    assert await ids.might_contain_many(["a", "b"]) == [True, True]
    # an add after the failed rebuild goes to the current generation only, and is read
    assert await ids.add("d") is True
    assert await ids.might_contain("d") is True


async def test_local_copy_answers_present_items_without_redis(
    cache: AsyncCache, other: AsyncCache
) -> None:
    mine = cache.bloom("loc", 5000, 0.01, local=True, refresh_interval=3600)
    theirs = other.bloom("loc", 5000, 0.01)
    await theirs.rebuild([f"u{i}" for i in range(100)], progress=False)
    assert await mine.refresh() is True
    trips = RoundTrips(cache)
    assert all(await mine.might_contain_many([f"u{i}" for i in range(100)]))
    assert trips.count == 0
    assert mine.stats().local_hits == 100
    # added by another instance after the copy was taken: the copy says absent, Redis
    # is asked and says present (never a false "absent" from a stale copy)
    await theirs.add("late")
    assert await mine.might_contain("late") is True
    assert trips.count == 1
    assert await mine.might_contain("never") is False
    assert trips.count == 2
    # our own adds show in the copy at once
    await mine.add("mine")
    before = trips.count
    assert await mine.might_contain("mine") is True
    assert trips.count == before


async def test_a_rebuild_begun_meanwhile_supersedes_this_one(
    cache: AsyncCache, target: tuple[str, bool]
) -> None:
    url, cluster = target
    ids = cache.bloom("ids", 5000, 0.01, shards=3)
    await ids.rebuild(["a", "b"], progress=False)
    # another process begins a rebuild of the same filter while ours reads its source
    plain = redis.cluster.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)

    def source() -> Any:
        yield from (f"x{i}" for i in range(1000))  # one batch sent
        for shard in range(3):
            keys = KeySpace(NS).bloom_keys("ids", shard)
            plain.eval(_bloom.BEGIN, 3, *keys, ids.params.signature, "their-token")
        yield from (f"y{i}" for i in range(1000))

    try:
        with pytest.raises(BloomRebuildConflict):
            await ids.rebuild(source(), progress=False)
    finally:
        plain.close()
    # the current generation still serves; ours did not switch, theirs is left alone
    assert await ids.might_contain_many(["a", "b", "x1"]) == [True, True, False]
    # a rebuild that completes supersedes the abandoned one
    await ids.rebuild(["a", "c"], progress=False)
    assert (await ids.might_contain_many(["a", "c"])) == [True, True]
