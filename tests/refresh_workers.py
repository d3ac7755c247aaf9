"""Worker of the multi-process early-refresh test (importable by spawned processes)."""

from __future__ import annotations

import time
from typing import Any

from stratacache import Cache
from stratacache._primitives import Redis, RedisCluster


def early_refresh_worker(
    url: str,
    cluster: bool,
    namespace: str,
    shared_clock: Any,
    shared_draw: Any,
    go: Any,
    results: Any,
) -> None:
    """Fill or read the key, wait for ``go`` (the parent moved the shared clock near
    expiry: the entry is due), read once more with early refresh on (it refreshes), wait
    for the refresh to end, report the value and the refresh counters."""
    client = RedisCluster.from_url(url) if cluster else Redis.from_url(url)

    def clock() -> float:
        return float(shared_clock.value)

    def load() -> int:
        n = int(client.incr(f"{namespace}:loads"))
        time.sleep(0.05)  # long enough for the other process to find the lease taken
        return n

    cache = Cache(
        url,
        cluster=cluster,
        namespace=namespace,
        timer=clock,
        clock=clock,
        rand=lambda: float(shared_draw.value),
        redis_timeout=2.0,
        bus=False,
    )
    try:
        first = cache.get_or_set("k", load, ttl=30, early_refresh=True)
        results.put(("ready", first))
        assert go.wait(60)
        cache.get_or_set("k", load, ttl=30, early_refresh=True)
        deadline = time.monotonic() + 30
        while cache._refresher.running() and time.monotonic() < deadline:
            time.sleep(0.005)
        stats = cache.stats()
        results.put(("done", stats.early_refreshes, stats.early_refreshes_adopted))
    finally:
        cache.close()
        client.close()
