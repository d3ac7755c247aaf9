"""The Redis tier's direct path (``direct.py``): connections borrowed from the client's pool,
replaced when the server closed them, scripts reloaded after a flush, given back on close."""

from __future__ import annotations

import time
from typing import Any

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


async def test_a_miss_without_the_bus_reads_the_versions_with_its_lease(redis_url: str) -> None:
    # no bus, so no versions known here: the read-or-lease script reads the epoch's and the
    # tag's along, and the miss costs that script and the write (no versions read between)
    cache = AsyncCache(redis_url, namespace=NS, bus=False)
    admin = AsyncRedis.from_url(redis_url)
    tier = cache._tier
    assert tier is not None
    fetch_versions, apart = tier.fetch_versions, []

    async def counted(names: Any) -> Any:
        apart.append(names)
        return await fetch_versions(names)

    tier.fetch_versions = counted  # type: ignore[method-assign]
    try:
        await admin.config_resetstat()
        assert await cache.get_or_set("m", lambda: "loaded", tags=["t"]) == "loaded"
        cache.l1.clear()
        assert await cache.get_or_set("m", lambda: "other", tags=["t"]) == "loaded"  # a hit
        stats = await admin.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 3  # read + write, then the hit's read
        assert apart == []
    finally:
        await cache.close()
        await admin.aclose()


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
        await cache.set("d", 4, tags=["t"])  # the tagged write script, after a flush too
        await admin.script_flush()
        await cache.set("e", 5, tags=["t"])
        cache.l1.clear()
        assert await cache.get_or_set("b", lambda: 0) == 2  # it was written to Redis
        assert await cache.get_many(["c", "d", "e"]) == {"c": 3, "d": 4, "e": 5}
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


async def test_connections_of_a_restarted_server_are_replaced(redis_server_factory) -> None:
    server = redis_server_factory()
    # no bus: its PINGs (a thread, in the sync twin) would fail while the server restarts
    cache = AsyncCache(server.url, namespace=NS, redis_timeout=2.0, bus=False)
    try:
        await cache.set("k", "v")
        cache.l1.clear()
        assert await cache.get("k") == "v"  # an idle connection is kept
        # a new process: the data and every connection are gone. (Its start forks with a
        # preexec_fn, which runs the cache's fork hook in the child: the child must leave
        # the parent's sockets registered with the parent's event loop.)
        server.restart()
        await cache.set("k", "again")
        cache.l1.clear()
        assert await cache.get("k") == "again"
        assert cache.stats().errors == 0  # the dead connection was replaced, not reported
    finally:
        await cache.close()


async def test_a_timeout_drops_the_connection_and_the_next_call_works(
    redis_server_factory,
) -> None:
    server = redis_server_factory()
    # no bus: a heartbeat PUBLISH held by the pause would mark the bus unhealthy, and
    # entries written before that are then withheld for the recovery grace (by design,
    # see coherence.py): that would hide what this test is about, the connection
    cache = AsyncCache(server.url, namespace=NS, redis_timeout=0.2, bus=False)
    admin = AsyncRedis.from_url(server.url)
    try:
        await cache.set("k", "v")
        cache.l1.clear()
        assert await cache.get("k") == "v"
        # Redis holds writes (the miss's lease script is one) but answers reads
        await admin.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
        try:
            assert await cache.get_or_set("m", lambda: "loaded") == "loaded"  # timed out
            assert cache.stats().errors >= 1
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
        # the timed-out connection was disconnected: the script's late reply is never read
        # as the answer to another command, and the next calls get the right values
        cache.l1.clear()
        assert await cache.get("k") == "v"
        assert await cache.get_or_set("n", lambda: "filled") == "filled"
        cache.l1.clear()
        assert await cache.get("n") == "filled"
    finally:
        await admin.aclose()
        await cache.close()


async def test_a_connection_class_of_its_own_gets_the_public_calls(redis_url: str) -> None:
    # the direct path writes to the stream of redis-py's own connection classes only; a
    # subclass (here one that counts its reads) is served through its public methods
    client = AsyncRedis.from_url(redis_url)
    base = client.connection_pool.connection_class

    class Counting(base):  # type: ignore[valid-type,misc]
        reads = 0

        async def read_response(self, *args, **kwargs):
            type(self).reads += 1
            return await super().read_response(*args, **kwargs)

    client.connection_pool.connection_class = Counting
    cache = AsyncCache(client, namespace=NS)
    try:
        assert cache._tier is not None and cache._tier._fast
        await cache.set("k", "v")
        cache.l1.clear()
        before = Counting.reads
        assert await cache.get("k") == "v"
        assert Counting.reads > before  # its read_response served the hit
        assert await cache.get_or_set("m", lambda: "loaded", tags=["t"]) == "loaded"
        await cache.close()
        assert await client.get("direct-probe") is None
    finally:
        await client.aclose()
