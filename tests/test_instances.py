"""Heartbeat records of live caches (``stratacache.instances``), on a standalone server and
a cluster: several caches in this process and one in a spawned process."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from collections.abc import Callable

import msgpack
import pytest

import stratacache
from stratacache import Cache, InstanceInfo, instances
from stratacache._instances import RECORD_VERSION, decode_record
from stratacache._keys import KeySpace

from workers import instance_holder

NS = "fleet"
DEADLINE = 20.0  # generous: a noisy 2-CPU machine; every wait ends as soon as it holds


def wait_for(
    url: str, cluster: bool, done: Callable[[list[InstanceInfo]], bool], what: str
) -> list[InstanceInfo]:
    """Poll the records until ``done(records)`` (fail after DEADLINE)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        records = instances(url, NS, cluster=cluster)
        if done(records):
            return records
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still {records!r}")
        time.sleep(0.02)


def test_caches_publish_records_and_close_removes_them(target: tuple[str, bool]) -> None:
    url, cluster = target
    caches = [Cache(url, cluster=cluster, namespace=NS, instance=f"app-{i}") for i in range(3)]
    try:
        for cache in caches:  # the bus (and so the record) starts with a cache's first call
            cache.get("nothing")
        caches[0].set("k", "v")
        for _ in range(3):
            caches[0].get("k")
        caches[0].get("absent")

        def all_healthy(records: list[InstanceInfo]) -> bool:
            return len(records) == 3 and all(r.bus_state == "healthy" for r in records)

        records = wait_for(url, cluster, all_healthy, "three healthy records")
        assert [r.instance for r in records] == ["app-0", "app-1", "app-2"]
        for record, cache in zip(records, caches):
            source = cache._bus.state.source.hex()  # type: ignore[union-attr]
            assert record.id == f"{record.instance}/{source[:12]}"
            assert record.source == source
            assert record.namespace == NS
            assert record.host == socket.gethostname()
            assert record.pid == os.getpid()
            assert record.version == stratacache.__version__
            assert record.breaker_state == "closed"
            assert record.outbox_size == 0 and record.dead_letters == 0
            assert record.ttl == 5.0
            assert record.started_at <= record.updated_at <= time.time() + 1
            assert record.uptime >= 0

        # the counters are refreshed: app-0's reads show up within a refresh
        def counted(records: list[InstanceInfo]) -> bool:
            app0 = [r for r in records if r.instance == "app-0"]
            return bool(app0) and app0[0].l1_hits >= 3 and app0[0].hit_ratio >= 0.5

        wait_for(url, cluster, counted, "app-0's reads in its record")

        caches[1].close()
        # close() deletes the record at once: no poll needed
        assert [r.instance for r in instances(url, NS, cluster=cluster)] == ["app-0", "app-2"]
    finally:
        for cache in caches:
            cache.close()
    assert instances(url, NS, cluster=cluster) == []


def test_a_killed_process_record_expires(target: tuple[str, bool]) -> None:
    url, cluster = target
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=instance_holder, args=(url, cluster, NS, 0.6))
    proc.start()
    try:
        records = wait_for(url, cluster, lambda r: len(r) == 1, "the holder's record")
        assert records[0].pid == proc.pid
        assert records[0].instance == "holder"
        assert records[0].ttl == pytest.approx(0.6)
        # it keeps refreshing its record (interval ttl/3) while alive
        first = records[0].updated_at
        wait_for(url, cluster, lambda r: len(r) == 1 and r[0].updated_at > first, "a refresh")
        proc.kill()
        proc.join(30)
        wait_for(url, cluster, lambda r: r == [], "the killed holder's record to expire")
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(30)


def test_no_record_with_instance_ttl_zero(redis_url: str) -> None:
    with Cache(redis_url, namespace=NS, instance_ttl=0) as cache:
        cache.set("k", 1)
        # the bus is up and healthy, so the prober has run: a record would have been due
        deadline = time.monotonic() + DEADLINE
        while cache.stats().bus_state != "healthy":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert instances(redis_url, NS) == []


async def test_ainstances_reads_the_same_records(redis_url: str) -> None:
    async with stratacache.AsyncCache(redis_url, namespace=NS, instance="async-app") as cache:
        await cache.set("k", 1)
        deadline = time.monotonic() + DEADLINE
        while not (records := await stratacache.ainstances(redis_url, NS)):
            assert time.monotonic() < deadline
            await cache.get("k")  # yields to the loop, so the prober runs
        assert records[0].instance == "async-app"
    assert await stratacache.ainstances(redis_url, NS) == []


def test_records_from_a_client_and_foreign_bytes_are_skipped(redis_url: str) -> None:
    import redis

    keys = KeySpace(NS)
    client = redis.Redis.from_url(redis_url)
    try:
        client.zadd(keys.instance_index_key(), {"junk": 1, "gone": 2, "other-version": 3})
        client.set(keys.instance_key("junk"), b"\xc1not msgpack")
        client.set(keys.instance_key("other-version"), msgpack.packb({"v": 99, "id": "x"}))
        assert instances(client, NS) == []
    finally:
        client.close()


def test_decode_record_rejects_malformed_records() -> None:
    good = {
        "v": RECORD_VERSION,
        "id": "a/0123456789ab",
        "namespace": NS,
        "instance": "a",
        "source": "0123456789ab",
        "host": "h",
        "pid": 1,
        "version": "0",
        "started_at": 1.0,
        "updated_at": 2.0,
        "ttl": 5,
        "bus_state": "healthy",
        "bus_lag_p99": 0,
        "hit_ratio": 0.5,
        "outbox_size": 0,
        "dead_letters": 0,
        "breaker_state": "closed",
        "future_field": [1, 2],  # unknown fields are ignored (newer writers)
    }
    record = decode_record(msgpack.packb(good))
    assert record is not None and record.uptime == 1.0 and record.ttl == 5.0
    assert record.to_dict()["uptime"] == 1.0
    for name, bad in [("pid", "1"), ("hit_ratio", "x"), ("id", 3), ("v", 2)]:
        assert decode_record(msgpack.packb({**good, name: bad})) is None, name
    assert decode_record(msgpack.packb({k: v for k, v in good.items() if k != "host"})) is None
    assert decode_record(msgpack.packb({**good, "recent_dead_letters": "x"})) is None
    assert decode_record(b"\x92\x01") is None
    assert decode_record(b"x" * 20_000) is None
    assert decode_record("not bytes") is None
