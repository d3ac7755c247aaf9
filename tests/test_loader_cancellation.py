"""Cancellation and close() around loads that run under a time limit (docs/loader.md).

Async only (a thread cannot be cancelled). A load under ``soft_timeout`` or
``hard_timeout`` runs as a task of its own that holds the L1 ticket and the lease: a
cancelled caller must leave no task running for nobody and no lease in Redis, and
``close()`` must not leave a background load behind. Loaders block on events the test
controls; real Redis.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from stratacache import AsyncCache
from stratacache._keys import KeySpace
from stratacache._primitives import AsyncRedis
from stratacache.testing import RedisServerProcess

from concurrency import FakeClock, async_until

NS = "ldc"
KEYS = KeySpace(NS)


class Gate:
    """A loader that blocks until ``gate`` is set; notes a start and a cancellation."""

    def __init__(self, value: Any = "new") -> None:
        self.value = value
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        self.started.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return self.value


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def raw(redis_url: str):
    client = AsyncRedis.from_url(redis_url)
    yield client
    await client.aclose()


def make(url: str, clock: FakeClock, **options: Any) -> AsyncCache:
    options.setdefault("redis_timeout", 2.0)
    options.setdefault("bus", False)
    options.setdefault("lease_ttl", 300)  # only a give-back removes a lease in these tests
    return AsyncCache(url, namespace=NS, timer=clock, clock=clock, **options)


async def nothing_left(cache: AsyncCache, raw: Any, key: str) -> None:
    await async_until(lambda: cache._loads.in_flight() == 0, 10)
    assert cache._flights == {}
    assert not await raw.exists(KEYS.lease_key(key))
    # the L1 ticket was given back: a later fill is installed
    assert await cache.get_or_set(key, lambda: "later") == "later"
    assert cache.l1.peek(key) == "later"


@pytest.mark.parametrize("limits", [{"soft_timeout": 30}, {"hard_timeout": 30}])
async def test_the_last_caller_cancelled_cancels_the_load(
    redis_url: str, clock: FakeClock, raw: Any, limits: dict[str, float]
) -> None:
    cache = make(redis_url, clock, fail_safe=True, **limits)
    load = Gate()
    try:
        caller = asyncio.ensure_future(cache.get_or_set("k", load))
        await asyncio.wait_for(load.started.wait(), 30)
        assert await raw.exists(KEYS.lease_key("k"))
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert load.cancelled.is_set()  # awaited before the cancellation propagated
        await nothing_left(cache, raw, "k")
    finally:
        load.gate.set()
        await cache.close()


async def test_a_cancelled_caller_leaves_the_load_to_the_others(
    redis_url: str, clock: FakeClock, raw: Any
) -> None:
    cache = make(redis_url, clock, soft_timeout=30)
    load = Gate()
    try:
        first = asyncio.ensure_future(cache.get_or_set("k", load))
        await asyncio.wait_for(load.started.wait(), 30)
        second = asyncio.ensure_future(cache.get_or_set("k", load))
        await async_until(lambda: cache.stats().coalesced == 1)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert not load.cancelled.is_set()
        load.gate.set()
        assert await second == "new"
        assert load.calls == 1
        await async_until(lambda: cache._loads.in_flight() == 0)
        assert not await raw.exists(KEYS.lease_key("k"))
    finally:
        load.gate.set()
        await cache.close()


async def test_cancelling_a_caller_answered_early_leaves_the_background_load_running(
    redis_url: str, clock: FakeClock, raw: Any
) -> None:
    cache = make(redis_url, clock, fail_safe=True, soft_timeout=0)
    load = Gate()
    try:
        await cache.set("k", "old", ttl=10)
        clock.advance(11)
        assert await cache.get_or_set("k", load) == "old"  # detached: a background load
        await asyncio.wait_for(load.started.wait(), 30)
        # a caller that joins the background load and is cancelled does not stop it
        joined = asyncio.ensure_future(cache.get_or_set("k", load, soft_timeout=None))
        await async_until(lambda: cache.stats().coalesced == 1)
        joined.cancel()
        with pytest.raises(asyncio.CancelledError):
            await joined
        assert not load.cancelled.is_set()
        load.gate.set()
        await async_until(lambda: cache._loads.in_flight() == 0)
        assert cache.l1.peek("k") == "new"
        assert not await raw.exists(KEYS.lease_key("k"))
    finally:
        load.gate.set()
        await cache.close()


async def test_close_waits_for_a_background_load_then_cancels_it(
    redis_url: str, clock: FakeClock, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make(redis_url, clock, fail_safe=True, soft_timeout=0, close_timeout=0.2)
    load = Gate()
    try:
        await cache.set("k", "old", ttl=10)
        clock.advance(11)
        assert await cache.get_or_set("k", load) == "old"
        await asyncio.wait_for(load.started.wait(), 30)
        with caplog.at_level(logging.WARNING, logger="stratacache.loader"):
            await cache.close()
        assert load.cancelled.is_set()
        assert cache._loads.in_flight() == 0
        assert any("cancelled" in r.getMessage() for r in caplog.records)
        # the cancelled load gave its lease back before close() closed the client
        assert not await raw.exists(KEYS.lease_key("k"))
    finally:
        load.gate.set()
        await cache.close()


async def test_close_lets_a_background_load_finish_within_close_timeout(
    redis_url: str, clock: FakeClock, raw: Any
) -> None:
    cache = make(redis_url, clock, fail_safe=True, soft_timeout=0, close_timeout=30)
    other = make(redis_url, clock)
    load = Gate()
    try:
        await cache.set("k", "old", ttl=10)
        clock.advance(11)
        assert await cache.get_or_set("k", load) == "old"
        await asyncio.wait_for(load.started.wait(), 30)
        closing = asyncio.ensure_future(cache.close())
        await asyncio.sleep(0)
        assert not closing.done()
        load.gate.set()
        await closing
        assert not load.cancelled.is_set()
        assert await other.get("k") == "new"  # written to L2 before close() went on
    finally:
        load.gate.set()
        await cache.close()
        await other.close()


async def test_redis_paused_while_a_background_load_completes(
    redis_server_factory: Callable[..., RedisServerProcess], clock: FakeClock
) -> None:
    server = redis_server_factory()
    # a short budget: the fill's write to the paused Redis fails fast; a lease that
    # outlives the test: only a give-back removes it
    cache = make(server.url, clock, fail_safe=True, soft_timeout=0, redis_timeout=0.2)
    raw = AsyncRedis.from_url(server.url)
    load = Gate()
    try:
        await cache.set("k", "old", ttl=10)
        clock.advance(11)
        assert await cache.get_or_set("k", load) == "old"
        await asyncio.wait_for(load.started.wait(), 30)
        server.pause()
        load.gate.set()
        await async_until(lambda: cache._loads.in_flight() == 0, 30)
        # no error reached anyone; L1 serves the new value meanwhile
        assert cache.l1.peek("k") == "new"
        assert await cache.get("k") == "new"
        assert cache.stats().errors >= 1
        # a fill is not a write (nothing to apply later), but its lease is given back
        # through the outbox once Redis answers: nobody waits on a lease held by nobody
        assert cache.stats().invalidation.outbox_pending >= 1
        server.resume()
        await async_until(lambda: cache.stats().invalidation.outbox_pending == 0, 30)
        assert not await raw.exists(KEYS.lease_key("k"))
    finally:
        load.gate.set()
        if server.running:
            server.resume()
        await cache.close()
        await raw.aclose()
