"""Async only: cancellation around a background early refresh leaves no task and no lease
behind (the sync cache has nothing to cancel: its refreshes are threads)."""

from __future__ import annotations

import asyncio

from stratacache import AsyncCache
from stratacache._keys import KeySpace
from stratacache._primitives import AsyncRedis

from concurrency import FakeClock, async_until

NS = "rc"


def refresh_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "stratacache-refresh"]


async def test_cancelled_callers_and_close_leave_no_task_and_no_lease(redis_url: str) -> None:
    clock = FakeClock()
    cache = AsyncCache(
        redis_url, namespace=NS, timer=clock, clock=clock, rand=lambda: 0.0, redis_timeout=2.0
    )
    raw = AsyncRedis.from_url(redis_url)
    lease = KeySpace(NS).lease_key("k")
    gate = asyncio.Event()
    entered = asyncio.Event()
    calls = 0

    async def load() -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            entered.set()
            await gate.wait()
        return calls

    try:
        assert await cache.get_or_set("k", load, ttl=30, early_refresh=True) == 1
        # a hit starts a refresh that blocks in the loader, holding the lease
        assert await cache.get_or_set("k", load, ttl=30, early_refresh=True) == 1
        await asyncio.wait_for(entered.wait(), 30)
        assert len(refresh_tasks()) == 1
        assert await raw.exists(lease) == 1
        # the entry expires; a caller misses, waits on the refresh's lease, and is cancelled
        clock.advance(31)
        caller = asyncio.ensure_future(cache.get_or_set("k", load, ttl=30, early_refresh=True))
        await async_until(lambda: cache.stats().lease_waits >= 1, 30)
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        assert caller.cancelled()
        assert len(refresh_tasks()) == 1  # the refresh is not the caller's: it goes on
        gate.set()
        await async_until(lambda: cache._refresher.running() == 0, 30)
        assert refresh_tasks() == []
        assert await raw.exists(lease) == 0
        assert cache.l1.peek("k") == 2
        # close while a refresh is blocked: cancelled, its lease given back
        gate.clear()
        entered.clear()
        assert await cache.get_or_set("k", load, ttl=30, early_refresh=True) == 2
        await asyncio.wait_for(entered.wait(), 30)
        assert await raw.exists(lease) == 1
    finally:
        await cache.close()
    assert refresh_tasks() == []
    assert await raw.exists(lease) == 0
    # no job starts after close
    assert await cache.get_or_set("k", load, ttl=30, early_refresh=True) == 2
    assert refresh_tasks() == []
    await raw.aclose()
