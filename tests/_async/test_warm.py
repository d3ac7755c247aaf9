"""Cache warming on a real standalone server and a real cluster: entries written as
``set_many`` writes them (envelope, tags, leases revoked, bus), batches, bounded
concurrency, progress, the resumable checkpoint; and a Redis paused in the middle of a
warm, on a private server. ``Cache`` runs the generated sync twin of this file.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from stratacache import MISSING, AsyncCache, WarmReport
from stratacache._keys import KeySpace
from stratacache._primitives import AsyncRedis, async_sleep

from concurrency import async_until

NS = "warm"
DEADLINE = 20.0


def make(target: tuple[str, bool], **options: Any) -> AsyncCache:
    url, cluster = target
    options.setdefault("redis_timeout", 2.0)
    return AsyncCache(url, cluster=cluster, namespace=NS, **options)


@pytest.fixture
async def pair(target: tuple[str, bool]):
    a, b = make(target), make(target)
    yield a, b
    await a.close()
    await b.close()


async def test_warm_writes_what_set_many_writes(pair, raw) -> None:
    a, b = pair
    items = [(f"user:{i}", {"id": i, "name": f"n{i}"}) for i in range(300)]
    report = await a.warm(items, batch_size=64, tags=["users"], ttl=60, progress=False)
    assert isinstance(report, WarmReport)
    assert (report.written, report.skipped, report.failed) == (300, 0, 0)
    assert report.batches == 5 and report.ok and report.checkpoint is None
    # another instance reads them from L2, decoded from the usual envelope
    assert await b.get("user:7") == {"id": 7, "name": "n7"}
    assert await b.get_many(["user:0", "user:299"]) == {
        "user:0": {"id": 0, "name": "n0"},
        "user:299": {"id": 299, "name": "n299"},
    }
    # registered under their tag, and stamped with its version: invalidating it reaches them
    assert len(await a.keys_for_tag("users")) == 300
    pttl = await raw.pttl(KeySpace(NS).data_key("user:1"))
    assert 0 < pttl <= 60_000
    await a.invalidate_tag("users")
    await async_until(lambda: b.l1.peek("user:7", MISSING) is MISSING, DEADLINE)
    assert await b.get("user:7", MISSING) is MISSING
    # without fill_l1 the warming process keeps nothing in L1
    assert a.l1.peek("user:3", MISSING) is MISSING


async def test_warm_revokes_leases_and_drops_stale_l1_copies(pair, raw) -> None:
    a, b = pair
    await b.set("k1", "old")
    assert b.l1.peek("k1", MISSING) == "old"
    lease = KeySpace(NS).lease_key("k2")
    await raw.set(lease, b"someone-loading", px=60_000)
    await a.warm({"k1": "new", "k2": "fresh"}, progress=False)
    # a loader that read before the warm cannot land its fill after it
    assert await raw.exists(lease) == 0
    # b heard the keys on the bus and reads the warmed value
    await async_until(lambda: b.l1.peek("k1", MISSING) is MISSING, DEADLINE)
    assert await b.get("k1") == "new"


async def test_fill_l1_puts_values_in_this_process(pair) -> None:
    a, _ = pair
    await a._bus_started()
    await async_until(lambda: a._l1_open(), DEADLINE)
    await a.warm({"x": 1, "y": 2}, fill_l1=True, progress=False)
    assert a.l1.peek("x", MISSING) == 1


async def test_loader_many_loads_keys_per_batch(pair) -> None:
    a, b = pair
    calls: list[list[str]] = []

    async def load(keys: list[str]) -> dict[str, Any]:
        calls.append(list(keys))
        return {key: key.upper() for key in keys if key != "p:13"}  # p:13 is not found

    keys = [f"p:{i}" for i in range(50)]
    report = await a.warm(keys, loader_many=load, batch_size=20, progress=False)
    assert (report.written, report.skipped, report.failed) == (49, 1, 0)
    assert sorted(len(c) for c in calls) == [10, 20, 20]
    assert await b.get("p:12") == "P:12"
    assert await b.get("p:13", MISSING) is MISSING


async def test_concurrency_is_bounded_and_progress_reaches_the_total(pair) -> None:
    a, _ = pair
    lock = threading.Lock()
    in_flight = [0, 0]  # now, most

    async def load(keys: list[str]) -> dict[str, Any]:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        await async_sleep(0.01)
        with lock:
            in_flight[0] -= 1
        return dict.fromkeys(keys, 1)

    seen: list[tuple[int, Any]] = []
    report = await a.warm(
        [f"c:{i}" for i in range(200)],
        loader_many=load,
        batch_size=10,
        max_concurrency=3,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert report.written == 200
    assert 1 <= in_flight[1] <= 3
    assert len(seen) == 20
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert seen[-1] == (200, 200)


async def test_a_generator_streams_and_progress_has_no_total(pair) -> None:
    a, b = pair
    seen: list[Any] = []
    report = await a.warm(
        ((f"g:{i}", i) for i in range(25)),
        batch_size=10,
        progress=lambda done, total: seen.append(total),
    )
    assert report.written == 25 and report.batches == 3
    assert set(seen) == {None}
    assert await b.get("g:24") == 24


async def test_bad_items_are_counted_and_the_rest_is_written(pair) -> None:
    a, b = pair
    items: list[Any] = [("ok:1", 1), ("bad", object()), ("", 2), "not-a-pair", ("ok:2", 2)]
    report = await a.warm(items, progress=False, resume_key="bad-items")
    assert (report.written, report.failed) == (2, 3)
    assert len(report.errors) == 3
    # refused again by any re-run: they do not keep the checkpoint
    assert report.checkpoint is None
    assert await b.get("ok:2") == 2


async def test_bad_options_raise_before_anything_is_written(pair) -> None:
    a, _ = pair
    with pytest.raises(ValueError, match="batch_size"):
        await a.warm({"k": 1}, batch_size=0)
    with pytest.raises(ValueError, match="max_concurrency"):
        await a.warm({"k": 1}, max_concurrency=0)
    with pytest.raises(ValueError, match="rate"):
        await a.warm({"k": 1}, rate=-1)
    with pytest.raises(TypeError, match="items"):
        await a.warm(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resume_key"):
        await a.warm({"k": 1}, resume_key="")
    assert await a.get("k", MISSING) is MISSING


async def test_a_resumed_run_skips_the_batches_done(pair, raw) -> None:
    a, b = pair
    calls: list[str] = []
    failing = {"r:30"}

    def load(keys: list[str]) -> dict[str, Any]:
        calls.extend(keys)
        if failing & set(keys):
            raise RuntimeError("database timeout")
        return {key: f"v-{key}" for key in keys}

    keys = [f"r:{i}" for i in range(60)]
    first = await a.warm(
        keys, loader_many=load, batch_size=10, max_concurrency=1, resume_key="nightly"
    )
    assert first.failed == 10 and first.written == 50 and not first.ok
    assert first.checkpoint == 3  # batches 0, 1, 2 done; batch 3 failed
    assert "database timeout" in first.errors[0]
    checkpoint = KeySpace(NS).meta_key("warm.nightly")
    assert await raw.get(checkpoint) == b"3"
    failing.clear()
    calls.clear()
    second = await a.warm(keys, loader_many=load, batch_size=10, resume_key="nightly")
    assert second.resumed_batches == 3 and second.skipped == 30 and second.written == 30
    assert calls == keys[30:]  # the database was not asked for the batches done
    assert second.ok and second.checkpoint is None
    assert await raw.exists(checkpoint) == 0  # a finished run starts afresh next time
    assert await b.get("r:35") == "v-r:35"


async def test_an_l1_only_cache_warms_its_l1() -> None:
    cache = AsyncCache(None)
    report = await cache.warm({"a": 1, "b": 2}, progress=False)
    assert report.written == 2
    assert await cache.get("a") == 1
    with pytest.raises(ValueError, match="Redis"):
        await cache.warm({"a": 1}, resume_key="x")
    await cache.close()


# -- faults (a private standalone server) ------------------------------------------------


async def in_redis(url: str, key: str) -> Any:
    client = AsyncRedis.from_url(url)
    try:
        return await client.get(KeySpace(NS).data_key(key))
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_redis_paused_mid_warm_every_batch_lands(redis_server_factory) -> None:
    server = redis_server_factory()
    cache = AsyncCache(server.url, namespace=NS, redis_timeout=0.1, breaker_cooldown=0.2)
    old = AsyncCache(server.url, namespace=NS)
    keys = [f"f:{i}" for i in range(100)]
    try:
        await old.set_many({key: "old" for key in keys})
        resumed = threading.Event()

        def load(batch: list[str]) -> dict[str, Any]:
            if batch[0] == "f:40" and not resumed.is_set():
                server.pause()  # the batches from here on meet a paused Redis
                threading.Timer(0.6, lambda: (server.resume(), resumed.set())).start()
            return {key: f"new-{key}" for key in batch}

        report = await cache.warm(
            keys, loader_many=load, batch_size=10, max_concurrency=2, retry_for=DEADLINE
        )
        assert resumed.is_set()
        assert (report.written, report.failed) == (100, 0), report.errors
        await async_until(lambda: cache.stats().invalidation.outbox_pending == 0, DEADLINE)
        for key in keys:  # every batch landed: none lost, none left at the old value
            assert await in_redis(server.url, key) is not None, key
        fresh = AsyncCache(server.url, namespace=NS)
        try:
            assert await fresh.get_many(keys) == {key: f"new-{key}" for key in keys}
        finally:
            await fresh.close()
        assert cache.dead_letters() == []
    finally:
        await cache.close()
        await old.close()


@pytest.mark.slow
async def test_a_batch_failing_past_retry_for_is_reported_and_never_stale(
    redis_server_factory,
) -> None:
    server = redis_server_factory()
    cache = AsyncCache(server.url, namespace=NS, redis_timeout=0.1, breaker_cooldown=0.2)
    keys = [f"s:{i}" for i in range(30)]
    try:
        await cache.set_many({key: "old" for key in keys})
        paused = threading.Event()

        def load(batch: list[str]) -> dict[str, Any]:
            if batch[0] == "s:10" and not paused.is_set():
                paused.set()
                server.pause()
            return {key: f"new-{key}" for key in batch}

        try:
            report = await cache.warm(
                keys,
                loader_many=load,
                batch_size=10,
                max_concurrency=1,
                retry_for=0.3,
                resume_key="job",
            )
        finally:
            server.resume()
        assert report.written == 10 and report.failed == 20 and report.checkpoint == 1
        assert any("not written" in line for line in report.errors)
        # the failed batches' keys are deleted once Redis answers: a miss, never "old"
        await async_until(lambda: cache.stats().invalidation.outbox_pending == 0, DEADLINE)
        for key in keys[10:]:
            assert await in_redis(server.url, key) is None, key
        # the re-run writes what failed, from the checkpoint on
        again = await cache.warm(
            keys,
            loader_many=lambda b: {k: f"new-{k}" for k in b},
            batch_size=10,
            resume_key="job",
        )
        assert again.resumed_batches == 1 and again.written == 20 and again.ok
        assert await cache.get("s:25") == "new-s:25"
    finally:
        await cache.close()
