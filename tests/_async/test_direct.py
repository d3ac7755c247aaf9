"""The Redis tier's direct path (``direct.py``): connections borrowed from the client's pool,
replaced when the server closed them, scripts reloaded after a flush, given back on close."""

from __future__ import annotations

import time

from stratacache import AsyncCache
from stratacache._primitives import AsyncRedis, AsyncRedisCluster, async_sleep
from stratacache._scripts import READ_ELSE_LEASE

NS = "direct"


def _client(url: str, cluster: bool):
    return AsyncRedisCluster.from_url(url) if cluster else AsyncRedis.from_url(url)


async def test_the_hot_calls_use_the_direct_path(target: tuple[str, bool]) -> None:
    url, cluster = target
    cache = AsyncCache(url, namespace=NS, cluster=cluster)
    try:
        assert cache._tier is not None and cache._tier._fast
        await cache.set("k", "v")
        cache.l1.clear()
        assert await cache.get("k") == "v"
        assert await cache.get_or_set("m", lambda: "loaded", tags=["t"]) == "loaded"
        cache.l1.clear()
        assert await cache.get_many(["k", "m"]) == {"k": "v", "m": "loaded"}
        # connections were kept for the next call
        assert any(idle for _, idle in cache._tier._direct._idle.values())
    finally:
        await cache.close()


async def test_connections_the_server_closed_are_replaced(target: tuple[str, bool]) -> None:
    url, cluster = target
    cache = AsyncCache(url, namespace=NS, cluster=cluster)
    admin = _client(url, cluster)
    try:
        await cache.set("k", "v")
        cache.l1.clear()
        assert await cache.get("k") == "v"
        killed = await admin.client_kill_filter(_type="normal", skipme=True)
        assert killed  # the cache's idle connections among them
        cache.l1.clear()
        if not cluster:
            # the first call on a dead idle connection sends again on a fresh one: a hit
            assert await cache.get("k") == "v"
            assert cache.stats().errors == 0
        else:
            # a dead connection of a cluster node fails one call (as through the cluster
            # client); the next ones reconnect
            deadline = time.monotonic() + 30
            while await cache.get("k") != "v":
                assert time.monotonic() < deadline
                cache.l1.clear()
                await async_sleep(0.05)
    finally:
        await cache.close()
        await admin.aclose()


async def test_scripts_are_reloaded_after_a_flush(target: tuple[str, bool]) -> None:
    url, cluster = target
    cache = AsyncCache(url, namespace=NS, cluster=cluster)
    admin = _client(url, cluster)
    try:
        assert await cache.get_or_set("a", lambda: 1) == 1
        await admin.script_flush()
        assert await cache.get_or_set("b", lambda: 2) == 2  # NOSCRIPT answered with EVAL
        assert await cache.get_or_set("c", lambda: 3, tags=["t"]) == 3
        cache.l1.clear()
        assert await cache.get_or_set("b", lambda: 0) == 2  # it was written to Redis
        assert cache._tier is not None
        sha = cache._tier._s_read_else_lease.sha
        assert cache._tier._s_read_else_lease.body == READ_ELSE_LEASE
        if not cluster:  # (a cluster client asks every node; only one has it)
            assert await admin.script_exists(sha) == [True]
    finally:
        await cache.close()
        await admin.aclose()


async def test_a_users_client_gets_its_connections_back(redis_url: str) -> None:
    client = AsyncRedis.from_url(redis_url)
    cache = AsyncCache(client, namespace=NS)
    try:
        await cache.set("k", "v")
        cache.l1.clear()
        assert await cache.get("k") == "v"
        await cache.close()
        assert not client.connection_pool._in_use_connections
        assert await client.get("direct-probe") is None  # the client still works
    finally:
        await client.aclose()
