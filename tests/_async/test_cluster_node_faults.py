"""One paused master of a Redis Cluster: the keys of the other masters keep being served
from Redis (a breaker per master), and the paused master's keys fail fast."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from stratacache import MISSING, AsyncCache
from stratacache._primitives import async_sleep
from stratacache.testing import RedisClusterProcesses

pytestmark = pytest.mark.slow

_DEADLINE = 20.0  # seconds a poll waits for a state (a bound, not a timing assertion)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterProcesses]:
    """A private 3-master cluster: these tests pause its nodes."""
    with RedisClusterProcesses(3) as started:
        yield started


@pytest.fixture
def resumed(cluster: RedisClusterProcesses) -> Iterator[None]:
    """Every node running again (and the cluster healthy) after the test."""
    yield
    for node in cluster.nodes:
        if node.running:
            node.resume()
    cluster.wait_ok()


@pytest.fixture
def paused_node(cluster: RedisClusterProcesses) -> Iterator[int]:
    """The index of the master a test pauses; resumed (and the cluster healthy) after."""
    yield 1
    node = cluster.nodes[1]
    if node.running:
        node.resume()
    cluster.wait_ok()


def _keys_by_port(cache: AsyncCache, count: int = 200) -> dict[int, list[str]]:
    """User keys grouped by the port of the master that holds their entry."""
    client = cache.redis
    by_port: dict[int, list[str]] = {}
    for i in range(count):
        key = f"k{i}"
        node = client.get_node_from_key(cache._keys.data_key(key))
        by_port.setdefault(int(node.port), []).append(key)
    return by_port


async def test_a_paused_master_does_not_cut_off_the_other_masters_keys(
    cluster: RedisClusterProcesses, paused_node: int
) -> None:
    # no bus (no prober): only the callers' own failures open a breaker here, and a long
    # cooldown keeps the paused master's breaker open for the whole test (no probe)
    cache = AsyncCache(
        cluster.url,
        namespace="one-paused",
        cluster=True,
        bus=False,
        l1_maxsize=1,  # nearly every read goes to Redis, which is what this is about
        redis_timeout=0.1,
        breaker_threshold=3,
        breaker_cooldown=600,
    )
    try:
        await cache.set("warm", 1)
        by_port = _keys_by_port(cache)
        paused_port = cluster.nodes[paused_node].port
        down = by_port[paused_port][:5]
        up = [key for port, keys in by_port.items() if port != paused_port for key in keys[:5]]
        for key in down + up:
            await cache.set(key, key.upper())
        cluster.nodes[paused_node].pause()
        hits_before = cache.stats().l2_hits
        served = 0
        for _ in range(4):
            for key in down:
                assert await cache.get(key, MISSING) is MISSING  # fails, or refused: a miss
            for key in up:
                assert await cache.get(key, MISSING) == key.upper()
                served += 1
        stats = cache.stats()
        # every read of another master's key was an L2 hit: nothing cut them off
        assert stats.l2_hits - hits_before == served
        # the paused master's keys cost breaker_threshold failed calls, then fail fast
        assert stats.errors == 3
        assert stats.breaker_state == "open"
        assert stats.breaker_opened == 1
    finally:
        cluster.nodes[paused_node].resume()
        await cache.close()


async def test_the_prober_opens_and_closes_the_paused_masters_breaker(
    cluster: RedisClusterProcesses, resumed: None
) -> None:
    # a timeout a loaded machine does not reach on a healthy master (a call timed out there
    # would be an error, not a timed answer); the paused one never answers anyway
    cache = AsyncCache(cluster.url, namespace="prober", cluster=True, redis_timeout=0.5)
    try:
        await cache.set("warm", 1)
        # pause a master that does not hold the namespace epoch: with the bus unhealthy,
        # a fill reads the epoch before it writes L2 (no epoch, no L2 write, by design)
        epoch_port = int(cache.redis.get_node_from_key(cache._keys.meta_key("epoch")).port)
        paused_node = next(i for i, n in enumerate(cluster.nodes) if n.port != epoch_port)
        by_port = _keys_by_port(cache)
        paused_port = cluster.nodes[paused_node].port
        down = by_port[paused_port][:3]
        up = [key for port, keys in by_port.items() if port != paused_port for key in keys[:3]]
        cluster.nodes[paused_node].pause()
        # no call of ours touches the paused master: the prober's PING finds it
        deadline = time.monotonic() + _DEADLINE
        while cache.stats().breaker_state != "open":
            assert time.monotonic() < deadline, "the prober never opened the breaker"
            await cache.get("warm", MISSING)  # (a key on any master; the bus runs)
            await async_sleep(0.01)
        for key in down:  # refused at once or failed: the loader answers
            assert await cache.get_or_set(key, lambda key=key: key.upper()) == key.upper()
        for key in up:  # the other masters answer every call (the successful ones are timed)
            answered = cache.stats().l2_latency.count
            assert await cache.get_or_set(key, lambda key=key: key.upper()) == key.upper()
            assert cache.stats().l2_latency.count > answered
        assert cache.stats().breaker_state == "open"
        cluster.nodes[paused_node].resume()
        deadline = time.monotonic() + _DEADLINE
        while cache.stats().breaker_state != "closed" or cache.stats().bus_state != "healthy":
            assert time.monotonic() < deadline, "the breaker or the bus never recovered"
            await cache.get("warm", MISSING)
            await async_sleep(0.01)
        hits = cache.stats().l2_hits
        await cache.set(down[0], "back")
        cache.l1.clear()
        assert await cache.get(down[0], MISSING) == "back"
        assert cache.stats().l2_hits == hits + 1
    finally:
        cluster.nodes[paused_node].resume()
        await cache.close()
