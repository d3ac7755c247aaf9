"""The loader's soft/hard timeouts and its circuit breaker (docs/loader.md), written once
for AsyncCache; Cache runs the generated twin (its loads run in worker threads).

Loaders block on an event the test controls, so every outcome is decided by the test,
not by how fast a busy machine runs: a timeout of ~0.1-0.3 s only has to pass while the
loader is held. ``soft_timeout=0`` answers with the fail-safe value at once, which makes
"a caller without one keeps waiting" checkable without a clock. The breaker runs on an
injected clock. Real Redis: standalone, and a 3-master cluster for the lease case.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import pytest

from stratacache import AsyncCache, LoaderTimeout, LoaderUnavailable
from stratacache._keys import KeySpace
from stratacache._primitives import AsyncRedis, AsyncRedisCluster, async_sleep

from concurrency import AsyncEvent, AsyncTask, FakeClock, async_until, async_wait_event

NS = "ld"
KEYS = KeySpace(NS)
IS_ASYNC = inspect.iscoroutinefunction(AsyncCache.get_or_set)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(url: str, clock: FakeClock, cluster: bool = False, **options: Any) -> AsyncCache:
    options.setdefault("redis_timeout", 2.0)
    options.setdefault("bus", False)
    return AsyncCache(url, cluster=cluster, namespace=NS, timer=clock, clock=clock, **options)


class Gate:
    """A loader that blocks until the test opens the gate; counts calls, notes a
    cancellation (async only: a thread cannot be cancelled)."""

    def __init__(self, value: Any = "new") -> None:
        self.value = value
        self.started = AsyncEvent()
        self.gate = AsyncEvent()
        self.cancelled = AsyncEvent()
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        self.started.set()
        try:
            await self.gate.wait()
        except BaseException:
            self.cancelled.set()
            raise
        return self.value


async def expired_entry(cache: AsyncCache, clock: FakeClock, key: str = "k") -> None:
    """``key`` holds "old", expired a second ago (a fail-safe value, in L1 and L2)."""
    await cache.set(key, "old", ttl=10)
    clock.advance(11)


@pytest.fixture
async def raw(redis_url: str):
    client = AsyncRedis.from_url(redis_url)
    yield client
    await client.aclose()


# -- soft timeout ------------------------------------------------------------------------


async def test_soft_timeout_serves_the_stale_value_and_caches_the_late_result(
    redis_url: str, clock: FakeClock, raw: Any
) -> None:
    cache = make(redis_url, clock, fail_safe=True, soft_timeout=0.1)
    other = make(redis_url, clock)
    load = Gate()
    try:
        await expired_entry(cache, clock)
        assert await cache.get_or_set("k", load) == "old"
        stats = cache.stats()
        assert stats.loader_soft_timeouts == 1
        assert stats.stale_served == 1
        assert stats.loader_background_loads == 1
        # a second caller joins the running load: no second loader call
        assert await cache.get_or_set("k", load, soft_timeout=0) == "old"
        await async_until(lambda: load.calls > 0)  # (sync: the load's thread may start late)
        assert load.calls == 1
        load.gate.set()
        await async_until(lambda: cache.stats().loader_background_loads == 0)
        assert cache.stats().loader_background_completed == 1
        assert await cache.get("k") == "new"  # L1
        assert await other.get("k") == "new"  # L2, written under the lease
        assert not await raw.exists(KEYS.lease_key("k"))
    finally:
        load.gate.set()
        await cache.close()
        await other.close()


async def test_without_a_stale_value_the_caller_waits_past_the_soft_timeout(
    redis_url: str, clock: FakeClock
) -> None:
    # soft_timeout=0: a caller with a fail-safe value would be answered at once
    cache = make(redis_url, clock, fail_safe=True, soft_timeout=0)
    load = Gate()
    try:
        caller = AsyncTask(lambda: cache.get_or_set("fresh", load))
        await async_wait_event(load.started)
        load.gate.set()
        assert await caller.join() == "new"
        assert cache.stats().loader_soft_timeouts == 0
    finally:
        load.gate.set()
        await cache.close()


async def test_an_invalidation_during_a_background_load_wins(
    redis_url: str, clock: FakeClock, raw: Any
) -> None:
    cache = make(redis_url, clock, fail_safe=True, soft_timeout=0)
    other = make(redis_url, clock)
    load = Gate()
    try:
        await expired_entry(cache, clock)
        assert await cache.get_or_set("k", load) == "old"
        await async_wait_event(load.started)
        await cache.delete("k")  # revokes the lease and the L1 ticket of the load
        load.gate.set()
        await async_until(lambda: cache.stats().loader_background_loads == 0)
        assert cache.stats().fills_refused >= 1
        assert await cache.get("k") is None
        assert await other.get("k") is None
        assert not await raw.exists(KEYS.lease_key("k"))
    finally:
        load.gate.set()
        await cache.close()
        await other.close()


# -- hard timeout ------------------------------------------------------------------------


async def test_hard_timeout_raises_loader_timeout(
    redis_url: str, clock: FakeClock, raw: Any
) -> None:
    cache = make(redis_url, clock, hard_timeout=0.2)
    load = Gate()
    try:
        with pytest.raises(LoaderTimeout):
            await cache.get_or_set("k", load)
        assert cache.stats().loader_hard_timeouts == 1
        if IS_ASYNC:
            # the async loader is cancelled and the lease given back
            await async_wait_event(load.cancelled)
            await async_until(lambda: cache.stats().loader_background_loads == 0)
            assert not await raw.exists(KEYS.lease_key("k"))
            assert await cache.get("k") is None
        else:
            # a thread cannot be cancelled: it finishes and its result is cached
            load.gate.set()
            await async_until(lambda: cache.stats().loader_background_loads == 0)
            assert await cache.get("k") == "new"
            assert not await raw.exists(KEYS.lease_key("k"))
    finally:
        load.gate.set()
        await cache.close()


async def test_hard_timeout_with_a_fail_safe_value_serves_it(
    redis_url: str, clock: FakeClock
) -> None:
    cache = make(redis_url, clock, fail_safe=True, hard_timeout=0.2)
    load = Gate()
    try:
        await expired_entry(cache, clock)
        assert await cache.get_or_set("k", load) == "old"
        stats = cache.stats()
        assert stats.loader_hard_timeouts == 1
        assert stats.stale_served == 1
    finally:
        load.gate.set()
        await cache.close()


async def test_a_loaders_own_timeout_error_is_not_a_hard_timeout(
    redis_url: str, clock: FakeClock
) -> None:
    cache = make(redis_url, clock, hard_timeout=30)

    async def db_timeout() -> Any:
        raise TimeoutError("the driver gave up")

    try:
        with pytest.raises(TimeoutError) as info:
            await cache.get_or_set("k", db_timeout)
        assert type(info.value) is TimeoutError
        assert cache.stats().loader_hard_timeouts == 0
    finally:
        await cache.close()


async def test_in_process_waiters_never_wait_past_the_leaders_hard_timeout(
    redis_url: str, clock: FakeClock
) -> None:
    cache = make(redis_url, clock)
    load = Gate()
    try:
        leader = AsyncTask(lambda: cache.get_or_set("k", load, hard_timeout=0.2))
        await async_wait_event(load.started)
        # the waiter has no limit of its own: it is bound by the leader's
        waiter = AsyncTask(lambda: cache.get_or_set("k", load))
        with pytest.raises(LoaderTimeout):
            await leader.join()
        with pytest.raises(LoaderTimeout):
            await waiter.join()
        assert load.calls == 1
        assert cache.stats().coalesced == 1
    finally:
        load.gate.set()
        await cache.close()


@pytest.mark.parametrize("kind", ["standalone", "cluster"])
async def test_lease_waiters_in_another_process_stop_at_their_hard_timeout(
    kind: str, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    cluster = kind == "cluster"
    url = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
    holder = make(url, clock, cluster)
    # lease_wait far longer than the hard timeout: the hard timeout ends the wait
    waiter = make(url, clock, cluster, lease_wait=30, hard_timeout=0.2)
    client = AsyncRedisCluster.from_url(url) if cluster else AsyncRedis.from_url(url)
    load = Gate()
    other_load = Gate("other")
    try:
        await waiter.get("warm-up")  # (a cluster client's first call maps the slots)
        held = AsyncTask(lambda: holder.get_or_set("k", load))
        await async_wait_event(load.started)
        with pytest.raises(LoaderTimeout):
            await waiter.get_or_set("k", other_load)
        assert other_load.calls == 0  # it never got the lease
        assert waiter.stats().lease_waits == 1
        load.gate.set()
        assert await held.join() == "new"
        assert await waiter.get_or_set("k", other_load) == "new"  # the holder's fill
        # the waiter's last poll (a thread in the sync twin) may run just past its hard
        # timeout, take the lease the fill freed and give it back at once: wait for that
        for _ in range(3000):
            if not await client.exists(KEYS.lease_key("k")):
                break
            await async_sleep(0.01)
        else:
            raise AssertionError("a lease was left behind")
    finally:
        load.gate.set()
        await holder.close()
        await waiter.close()
        await client.aclose()


# -- options --------------------------------------------------------------------------------


async def test_per_call_and_per_decorator_limits_override_the_caches(
    redis_url: str, clock: FakeClock
) -> None:
    cache = make(redis_url, clock, fail_safe=True, soft_timeout=0)
    load = Gate()
    try:
        await expired_entry(cache, clock)
        # soft_timeout=None for this call: it waits for the fresh value
        caller = AsyncTask(lambda: cache.get_or_set("k", load, soft_timeout=None))
        await async_wait_event(load.started)
        load.gate.set()
        assert await caller.join() == "new"
    finally:
        load.gate.set()
        await cache.close()

    plain = make(redis_url, clock, fail_safe=True)  # no limits of its own
    decorated_load = Gate()

    @plain.cached(ttl=10, key="item:{n}", soft_timeout=0)
    async def item(n: int) -> Any:
        return await decorated_load()

    try:
        await plain.set("item:1", "old", ttl=10)
        clock.advance(11)
        assert await item(1) == "old"  # the decorator's soft timeout: stale at once
        decorated_load.gate.set()
        await async_until(lambda: plain.stats().loader_background_loads == 0)
        assert await item(1) == "new"
    finally:
        decorated_load.gate.set()
        await plain.close()


async def test_bad_limits_are_refused(redis_url: str, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="shorter than hard_timeout"):
        make(redis_url, clock, soft_timeout=1, hard_timeout=1)
    with pytest.raises(ValueError, match="hard_timeout"):
        make(redis_url, clock, hard_timeout=0)
    with pytest.raises(TypeError, match="soft_timeout"):
        make(redis_url, clock, soft_timeout="1s")
    with pytest.raises(ValueError, match="loader_breaker_threshold"):
        make(redis_url, clock, loader_breaker_threshold=0)
    cache = make(redis_url, clock, hard_timeout=1)
    try:
        with pytest.raises(ValueError, match="shorter than hard_timeout"):
            await cache.get_or_set("k", lambda: 1, soft_timeout=2)
        with pytest.raises(ValueError, match="soft_timeout"):
            cache.cached(soft_timeout=-1)
    finally:
        await cache.close()


# -- the loader's circuit breaker ------------------------------------------------------------


async def test_breaker_opens_after_failures_in_the_window_and_a_probe_closes_it(
    redis_url: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make(
        redis_url,
        clock,
        fail_safe=True,
        loader_breaker_threshold=2,
        loader_breaker_window=10,
        loader_breaker_cooldown=5,
    )
    calls = 0

    async def failing() -> Any:
        nonlocal calls
        calls += 1
        raise ConnectionError("db down")

    caplog.set_level(logging.INFO, logger="stratacache.breaker")
    try:
        await cache.set("b", "old", ttl=1)  # a fail-safe value, once it has expired
        assert cache.stats().loader_breaker_state == "closed"
        with pytest.raises(ConnectionError):
            await cache.get_or_set("a", failing)
        clock.advance(11)  # out of the window: forgotten
        with pytest.raises(ConnectionError):
            await cache.get_or_set("a", failing)
        assert cache.stats().loader_breaker_state == "closed"
        with pytest.raises(ConnectionError):
            await cache.get_or_set("a", failing)
        assert cache.stats().loader_breaker_state == "open"
        assert calls == 3
        logs = [r for r in caplog.records if r.name == "stratacache.breaker"]
        opened = [r for r in logs if r.levelno == logging.WARNING]
        assert len(opened) == 1 and "ConnectionError: db down" in opened[0].getMessage()

        # open: the loader is not called; the fail-safe value, else LoaderUnavailable
        with pytest.raises(LoaderUnavailable):
            await cache.get_or_set("a", failing)
        assert await cache.get_or_set("b", failing) == "old"
        assert calls == 3
        stats = cache.stats()
        assert stats.loader_rejected == 2
        assert stats.loader_breaker_opened == 1

        # half-open: one probe at a time; its success closes the breaker
        clock.advance(5)
        assert cache.stats().loader_breaker_state == "half_open"
        probe = Gate("fixed")
        first = AsyncTask(lambda: cache.get_or_set("a", probe))
        await async_wait_event(probe.started)
        with pytest.raises(LoaderUnavailable):
            await cache.get_or_set("c", failing)  # another key while the probe runs
        probe.gate.set()
        assert await first.join() == "fixed"
        assert cache.stats().loader_breaker_state == "closed"
        closed = [
            r
            for r in caplog.records
            if r.name == "stratacache.breaker" and r.levelno == logging.INFO
        ]
        assert any("closed" in r.getMessage() for r in closed)
    finally:
        await cache.close()


async def test_a_failed_probe_opens_the_breaker_again(redis_url: str, clock: FakeClock) -> None:
    cache = make(redis_url, clock, loader_breaker_threshold=1, loader_breaker_cooldown=5)

    async def failing() -> Any:
        raise ConnectionError("db down")

    try:
        with pytest.raises(ConnectionError):
            await cache.get_or_set("a", failing)
        assert cache.stats().loader_breaker_state == "open"
        clock.advance(5)
        with pytest.raises(ConnectionError):  # the probe reached the loader, and failed
            await cache.get_or_set("a", failing)
        assert cache.stats().loader_breaker_state == "open"
        with pytest.raises(LoaderUnavailable):
            await cache.get_or_set("a", failing)
        assert cache.stats().loader_breaker_opened == 2
    finally:
        await cache.close()


async def test_hard_timeouts_count_as_breaker_failures(redis_url: str, clock: FakeClock) -> None:
    # the deadline must pass while the loader runs, not while Redis answers the look-up
    # (see the next test): 0.5 s leaves a loaded machine's round trips room
    cache = make(redis_url, clock, hard_timeout=0.5, loader_breaker_threshold=1)
    load = Gate()
    try:
        with pytest.raises(LoaderTimeout):
            await cache.get_or_set("k", load)
        await async_until(lambda: cache.stats().loader_breaker_state == "open")
        with pytest.raises(LoaderUnavailable):
            await cache.get_or_set("other", load)
        await async_until(lambda: load.calls > 0)  # (sync: the timed-out load's thread may
        assert load.calls == 1  # start after the caller gave up on it)
    finally:
        load.gate.set()
        await cache.close()


async def test_a_deadline_passed_before_the_loader_ran_is_not_its_failure(
    redis_server_factory, clock: FakeClock
) -> None:
    # Redis holds writes (the read-or-lease script is one) past the hard timeout: the
    # caller gets LoaderTimeout, but no loader was running, so its breaker stays closed
    server = redis_server_factory()
    cache = make(server.url, clock, hard_timeout=0.2, loader_breaker_threshold=1)
    admin = AsyncRedis.from_url(server.url)
    load = Gate()
    try:
        await cache.get("warm-up")  # a plain read: the connection is open before the pause
        await admin.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
        try:
            with pytest.raises(LoaderTimeout):
                await cache.get_or_set("k", load)
            assert cache.stats().loader_hard_timeouts == 1
            assert cache.stats().loader_breaker_state == "closed"
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
        load.gate.set()
        await async_until(lambda: cache.stats().loader_background_loads == 0)
        assert cache.stats().loader_breaker_state == "closed"
    finally:
        load.gate.set()
        await admin.aclose()
        await cache.close()


async def test_without_limits_nor_breaker_nothing_changes(redis_url: str, clock: FakeClock) -> None:
    cache = make(redis_url, clock)
    try:
        assert await cache.get_or_set("k", lambda: "v") == "v"
        stats = cache.stats()
        assert stats.loader_breaker_state == "off"
        assert stats.loader_background_loads == 0
        assert cache._flights == {}
    finally:
        await cache.close()
