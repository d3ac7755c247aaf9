"""Code that runs in spawned worker processes (importable by the child interpreter)."""

from __future__ import annotations

import threading
import time
from typing import Any

from stratacache import Cache
from stratacache._primitives import Redis, RedisCluster


def stampede_worker(
    url: str,
    cluster: bool,
    keys: list[str],
    threads: int,
    counter_key: str,
    barrier: Any,
    results: Any,
) -> None:
    """``threads`` threads read every key through the cache at once; loads count in Redis."""
    counter = RedisCluster.from_url(url) if cluster else Redis.from_url(url)
    cache = Cache(url, cluster=cluster, namespace="stampede", lease_wait=10, redis_timeout=2.0)

    def loader(key: str) -> str:
        counter.incr(counter_key)
        time.sleep(0.3)  # a slow database read: every other reader arrives during it
        return f"value-of-{key}"

    seen: list[str] = []
    lock = threading.Lock()

    def reader() -> None:
        for key in keys:
            value = cache.get_or_set(key, lambda key=key: loader(key))
            with lock:
                seen.append(value)

    barrier.wait()
    pool = [threading.Thread(target=reader) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    results.put((sorted(seen), cache.stats().loads))
    cache.close()
    counter.close()


BUS_NS = "busproc"


def bus_reader(
    url: str,
    cluster: bool,
    key: str,
    latest: Any,
    done_at: Any,
    allowance: float,
    barrier: Any,
    stop: Any,
    results: Any,
) -> None:
    """Read ``key`` (an int version) until ``stop``; count reads that were stale.

    A read is stale if it returns version ``v`` while version ``v + 1`` had been written
    (``set`` returned, at ``done_at[v + 1]``) more than ``allowance`` seconds before the
    read began: the time the bus is given to deliver.
    """
    cache = Cache(url, cluster=cluster, namespace=BUS_NS, redis_timeout=2.0)
    try:
        assert cache.get(key) is not None  # warm: from L2 into L1
        barrier.wait()
        reads = stale = 0
        while not stop.is_set():
            newest = latest.value
            began = time.time()
            value = cache.get(key)
            reads += 1
            # None: withheld after a deaf spell (a miss, never stale)
            if value is not None and value < newest and began - done_at[value + 1] > allowance:
                stale += 1
            time.sleep(0.0002)
        s = cache.stats()
        results.put(
            {
                "reads": reads,
                "stale": stale,
                "l1_hits": s.l1_hits,
                "flushes_subscribe": s.bus_flushes_subscribe,
                "flushes_gap": s.bus_flushes_gap,
                "flushes_heartbeat": s.bus_flushes_heartbeat,
                "reconnects": s.bus_reconnects,
                "state": s.bus_state,
            }
        )
    finally:
        cache.close()


def bus_watcher(url: str, cluster: bool, key: str, rounds: int, barrier: Any, results: Any) -> None:
    """Serve ``key`` continuously; note when each new version (1..rounds) is first served."""
    cache = Cache(url, cluster=cluster, namespace=BUS_NS, redis_timeout=2.0)
    try:
        assert cache.get(key) == 0
        barrier.wait()
        seen: dict[int, float] = {}
        deadline = time.monotonic() + 30
        while rounds not in seen and time.monotonic() < deadline:
            value = cache.get(key)
            if value not in seen:
                seen[value] = time.time()
            time.sleep(0.00005)
        seen.pop(0, None)
        results.put((seen, cache.stats().l1_hits))
    finally:
        cache.close()


def instance_holder(url: str, cluster: bool, namespace: str, ttl: float) -> None:
    """A cache that publishes its heartbeat record (``instance_ttl=ttl``) until the test
    kills this process; it serves one read so its counters are not all zero."""
    cache = Cache(url, cluster=cluster, namespace=namespace, instance="holder", instance_ttl=ttl)
    cache.get_or_set("k", lambda: 1)
    time.sleep(120)  # killed long before (a multiprocessing Event would hang its setter)
    cache.close()
