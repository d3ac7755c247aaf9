"""Bloom filters under Redis faults: a check Redis does not answer is a "maybe", never a
false "absent"; an add made while Redis is paused (SIGSTOP) waits in the instance and
lands when Redis is back; adds that could not be kept mark the filter as lost (every
instance answers "maybe") until a rebuild. Real servers, paused and resumed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from stratacache import AsyncCache, RedisUnavailableError
from stratacache._keys import KeySpace
from stratacache._primitives import AsyncRedis
from stratacache.testing import RedisClusterProcesses

from concurrency import async_until

NS = "t-bloom-faults"
DEADLINE = 20.0

pytestmark = pytest.mark.slow


def make(url: str, **options: Any) -> AsyncCache:
    options.setdefault("redis_timeout", 0.1)
    options.setdefault("breaker_cooldown", 0.2)
    options.setdefault("retry_backoff", 0.01)
    options.setdefault("retry_backoff_max", 0.1)
    options.setdefault("close_timeout", 0.5)
    return AsyncCache(url, namespace=NS, **options)


async def bits_set(url: str, name: str, item: Any) -> bool:
    """Whether every bit of ``item`` is set in the current generation, read with a plain
    client (not through the filter, which would answer "maybe" on any doubt)."""
    cache = make(url, redis_timeout=2.0)
    params = cache.bloom(name, 1000, 0.01).params
    await cache.close()
    shard, h1, h2 = params.locate(item)
    state_key, a, b = KeySpace(NS).bloom_keys(name, shard)
    client = AsyncRedis.from_url(url)
    try:
        state = await client.get(state_key)
        assert state is not None
        current = {b"a": a, b"b": b}[state.split(b"|")[0]]
        for position in params.positions(h1, h2):
            if not await client.getbit(current, position):
                return False
        return True
    finally:
        await client.aclose()


async def test_an_add_during_a_pause_lands_after_the_resume(redis_server_factory) -> None:
    server = redis_server_factory()
    a = make(server.url)
    strict = make(server.url, on_write_error="raise")
    try:
        ids = a.bloom("ids", 1000, 0.01)
        strict_ids = strict.bloom("ids", 1000, 0.01)
        await ids.rebuild(["old"], progress=False)
        assert await ids.might_contain("absent") is False
        server.pause()
        try:
            # fail open: Redis cannot say, so "maybe" (the loader runs), never "absent"
            assert await ids.might_contain("absent") is True
            assert await ids.might_contain_many(["absent", "other"]) == [True, True]
            assert ids.stats().unknown == 3
            # the add returns; it waits here, and reads as present here meanwhile
            assert await ids.add("new") is True
            assert ids.stats().pending == 1
            assert await ids.might_contain("new") is True
            with pytest.raises(RedisUnavailableError):
                await strict_ids.add("strict-new")  # queued all the same
            assert strict_ids.stats().pending == 1
        finally:
            server.resume()
        await async_until(lambda: ids.stats().pending == 0, DEADLINE)
        await async_until(lambda: strict_ids.stats().pending == 0, DEADLINE)
        assert ids.stats().applied_late == 1
        assert await bits_set(server.url, "ids", "new")
        assert await bits_set(server.url, "ids", "strict-new")
        fresh = make(server.url, redis_timeout=2.0)
        try:
            theirs = fresh.bloom("ids", 1000, 0.01)
            assert await theirs.might_contain_many(["new", "strict-new", "old", "absent"]) == [
                True,
                True,
                True,
                False,
            ]
            assert theirs.stats().unknown == 0  # answered from the bits, not a guess
        finally:
            await fresh.close()
    finally:
        await a.close()
        await strict.close()


async def test_adds_that_cannot_be_kept_mark_the_filter_until_a_rebuild(
    redis_server_factory, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory()
    a = make(server.url, outbox_size=2)
    other = make(server.url, redis_timeout=2.0)
    try:
        ids = a.bloom("ids", 1000, 0.01)
        theirs = other.bloom("ids", 1000, 0.01)
        await ids.rebuild(["old"], progress=False)
        with caplog.at_level(logging.WARNING, logger="stratacache.bloom"):
            server.pause()
            try:
                assert await ids.add_many(["n1", "n2", "n3", "n4"]) == 4
                assert ids.stats().pending == 2 and ids.stats().dropped == 2
            finally:
                server.resume()
            await async_until(lambda: not ids._pending.active, DEADLINE)
        assert any(
            "lost adds" in r.getMessage() and "rebuild" in r.getMessage() for r in caplog.records
        )
        # n3 and n4 were never set: every instance answers "maybe" rather than "absent"
        assert await theirs.might_contain_many(["n3", "n4", "never"]) == [True, True, True]
        assert theirs.stats().unknown == 3
        # a rebuild from the system of record clears the mark
        await theirs.rebuild(["old", "n1", "n2", "n3", "n4"], progress=False)
        assert await theirs.might_contain_many(["n3", "n4", "never"]) == [True, True, False]
    finally:
        await a.close()
        await other.close()


async def test_adds_still_waiting_at_close_are_logged(
    redis_server_factory, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory()
    a = make(server.url)
    ids = a.bloom("ids", 1000, 0.01)
    await ids.rebuild([], progress=False)
    server.pause()
    try:
        await ids.add("lost")
        with caplog.at_level(logging.ERROR, logger="stratacache.bloom"):
            await a.close()
    finally:
        server.resume()
    told = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("never reached Redis" in m and "rebuild" in m for m in told), told
    assert ids.stats().dropped == 1


@pytest.fixture(scope="module")
def private_cluster() -> Iterator[RedisClusterProcesses]:
    """A 3-master cluster of this module's own: a test pauses one of its masters."""
    with RedisClusterProcesses(3) as started:
        yield started


async def test_one_paused_master_of_a_cluster(private_cluster: RedisClusterProcesses) -> None:
    """Shards on the other masters keep answering from their bits; adds whose shard is on
    the paused master wait and land after the resume."""
    host, port = private_cluster.startup_nodes[0]
    url = f"redis://{host}:{port}/0"
    a = make(url, cluster=True, redis_timeout=0.2)
    paused = private_cluster.nodes[1]
    try:
        ids = a.bloom("ids", 5000, 0.01, shards=9)
        await ids.rebuild([f"old{i}" for i in range(100)], progress=False)
        client = a.redis

        def on_paused(item: str) -> bool:
            shard = ids.params.locate(item)[0]
            state = KeySpace(NS).bloom_keys("ids", shard)[0]
            return int(client.get_node_from_key(state).port) == paused.port

        there = [f"new{i}" for i in range(200) if on_paused(f"new{i}")][:5]
        elsewhere = [f"new{i}" for i in range(200) if not on_paused(f"new{i}")][:5]
        assert there and elsewhere
        paused.pause()
        try:
            for item in elsewhere:
                assert await ids.add(item) is True
            for item in there:
                assert await ids.add(item) is True  # waits in the instance
            assert ids.stats().pending == len(there)
            # the other masters answer from their bits; the paused one's shards "maybe"
            assert await ids.might_contain_many(elsewhere) == [True] * len(elsewhere)
            absent_elsewhere = [f"nope{i}" for i in range(300) if not on_paused(f"nope{i}")]
            answers = await ids.might_contain_many(absent_elsewhere[:100])
            assert sum(answers) < 10  # absent, bar false positives
            absent_there = [f"nope{i}" for i in range(300) if on_paused(f"nope{i}")][:3]
            assert await ids.might_contain_many(absent_there) == [True] * len(absent_there)
        finally:
            paused.resume()
            private_cluster.wait_ok()
        await async_until(lambda: ids.stats().pending == 0, DEADLINE)
        fresh = make(url, cluster=True, redis_timeout=2.0)
        try:
            theirs = fresh.bloom("ids", 5000, 0.01, shards=9)
            assert await theirs.might_contain_many(there + elsewhere) == [True] * (
                len(there) + len(elsewhere)
            )
            assert theirs.stats().unknown == 0
        finally:
            await fresh.close()
    finally:
        await a.close()
