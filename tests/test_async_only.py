"""Behaviour that exists only in the async half: cancellation."""

from __future__ import annotations

import asyncio

import pytest

from stratacache import MISSING, AsyncCache
from stratacache._primitives import async_wait_event


async def test_a_cancelled_leader_does_not_strand_its_waiters() -> None:
    cache = AsyncCache(None)
    leader_started = asyncio.Event()
    calls: list[str] = []

    async def hanging_loader() -> str:
        calls.append("leader")
        leader_started.set()
        await asyncio.Event().wait()  # never finishes: the leader gets cancelled
        raise AssertionError("unreachable")

    async def good_loader() -> str:
        calls.append("waiter")
        return "value"

    leader = asyncio.ensure_future(cache.get_or_set("k", hanging_loader))
    await asyncio.wait_for(leader_started.wait(), 5)
    waiters = [asyncio.ensure_future(cache.get_or_set("k", good_loader)) for _ in range(3)]
    while cache.stats().coalesced < 3:
        await asyncio.sleep(0)
    leader.cancel()
    results = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert results == ["value"] * 3
    assert calls == ["leader", "waiter"]  # one waiter took over; the others followed it
    assert leader.cancelled()
    assert await cache.get("k", MISSING) == "value"


async def test_cancelling_a_waiter_leaves_the_leader_and_others_alone() -> None:
    cache = AsyncCache(None)
    release = asyncio.Event()

    async def loader() -> str:
        await release.wait()
        return "value"

    leader = asyncio.ensure_future(cache.get_or_set("k", loader))
    waiter = asyncio.ensure_future(cache.get_or_set("k", loader))
    other = asyncio.ensure_future(cache.get_or_set("k", loader))
    while cache.stats().coalesced < 2:
        await asyncio.sleep(0)
    waiter.cancel()
    release.set()
    assert await leader == "value"
    assert await other == "value"
    assert waiter.cancelled()


async def test_a_cancelled_bus_wait_is_never_swallowed() -> None:
    # The bus's loops stop when cancelled (asyncio.run cancels the tasks of a cache that
    # was never closed); a wait that swallowed the cancellation would hang the shutdown.
    for _ in range(100):
        event = asyncio.Event()
        waiter = asyncio.ensure_future(async_wait_event(event, 1.0))
        await asyncio.sleep(0)
        event.set()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter


async def test_the_bus_tasks_stop_when_cancelled_as_asyncio_run_does(redis_url: str) -> None:
    # asyncio.run cancels the tasks of a cache that was never closed, then waits for them
    cache = AsyncCache(redis_url, namespace="unclosed")
    try:
        for _ in range(20):
            await cache.set("k", 1)
            assert await cache.get("k") == 1
            await asyncio.sleep(0.01)
        tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("stratacache-bus")]
        assert len(tasks) == 3  # listener, publisher, prober
        for task in tasks:
            task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=5)
        assert not pending, "a bus task ignored its cancellation"
    finally:
        await cache.close()
