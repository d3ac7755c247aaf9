"""add() and incr(): conditional writes, atomic across instances (compare-and-set in Redis).

Run on a real standalone server and a real 3-master cluster; the sync twin is generated.
"""

from __future__ import annotations

import time

import pytest

from stratacache import MISSING, AsyncCache, SerializationError
from stratacache._bus_messages import Action, BusMessage, encode_message

from concurrency import AsyncTask, FakeClock, async_bus_settled, async_publish_raw, async_until

NS = "cond"
DEADLINE = 10.0


def make(target: tuple[str, bool], clock: FakeClock | None = None, **options: object) -> AsyncCache:
    url, cluster = target
    if clock is not None:
        options.setdefault("timer", clock)
        options.setdefault("clock", clock)
    options.setdefault("redis_timeout", 2.0)
    return AsyncCache(url, cluster=cluster, namespace=NS, **options)  # type: ignore[arg-type]


async def test_add_stores_only_when_absent(target: tuple[str, bool]) -> None:
    a, b = make(target), make(target)
    try:
        assert await a.add("k", "first") is True
        assert await b.add("k", "second") is False
        assert await b.get("k") == "first"
        assert await a.get("k") == "first"
        await a.delete("k")
        assert await b.add("k", "third") is True
        await async_until(lambda: "k" not in a.l1)
        assert await a.get("k") == "third"
    finally:
        await a.close()
        await b.close()


async def test_add_treats_dead_entries_as_absent(target: tuple[str, bool]) -> None:
    clock = FakeClock()
    cache = make(target, clock)
    try:
        await cache.set("tagged", 1, tags=["t"])
        await cache.invalidate_tag("t")
        assert await cache.add("tagged", 2) is True  # still in Redis, but invalidated
        assert await cache.get("tagged") == 2
        await cache.set("old", 1)
        await cache.invalidate_all()
        assert await cache.add("old", 2) is True  # written before the epoch bump
        await cache.set("short", 1, ttl=5)
        clock.advance(6)
        assert await cache.add("short", 2, ttl=60) is True  # logically expired
        assert await cache.get("short") == 2
    finally:
        await cache.close()


async def test_add_refuses_a_bad_value_before_writing(target: tuple[str, bool]) -> None:
    cache = make(target)
    try:
        with pytest.raises(SerializationError):
            await cache.add("k", object())
        assert await cache.get("k", "absent") == "absent"
    finally:
        await cache.close()


async def test_incr_keeps_expiry_and_tags(target: tuple[str, bool]) -> None:
    clock = FakeClock()
    cache = make(target, clock)
    other = make(target, clock)
    try:
        await cache.set("n", 41, ttl=10, tags=["counters"])
        assert await cache.incr("n") == 42
        assert await other.incr("n", -2) == 40
        await async_until(lambda: "n" not in cache.l1)  # the bus dropped the old value here
        assert await cache.get("n") == 40
        clock.advance(11)
        with pytest.raises(KeyError):
            await cache.incr("n")  # the incr did not extend the entry's life
        await cache.set("m", 1, tags=["counters"])
        await cache.incr("m")
        await cache.invalidate_tag("counters")
        # until other heard every bus message cache sent (the tag's included): before that,
        # a read of other may still trust its cached tag versions (the bus's latency)
        await async_bus_settled(cache, [other])
        assert await other.get("m") is None
    finally:
        await cache.close()
        await other.close()


async def test_incr_errors(target: tuple[str, bool]) -> None:
    cache = make(target)
    try:
        with pytest.raises(KeyError):
            await cache.incr("missing")
        await cache.set("s", "text")
        with pytest.raises(TypeError):
            await cache.incr("s")
        await cache.set("b", True)
        with pytest.raises(TypeError):
            await cache.incr("b")
        await cache.set("n", 1)
        with pytest.raises(TypeError):
            await cache.incr("n", 1.5)  # type: ignore[arg-type]
        assert await cache.get("n") == 1
    finally:
        await cache.close()


async def test_concurrent_incr_loses_no_increment(target: tuple[str, bool]) -> None:
    caches = [make(target) for _ in range(3)]
    try:
        await caches[0].set("hits", 0)

        async def bump(cache: AsyncCache) -> None:
            for _ in range(20):
                await cache.incr("hits")

        tasks = [AsyncTask(lambda c=c: bump(c)) for c in caches]  # type: ignore[misc]
        for task in tasks:
            await task.join()
        assert await caches[1].incr("hits", 0) == 60
    finally:
        for cache in caches:
            await cache.close()


async def test_add_and_incr_decide_on_redis_after_a_deaf_spell(target, raw) -> None:
    # A gap in another instance's sequence numbers: its deletion of "hits" may wait in its
    # outbox, so reads withhold what L2 holds from before (for the grace). add and incr
    # compare-and-set on what Redis holds now, and such a deletion lands after them: to
    # them the counter is live (they used to raise KeyError / overwrite it).
    # a generous heartbeat_timeout: a deaf spell of its own on a loaded machine would
    # resubscribe, and the gap would go unseen
    cache = make(target, recovery_grace=60.0, heartbeat_timeout=10.0)
    try:
        await cache.set("hits", 1)
        await cache.get("other", None)
        await async_until(lambda: cache.stats().bus_state == "healthy", DEADLINE)
        source = b"\x07" * 16
        for seq in (1, 3):  # 2 was "lost"
            message = BusMessage(source, seq, time.time(), Action.INVALIDATE_KEYS, ("x",))
            await async_publish_raw(raw, NS, encode_message(message))
        await async_until(lambda: cache.stats().bus_flushes_gap == 1, DEADLINE)
        assert await cache.get("hits", MISSING) is MISSING  # a read withholds it
        assert await cache.add("hits", 9) is False
        assert await cache.incr("hits") == 2
        assert await cache.get("hits") == 2  # written after the flush: served
    finally:
        await cache.close()


async def test_add_and_incr_without_redis() -> None:
    cache = AsyncCache(None)
    assert await cache.add("k", 1) is True
    assert await cache.add("k", 2) is False
    assert await cache.incr("k", 5) == 6
    with pytest.raises(KeyError):
        await cache.incr("missing")
