"""Async only: an ``AsyncCache`` outliving its event loop, bus tasks that end, and
cancellations that redis-py would lose (the sync twin has threads and no loops).

Real Redis throughout; every wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from stratacache import MISSING, AsyncCache

from concurrency import async_bus_settled, async_until

NS = "loops"
DEADLINE = 10.0


def make(target: tuple[str, bool], **options: object) -> AsyncCache:
    url, cluster = target
    options.setdefault("redis_timeout", 2.0)
    return AsyncCache(url, cluster=cluster, namespace=NS, **options)  # type: ignore[arg-type]


async def write_elsewhere(target: tuple[str, bool], key: str, value: object) -> None:
    """Another instance writes ``key`` (and is closed)."""
    other = make(target)
    try:
        await other.set(key, value)
    finally:
        await other.close()


def bus_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("stratacache-bus")]


def test_a_second_event_loop_rebinds_the_cache_and_serves_the_new_value(
    target: tuple[str, bool],
) -> None:
    cache = make(target)

    async def first_run() -> None:
        await write_elsewhere(target, "k", 1)
        assert await cache.get("k") == 1
        assert cache.l1.peek("k") == 1  # served from L1 from now on, while the bus hears
        assert cache.stats().bus_state == "healthy"

    asyncio.run(first_run())
    # the loop took the bus's tasks with it: deaf, so L1 was flushed and is not trusted
    assert cache.stats().bus_state == "unhealthy"
    assert len(cache.l1) == 0
    asyncio.run(write_elsewhere(target, "k", 2))  # while nobody listens for the cache

    async def second_run() -> None:
        try:
            assert await cache.get("k") == 2
            await async_until(lambda: cache.stats().bus_state == "healthy", DEADLINE)
            assert len(bus_tasks()) == 3  # listener, publisher and prober, in this loop
            await cache.get("k")
            assert cache.l1.peek("k") == 2
            # the new listener hears the others, and the cache's writes reach them
            await write_elsewhere(target, "k", 3)
            await async_until(lambda: cache.l1.peek("k", MISSING) is MISSING, DEADLINE)
            assert await cache.get("k") == 3
            other = make(target)
            try:
                await cache.set("j", "x")
                # other is subscribed (a fresh instance bypasses L1 until then) and has
                # heard that set's invalidation, which would drop the value read next
                await async_bus_settled(cache, [other], DEADLINE)
                assert await other.get("j") == "x"
                assert other.l1.peek("j") == "x"
                await cache.set("j", "y")
                await async_until(lambda: other.l1.peek("j", MISSING) is MISSING, DEADLINE)
            finally:
                await other.close()
        finally:
            await cache.close()

    asyncio.run(second_run())


# the pending tasks of the closed loop complain when they are collected (asyncio's own
# "Task was destroyed but it is pending!"): that is this test's doing, collected below
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_loop_closed_under_a_running_bus_is_never_reported_healthy(redis_url: str) -> None:
    # no asyncio.run here: the loop is closed with the bus tasks still pending, so no
    # callback of theirs ever runs; stats() and the next call notice all the same
    cache = AsyncCache(redis_url, namespace=NS, redis_timeout=2.0)
    loop = asyncio.new_event_loop()
    try:

        async def warm() -> None:
            await write_elsewhere((redis_url, False), "k", 1)
            assert await cache.get("k") == 1
            assert cache.l1.peek("k") == 1

        loop.run_until_complete(warm())
        pending = [t for t in asyncio.all_tasks(loop) if t.get_name().startswith("stratacache")]
        assert pending
    finally:
        loop.close()
    assert cache.stats().bus_state == "unhealthy"
    assert len(cache.l1) == 0

    async def second_run() -> None:
        try:
            await write_elsewhere((redis_url, False), "k", 2)
            assert await cache.get("k") == 2
            await async_until(lambda: cache.stats().bus_state == "healthy", DEADLINE)
        finally:
            await cache.close()

    asyncio.run(second_run())
    del pending
    gc.collect()


@pytest.mark.parametrize("worker", ["listener", "publisher", "prober"])
async def test_a_dead_bus_task_makes_the_bus_unhealthy_at_once_and_is_restarted(
    redis_url: str, worker: str, caplog: pytest.LogCaptureFixture
) -> None:
    # heartbeat_timeout far beyond the deadline: only the task's end can explain it
    cache = AsyncCache(redis_url, namespace=NS, redis_timeout=2.0, heartbeat_timeout=60.0)
    try:
        await write_elsewhere((redis_url, False), "k", 1)
        assert await cache.get("k") == 1
        await async_until(lambda: cache.stats().bus_state == "healthy", DEADLINE)
        assert cache.l1.peek("k") == 1
        (task,) = [t for t in bus_tasks() if t.get_name().endswith(worker)]
        with caplog.at_level(logging.WARNING, logger="stratacache.bus"):
            task.cancel()
            await asyncio.wait({task}, timeout=DEADLINE)
            assert task.done()
            await async_until(lambda: cache.stats().bus_state == "unhealthy", DEADLINE)
        assert len(cache.l1) == 0
        assert cache._bus is not None and worker in cache._bus.state.unhealthy_reason
        assert any(worker in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
        # the next call that needs the bus starts a new listener and publisher
        assert await cache.get("k") == 1
        await async_until(lambda: cache.stats().bus_state == "healthy", DEADLINE)
        assert sorted(t.get_name() for t in bus_tasks()) == [
            "stratacache-bus-listener",
            "stratacache-bus-prober",
            "stratacache-bus-publisher",
        ]
        assert await cache.get("k") == 1
        assert cache.l1.peek("k") == 1
    finally:
        await cache.close()


async def test_no_cancellation_of_a_bus_task_is_lost_at_any_point(redis_url: str) -> None:
    # redis-py sends through asyncio.wait_for, which (before 3.12) drops a cancellation
    # that arrives as the send completes; cancelling at every step of the event loop
    # around a publish lands in that window many times (it did in 1 of 4 before the fix)
    for steps in range(60):
        cache = AsyncCache(redis_url, namespace=NS, redis_timeout=2.0)
        try:
            await cache.set("k", steps)
            tasks = bus_tasks()
            await cache.set("k", -1)  # wakes the publisher
            for _ in range(steps % 30):
                await asyncio.sleep(0)
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=DEADLINE)
            assert not pending, (steps, [t.get_name() for t in pending])
        finally:
            await cache.close()


def test_a_cache_used_in_one_loop_can_be_closed_from_another(target: tuple[str, bool]) -> None:
    cache = make(target)

    async def use() -> None:
        await cache.set("k", 1)
        await cache.invalidate("k")  # starts the invalidator's worker in this loop

    asyncio.run(use())
    asyncio.run(cache.close())  # the first loop, its tasks and its events are gone
    assert cache.dead_letters() == []
