"""Redis faults on real processes: a paused server must cost bounded time, never an error."""

from __future__ import annotations

import threading
import time

import pytest

from stratacache import AsyncCache
from stratacache._primitives import async_sleep


@pytest.mark.slow
async def test_redis_paused_for_2s_during_1000_reads(redis_server_factory) -> None:
    server = redis_server_factory()
    # L1 of one entry: nearly every read goes to Redis, which is what this test is about
    cache = AsyncCache(
        server.url,
        namespace="pause",
        l1_maxsize=1,
        redis_timeout=0.1,
        breaker_threshold=3,
        breaker_cooldown=0.25,
    )
    keys = [f"k{i}" for i in range(50)]
    for key in keys:
        await cache.set(key, key.upper(), ttl=300)

    pause = threading.Timer(0.5, server.pause)
    resume = threading.Timer(2.5, server.resume)
    latencies: list[float] = []
    errors: list[BaseException] = []
    try:
        pause.start()
        resume.start()
        for i in range(1000):
            key = keys[i % len(keys)]
            start = time.perf_counter()
            try:
                value = await cache.get_or_set(key, lambda key=key: key.upper())
                assert value == key.upper()
            except BaseException as exc:  # the test counts every kind of failure
                errors.append(exc)
            latencies.append(time.perf_counter() - start)
            await async_sleep(0.004)  # pacing: 1,000 reads spread over ~4 s of real time
        resume.join()
        # after the pause: reads reach Redis again and the breaker is closed
        for key in keys[:5]:
            await cache.get_or_set(key, lambda key=key: key.upper())
    finally:
        pause.cancel()
        resume.cancel()
        if server.running:
            try:
                server.resume()
            except Exception:
                pass
        await cache.close()

    stats = cache.stats()
    assert errors == []
    assert max(latencies) < 1.0, max(latencies)  # each Redis call is bounded by ~0.1 s
    assert stats.breaker_opened >= 1
    assert stats.breaker_state == "closed"
    assert stats.errors >= 3
    assert stats.loads > 0  # the loader served while Redis was paused
