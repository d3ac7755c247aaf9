"""No accepted write is lost to a Redis fault (issue 11): writes made while Redis is paused,
killed or refusing them wait in the outbox and are applied when it answers again; until
then the writer does not serve the keys from L2, and afterwards every instance serves the
new state. Real servers, paused (SIGSTOP), killed and restarted; the killed ones keep an
fsync-always AOF, so an old value that a lost write failed to delete would still be there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from stratacache import MISSING, AsyncCache, RedisUnavailableError
from stratacache._keys import KeySpace
from stratacache._primitives import AsyncRedis, async_sleep

from concurrency import async_until

NS = "outbox"
DEADLINE = 20.0
DURABLE = ["--appendonly", "yes", "--appendfsync", "always"]

pytestmark = pytest.mark.slow


def make(url: str, **options: Any) -> AsyncCache:
    options.setdefault("redis_timeout", 0.1)
    options.setdefault("breaker_cooldown", 0.2)
    return AsyncCache(url, namespace=NS, **options)


async def eventually(check: Callable[[], Any], timeout: float = DEADLINE) -> None:
    """Poll an async check until it returns true (fails after ``timeout`` seconds)."""
    waited = 0.0
    while not await check():
        assert waited < timeout, "condition not reached"
        await async_sleep(0.01)
        waited += 0.01


async def in_redis(url: str, key: str) -> Any:
    """The raw entry of ``key`` in the Redis at ``url`` (None if absent)."""
    client = AsyncRedis.from_url(url)
    try:
        return await client.get(KeySpace(NS).data_key(key))
    finally:
        await client.aclose()


async def test_a_delete_during_a_pause_reaches_every_instance(redis_server_factory) -> None:
    # the case of the issue: set, Redis paused, delete during the pause, Redis back
    server = redis_server_factory()
    a, b = make(server.url), make(server.url)
    try:
        await a.set("user:1", "old")
        assert await b.get("user:1") == "old"  # b holds it in L1 too
        server.pause()
        try:
            assert await a.delete("user:1") is True  # returns: the delete is pending
            assert a.stats().invalidation.outbox_pending == 1
            assert await a.get("user:1", MISSING) is MISSING  # read-your-writes
        finally:
            server.resume()
        await async_until(lambda: a.stats().invalidation.outbox_pending == 0, DEADLINE)
        assert await in_redis(server.url, "user:1") is None
        fresh = make(server.url)
        try:
            assert await fresh.get("user:1", MISSING) is MISSING

            async def b_misses() -> bool:
                return await b.get("user:1", MISSING) is MISSING

            await eventually(b_misses)
        finally:
            await fresh.close()
        assert a.dead_letters() == []
    finally:
        await a.close()
        await b.close()


async def test_a_set_during_a_kill_never_lets_the_old_value_back(redis_server_factory) -> None:
    server = redis_server_factory(extra_args=DURABLE)
    a = make(server.url)
    try:
        await a.set("k", "old")
        server.kill()
        await a.set("k", "new")  # Redis down: the old value must not come back
        assert a.l1.peek("k", MISSING) in ("new", MISSING)  # L1 empties when the bus is deaf
        server.restart()  # with "old" still in its AOF
        await async_until(lambda: a.stats().invalidation.outbox_pending == 0, DEADLINE)
        assert await in_redis(server.url, "k") is None  # deleted, not left at "old"
        fresh = make(server.url)
        try:
            assert await fresh.get("k", MISSING) is MISSING
            assert await fresh.get_or_set("k", lambda: "reloaded") == "reloaded"
        finally:
            await fresh.close()
    finally:
        await a.close()


async def test_an_outage_longer_than_any_backoff_still_applies_every_write(
    redis_server_factory,
) -> None:
    # the old schedule dead-lettered after ~1.5 s; transient failures now never do
    server = redis_server_factory(extra_args=DURABLE)
    a = make(server.url, retry_backoff=0.01, retry_backoff_max=0.05)
    keys = [f"k{i}" for i in range(20)]
    try:
        await a.set_many({key: "old" for key in keys}, tags=["group"])
        server.kill()
        for key in keys[:10]:
            await a.delete(key)
        await a.invalidate("k10")
        await a.invalidate_tag("group")
        # an outage twice as long as the old schedule's 1.5 s (the scenario, not a timing
        # assertion): probed all along, nothing given up
        await async_sleep(3.0)
        assert a.dead_letters() == []
        assert a.stats().invalidation.outbox_pending == 12
        server.restart()
        await async_until(lambda: a.stats().invalidation.outbox_pending == 0, DEADLINE)
        assert a.dead_letters() == []
        assert a.stats().invalidation.outbox_applied >= 12
        fresh = make(server.url)
        try:
            for key in keys:  # deleted, invalidated, or behind the raised tag version
                assert await fresh.get(key, MISSING) is MISSING, key
        finally:
            await fresh.close()
    finally:
        await a.close()


async def test_pending_writes_are_not_read_from_l2_by_the_writer(redis_server_factory) -> None:
    # CLIENT PAUSE WRITE: Redis answers reads but holds writes, so the delete times out
    # (pending) while the old value stays readable in L2
    server = redis_server_factory()
    a, b = make(server.url), make(server.url)
    admin = AsyncRedis.from_url(server.url)
    try:
        await a.set("k", "old")
        await admin.execute_command("CLIENT", "PAUSE", "3000", "WRITE")
        try:
            await a.delete("k")
            assert a.stats().invalidation.outbox_pending == 1
            assert await in_redis(server.url, "k") is not None  # still there...
            assert await a.get("k", MISSING) is MISSING  # ...but not served to the writer
            assert await a.get_many(["k"]) == {}
            assert await a.get_or_set("k", lambda: "from the loader") == "from the loader"
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
        await async_until(lambda: a.stats().invalidation.outbox_pending == 0, DEADLINE)
        assert await in_redis(server.url, "k") is None

        async def b_misses() -> bool:
            return await b.get("k", MISSING) is MISSING

        await eventually(b_misses)
    finally:
        await admin.aclose()
        await a.close()
        await b.close()


async def test_a_later_successful_write_cancels_a_pending_one(redis_server_factory) -> None:
    server = redis_server_factory()
    a = make(server.url)
    admin = AsyncRedis.from_url(server.url)
    try:
        await admin.execute_command("CLIENT", "PAUSE", "2000", "WRITE")
        try:
            await a.set("k", "first")  # times out: a pending delete of k
            assert a.stats().invalidation.outbox_pending == 1
        finally:
            await admin.execute_command("CLIENT", "UNPAUSE")
        await a.set("k", "second")
        await async_until(lambda: a.stats().invalidation.outbox_pending == 0, DEADLINE)
        # the pending delete was cancelled by the newer write, or (if the worker had it in
        # flight) applied before the write; either way the newest value stays
        a.l1.clear()
        assert await a.get("k", MISSING) in ("second", MISSING)
    finally:
        await admin.aclose()
        await a.close()


async def test_strict_writes_raise_and_are_still_applied(redis_server_factory) -> None:
    server = redis_server_factory(extra_args=DURABLE)
    a = make(server.url, on_write_error="raise")
    try:
        await a.set("k", "old")
        await a.set("t1", 1, tags=["t"])
        server.kill()
        with pytest.raises(RedisUnavailableError):
            await a.delete("k")
        with pytest.raises(RedisUnavailableError):
            await a.set("k2", "x")
        with pytest.raises(RedisUnavailableError):
            await a.invalidate_tag("t")
        server.restart()
        await async_until(lambda: a.stats().invalidation.outbox_pending == 0, DEADLINE)
        assert await in_redis(server.url, "k") is None
        await a.delete("k3")  # Redis answers: no error
        fresh = make(server.url)
        try:
            assert await fresh.get("t1", MISSING) is MISSING
        finally:
            await fresh.close()
    finally:
        await a.close()


async def test_a_lease_taken_after_its_caller_gave_up_is_released(redis_server_factory) -> None:
    # a paused server runs the lease command it had received once it resumes, after the
    # caller timed out: nobody holds that lease, so it must not make readers wait
    server = redis_server_factory()
    a = make(server.url, lease_ttl=60.0, lease_wait=30.0)
    b = make(server.url, lease_ttl=60.0, lease_wait=30.0)
    lease_key = KeySpace(NS).lease_key("k")
    admin = AsyncRedis.from_url(server.url)
    try:
        await a.get("warm-up", None)
        server.pause()
        try:
            assert await a.get_or_set("k", lambda: "loaded") == "loaded"
        finally:
            server.resume()

        async def no_lease() -> bool:
            return not await admin.exists(lease_key)

        await eventually(no_lease)  # released by its token, long before its 60 s ttl
        assert await b.get_or_set("k", lambda: "b") in ("b", "loaded")
        assert b.stats().lease_waits == 0
    finally:
        await admin.aclose()
        await a.close()
        await b.close()


async def test_close_applies_what_is_pending_when_redis_is_back(redis_server_factory) -> None:
    server = redis_server_factory(extra_args=DURABLE)
    a = make(server.url, close_timeout=10.0)
    await a.set("k", "old")
    server.kill()
    await a.delete("k")
    server.restart()
    await a.close()  # flushes the outbox before it returns
    assert a.dead_letters() == []
    assert await in_redis(server.url, "k") is None


async def test_close_gives_up_after_close_timeout_and_says_so(
    redis_server_factory, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory()
    a = make(server.url, close_timeout=0.2)
    await a.set("k", 1)
    server.kill()
    await a.invalidate("k")
    with caplog.at_level(logging.WARNING, logger="stratacache"):
        await a.close()
    assert [(d.kind, d.target) for d in a.dead_letters()] == [("key", "k")]
    assert any("closing with 1 operations" in r.getMessage() for r in caplog.records)


async def test_only_refused_commands_become_dead_letters(redis_server_factory) -> None:
    server = redis_server_factory()
    a = make(server.url)
    admin = AsyncRedis.from_url(server.url)
    keys = KeySpace(NS)
    try:
        await a.set("doomed", 1)
        # a dependents set of the wrong type: the invalidation script fails with WRONGTYPE
        await admin.set(keys.dependents_key("doomed"), "not a set")
        await a.invalidate("doomed", reason="price changed")
        [letter] = a.dead_letters()
        assert (letter.kind, letter.target, letter.redis) == ("key", "doomed", "primary")
        assert letter.reason == "price changed"
        assert "WRONGTYPE" in letter.last_error
        assert a.stats().invalidation.outbox_pending == 0  # not retried in a loop
        assert a.stats().breaker_state == "closed"  # Redis answered: no outage
        await admin.delete(keys.dependents_key("doomed"))
        assert await a.replay_dead_letters() == 1
        assert a.dead_letters() == []
        assert await in_redis(server.url, "doomed") is None
    finally:
        await admin.aclose()
        await a.close()


async def test_outages_are_logged_once_with_their_recovery(
    redis_server_factory, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory(extra_args=DURABLE)
    a = make(server.url, breaker_threshold=2)
    try:
        await a.set("k", 1)
        with caplog.at_level(logging.INFO, logger="stratacache"):
            server.kill()
            for i in range(50):
                await a.delete(f"k{i}")
            server.restart()
            # the worker logs right after the outbox empties (a thread, in the sync twin)
            await async_until(
                lambda: any("operations applied" in r.getMessage() for r in caplog.records),
                DEADLINE,
            )
            await async_until(lambda: a.stats().breaker_state == "closed", DEADLINE)
        messages = [r.getMessage() for r in caplog.records]
        pending = [m for m in messages if "kept in the outbox" in m]
        applied = [m for m in messages if "answers again" in m and "applied" in m]
        opened = [m for m in messages if "circuit breaker of the primary Redis opened" in m]
        assert len(pending) == 1, messages  # one line per outage, not one per write
        assert len(applied) == 1 and "50 pending operations applied" in applied[0], messages
        assert len(opened) == 1, messages
    finally:
        await a.close()


async def test_touch_does_not_revive_an_expired_fail_safe_entry(redis_server_factory) -> None:
    from concurrency import FakeClock

    server = redis_server_factory()
    clock = FakeClock()
    a = make(server.url, fail_safe=True, clock=clock)
    try:
        await a.set("k", "v", ttl=10)
        assert await a.touch("k", 10) is True
        clock.advance(30)  # logically expired, still kept in Redis for fail-safe
        assert await a.touch("k", 100) is False
        a.l1.clear()
        assert await a.get("k", MISSING) is MISSING
    finally:
        await a.close()


async def test_after_a_deaf_spell_older_l2_entries_are_reloaded_for_the_grace(
    redis_server_factory,
) -> None:
    # a gap in another instance's sequence numbers: its write may be waiting in its
    # outbox, so what L2 holds from before the flush is reloaded, not served
    from stratacache._bus_messages import Action, BusMessage, encode_message

    server = redis_server_factory()
    # a long client timeout: a PING slow on a loaded machine would count as Redis going
    # silent, which (rightly) makes every older entry suspect too
    a = make(server.url, recovery_grace=60.0, redis_timeout=2.0)
    admin = AsyncRedis.from_url(server.url)
    try:
        await a.set("k", "old")
        await a.get("other", None)
        for seq in (1, 3):  # 2 was "lost"
            message = BusMessage(b"\x07" * 16, seq, 0.0, Action.INVALIDATE_KEYS, ("x",))
            await admin.publish(KeySpace(NS).channel(), encode_message(message))
        await async_until(lambda: a.stats().bus_flushes_gap == 1, DEADLINE)
        assert await a.get("k", MISSING) is MISSING  # written before the flush: suspect
        loads = a.stats().loads
        assert await a.get_or_set("k", lambda: "reloaded") == "reloaded"
        assert a.stats().loads == loads + 1
        a.l1.clear()
        assert await a.get("k") == "reloaded"  # written after the flush: served
    finally:
        await admin.aclose()
        await a.close()


async def test_writes_during_a_paused_cluster_master_reach_every_instance() -> None:
    # a private cluster: the master that owns the keys is paused, the others run on
    from redis.cluster import key_slot

    from stratacache.testing import RedisClusterProcesses

    with RedisClusterProcesses(3) as cluster:
        a = AsyncCache(cluster.url, cluster=True, namespace=NS, redis_timeout=0.1)
        b = AsyncCache(cluster.url, cluster=True, namespace=NS, redis_timeout=0.1)
        keys = KeySpace(NS)
        raw = AsyncRedis(host=cluster.nodes[0].host, port=cluster.nodes[0].port)
        try:
            shards = await raw.execute_command("CLUSTER", "SLOTS")

            def owner(name: str) -> int:
                slot = key_slot(keys.data_key(name).encode())
                [port] = [s[2][1] for s in shards if s[0] <= slot <= s[1]]
                return int(port)

            # three keys on the master that will be paused
            port = owner("user:0")
            names = [n for n in (f"user:{i}" for i in range(200)) if owner(n) == port][:3]
            [node] = [n for n in cluster.nodes if n.port == port]
            for name in names:
                await a.set(name, "old")
                assert await b.get(name) == "old"  # b holds them in L1
            node.pause()
            try:
                assert await a.delete(names[0]) is True
                await a.set(names[1], "new")
                await a.invalidate(names[2])
                assert a.stats().invalidation.outbox_pending == 3
            finally:
                node.resume()
            await async_until(lambda: a.stats().invalidation.outbox_pending == 0, DEADLINE)
            fresh = AsyncCache(cluster.url, cluster=True, namespace=NS)
            try:
                for name in names:  # deleted, never the old value
                    assert await fresh.get(name, MISSING) is MISSING, name

                    async def b_misses(name: str = name) -> bool:
                        return await b.get(name, MISSING) is MISSING

                    await eventually(b_misses)
            finally:
                await fresh.close()
        finally:
            await raw.aclose()
            await a.close()
            await b.close()
