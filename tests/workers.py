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
    cache = Cache(url, cluster=cluster, namespace="stampede", lease_wait=10)

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
