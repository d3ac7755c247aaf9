"""Print what a Django site gets per cache read from StrataCache, beside Django's own
backends, from one run.

    taskset -c 1 python benchmarks/django_report.py            # ~1 minute
    taskset -c 1 python benchmarks/django_report.py --quick

Starts its own redis-server (it inherits the CPU pinning: client and server share one
CPU). Every backend reads the same small value (a dict of 10 fields) that is cached:

* ``django RedisCache`` — Django's built-in Redis backend (a Redis round trip and an
  unpickle per read; its async ``aget`` is ``sync_to_async`` over the sync one);
* ``django LocMemCache`` — Django's in-process backend (unpickles on every read; no
  sharing between processes, no invalidation across them);
* ``StrataCache msgpack`` / ``StrataCache pickle`` — this backend: an L1 hit, plus the
  unpickle of the signed pickle mode; ``aget`` runs on ``AsyncCache``.

Figures are the median of 5 timed batches per backend (µs per call), with the ratio to
Django's RedisCache measured in the same run. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any, Callable

import django
from django.conf import settings

from stratacache.testing import RedisServerProcess

VALUE = {f"field{i}": i * 1.5 for i in range(10)}


def timed(fn: Callable[[], Any], calls: int) -> float:
    """Median µs per call of ``fn`` over 5 batches of ``calls``."""
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        batches.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(batches)


def atimed(fn: Callable[[], Any], calls: int) -> float:
    """Median µs per awaited call of ``fn`` over 5 batches, in one event loop (after one
    warm-up call; the loop's async caches are closed at the end)."""

    async def run() -> float:
        from stratacache.contrib.django import ashutdown

        await fn()
        batches = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls):
                await fn()
            batches.append((time.perf_counter() - start) / calls * 1e6)
        await ashutdown()
        return statistics.median(batches)

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls per batch")
    args = parser.parse_args()
    calls = 2_000 if args.quick else 10_000
    async_calls = calls // 4

    with RedisServerProcess(extra_args=["--save", "", "--appendonly", "no"]) as server:
        url = server.url
        strata = "stratacache.contrib.django.StrataCache"
        settings.configure(
            SECRET_KEY="benchmark-only-secret-key",
            CACHES={
                "redis": {
                    "BACKEND": "django.core.cache.backends.redis.RedisCache",
                    "LOCATION": url,
                },
                "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
                "strata_msgpack": {
                    "BACKEND": strata,
                    "LOCATION": url,
                    "OPTIONS": {"namespace": "bench-m", "redis_timeout": 2.0},
                },
                "strata_pickle": {
                    "BACKEND": strata,
                    "LOCATION": url,
                    "OPTIONS": {
                        "namespace": "bench-p",
                        "serializer": "pickle",
                        "redis_timeout": 2.0,
                    },
                },
            },
        )
        django.setup()
        from django.core.cache import caches

        from stratacache.contrib.django import shutdown

        rows: list[tuple[str, float, float]] = []
        for alias, label in [
            ("redis", "django RedisCache"),
            ("locmem", "django LocMemCache"),
            ("strata_msgpack", "StrataCache msgpack"),
            ("strata_pickle", "StrataCache pickle"),
        ]:
            cache = caches[alias]
            cache.set("k", VALUE, None)
            assert cache.get("k") == VALUE
            sync_us = timed(lambda cache=cache: cache.get("k"), calls)  # type: ignore[misc]

            async def aget(cache: Any = cache) -> Any:
                return await cache.aget("k")

            async_us = atimed(aget, async_calls)
            rows.append((label, sync_us, async_us))
        shutdown()

    base_sync, base_async = rows[0][1], rows[0][2]
    print(f"django {django.get_version()}, {calls} calls x 5 (get), {async_calls} x 5 (aget)")
    print(f"{'backend':<22}{'get µs':>10}{'vs Redis':>10}{'aget µs':>10}{'vs Redis':>10}")
    for label, sync_us, async_us in rows:
        print(
            f"{label:<22}{sync_us:>10.2f}{base_sync / sync_us:>9.1f}x"
            f"{async_us:>10.2f}{base_async / async_us:>9.1f}x"
        )


if __name__ == "__main__":
    main()
