"""Invalidations under Redis faults, on private real servers that the tests kill and
restart: the outbox, dead letters and their replay, the epoch bump when the outbox
overflows, and the failover Redis. The servers keep an fsync-always AOF, so a killed and
restarted server still holds every entry written before the kill: an invalidation that
was lost would leave it there, which is what these tests look for.
"""

from __future__ import annotations

import pytest

from stratacache import MISSING, AsyncCache
from stratacache._keys import KeySpace
from stratacache._primitives import AsyncRedis, async_sleep

from concurrency import async_until

NS = "faults"
DEADLINE = 20.0
DURABLE = ["--appendonly", "yes", "--appendfsync", "always"]

pytestmark = pytest.mark.slow


def make(url: str, **options: object) -> AsyncCache:
    options.setdefault("redis_timeout", 0.5)
    options.setdefault("retry_backoff", 0.02)
    options.setdefault("retry_backoff_max", 0.1)
    options.setdefault("breaker_cooldown", 0.05)
    return AsyncCache(url, namespace=NS, **options)  # type: ignore[arg-type]


async def stored(url: str, keys: list[str]) -> list[str]:
    """The keys whose entries are still in the Redis at ``url``."""
    client = AsyncRedis.from_url(url)
    try:
        ks = KeySpace(NS)
        return [key for key in keys if await client.exists(ks.data_key(key))]
    finally:
        await client.aclose()


async def test_redis_killed_during_500_invalidations_loses_none(redis_server_factory) -> None:
    server = redis_server_factory(extra_args=DURABLE)
    cache = make(server.url)
    keys = [f"k{i}" for i in range(500)]
    try:
        await cache.set_many({key: key for key in keys})
        await cache.set("control", 1)  # never invalidated: proves the restart kept the data
        assert len(await stored(server.url, keys)) == 500
        for i, key in enumerate(keys):
            if i == 200:
                server.kill()
            # never raises; with Redis down the count is what L1 still held (once the bus
            # notices the outage it empties L1) and the L2 part waits for a retry
            removed = await cache.invalidate(key)
            assert removed == 1 if i < 200 else removed in (0, 1)
            assert cache.l1.peek(key, MISSING) is MISSING
        assert cache.stats().invalidation.queue_size == 300
        server.restart()
        await async_until(lambda: cache.stats().invalidation.queue_size == 0, DEADLINE)
        assert await stored(server.url, [*keys, "control"]) == ["control"]
        assert cache.dead_letters() == []
        stats = cache.stats().invalidation
        assert stats.failures["primary"] >= 300
        assert stats.invalidations["retry"] >= 300
    finally:
        await cache.close()


async def test_refused_invalidations_are_dead_letters_and_replay_applies_them(
    redis_server_factory,
) -> None:
    server = redis_server_factory(extra_args=DURABLE)
    cache = make(server.url)
    client = AsyncRedis.from_url(server.url)
    ks = KeySpace(NS)
    try:
        await cache.set("doomed", 1, tags=["t"])
        # keys of the wrong type: Redis refuses both scripts (WRONGTYPE), for good
        await client.set(ks.dependents_key("doomed"), "not a set")
        await client.hset(ks.tag_key("t"), "x", "not a version")
        await cache.invalidate("doomed", reason="price changed")
        await cache.invalidate_tag("t")
        by_kind = {letter.kind: letter for letter in cache.dead_letters()}
        assert by_kind["key"].target == "doomed"
        assert by_kind["key"].attempts == 1
        assert by_kind["key"].reason == "price changed"
        assert by_kind["key"].redis == "primary"
        assert by_kind["tag"].target == "t"
        assert cache.stats().invalidation.dead_letters == 2
        assert cache.stats().invalidation.queue_size == 0

        await client.delete(ks.dependents_key("doomed"))
        await client.delete(ks.tag_key("t"))
        assert await cache.replay_dead_letters() == 2
        assert cache.dead_letters() == []
        assert await stored(server.url, ["doomed"]) == []
        # the replayed tag invalidation raised the tag's version
        assert int(await client.get(ks.tag_key("t")) or 0) > 0
        other = make(server.url)
        try:
            await other.set("tagged", 1, tags=["t"])
            assert await other.get("tagged") == 1  # written after the replayed bump
        finally:
            await other.close()
    finally:
        await client.aclose()
        await cache.close()


async def test_a_full_outbox_bumps_the_epoch_everywhere(redis_server_factory) -> None:
    server = redis_server_factory(extra_args=DURABLE)
    cache = make(server.url, outbox_size=3)
    # reads right after the outage: without the grace that reloads older entries then
    # (tested in test_outbox_faults.py), so that what is read here is what L2 holds
    bystander = make(server.url, recovery_grace=0)
    keys = [f"k{i}" for i in range(6)]
    try:
        await cache.set_many({key: key for key in keys})
        for key in keys:
            assert await bystander.get(key) == key
        server.kill()
        for key in keys[:5]:
            await cache.invalidate(key)  # the 4th and 5th do not fit in the outbox
        server.restart()
        # the epoch bump covers everything that could not be queued (and the rest)
        await async_until(lambda: cache.stats().invalidation.epoch_bumps == 1, DEADLINE)
        assert cache.stats().invalidation.queue_size == 0
        await async_until(lambda: len(bystander.l1) == 0, DEADLINE)
        for key in keys:  # k5 was never invalidated, but the epoch makes it a miss too
            assert await bystander.get(key, MISSING) is MISSING
        await cache.set("k0", "new")
        # served to the other instance (polled: its bus may still be hearing again after
        # the restart, and a call of it may meet its breaker's last cooldown)
        waited = 0.0
        while await bystander.get("k0") != "new":
            assert waited < DEADLINE, "the write after the epoch bump is not served"
            await async_sleep(0.05)
            waited += 0.05
    finally:
        await cache.close()
        await bystander.close()


async def test_a_write_after_a_failed_invalidation_never_brings_the_old_value_back(
    redis_server_factory,
) -> None:
    server = redis_server_factory(extra_args=DURABLE)
    cache = make(server.url)
    try:
        await cache.set("k", "old")
        await cache.set("child", "derived")
        await cache.add_dependency("child", "k")
        server.pause()
        await cache.invalidate("k")  # times out: pending in the outbox
        server.resume()
        await cache.set("k", "new")  # newer than the pending invalidation...
        await async_until(lambda: cache.stats().invalidation.queue_size == 0, DEADLINE)
        # ...which is applied all the same: it reaches k's dependents too (so "new" may be
        # deleted with it: a miss, never the old value). The op leaves the outbox once its
        # own key is applied; the dependents' level follows in the same cascade, so poll.
        waited = 0.0
        while await stored(server.url, ["child"]) != []:
            assert waited < DEADLINE, "the pending invalidation never reached k's dependent"
            await async_sleep(0.02)
            waited += 0.02
        cache.l1.clear()
        assert await cache.get("k", MISSING) in ("new", MISSING)
    finally:
        if server.running:
            server.resume()
        await cache.close()


async def test_failover_redis_gets_every_invalidation_and_either_may_fail(
    redis_server_factory,
) -> None:
    primary = redis_server_factory(extra_args=DURABLE)
    failover = redis_server_factory(extra_args=DURABLE)
    cache = make(primary.url, failover=failover.url)
    # an instance that uses the failover Redis as its L2 (another region, say)
    remote = make(failover.url)
    try:
        for key in ("a", "b", "c", "control"):
            await cache.set(key, key)
            await remote.set(key, key)
            assert await remote.get(key) == key
        assert await cache.invalidate("a") == 1
        assert await stored(primary.url, ["a"]) == []
        assert await stored(failover.url, ["a"]) == []
        # the failover's own bus carried it to the remote instance's L1
        await async_until(lambda: remote.l1.peek("a", MISSING) is MISSING, DEADLINE)

        failover.kill()
        assert await cache.invalidate("b") == 1  # tolerated: the primary took it
        assert await stored(primary.url, ["b"]) == []
        stats = cache.stats().invalidation
        assert stats.failures["failover"] >= 1
        assert stats.failures["primary"] == 0
        failover.restart()
        await async_until(lambda: cache.stats().invalidation.queue_size == 0, DEADLINE)
        assert await stored(failover.url, ["b", "control"]) == ["control"]

        primary.kill()
        await cache.invalidate("c")  # tolerated: the failover took it
        assert await stored(failover.url, ["c"]) == []
        assert cache.stats().invalidation.failures["primary"] >= 1
        primary.restart()
        await async_until(lambda: cache.stats().invalidation.queue_size == 0, DEADLINE)
        assert await stored(primary.url, ["c", "control"]) == ["control"]
    finally:
        await cache.close()
        await remote.close()
