"""How soon the outbox is applied once Redis answers again (issue 11's target: within
100 ms, p99).

For each trial: a private redis-server is paused (SIGSTOP) or killed, a cache issues
``--writes`` deletes (each one fails and waits in the outbox), the server is resumed (or
restarted: measured from the moment it answers a PING), and the report measures until
the outbox is empty (polled every 0.5 ms). Sync ``Cache`` and ``AsyncCache`` are
measured in the same run.

    python benchmarks/outbox_report.py [--trials 30] [--writes 100] [--fault pause|kill]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from stratacache import AsyncCache, Cache
from stratacache.testing import RedisServerProcess


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _down(server: RedisServerProcess, fault: str) -> None:
    if fault == "pause":
        server.pause()
    else:
        server.kill()


def _up(server: RedisServerProcess, fault: str) -> float:
    """Bring the server back; the time it answers again."""
    if fault == "pause":
        server.resume()
    else:
        server.restart()  # returns once the new process answers a PING
    return time.perf_counter()


def sync_trial(server: RedisServerProcess, writes: int, fault: str) -> float:
    cache = Cache(server.url, namespace="outbox-report", redis_timeout=0.1)
    try:
        cache.set("warm", 1)
        _down(server, fault)
        try:
            for i in range(writes):
                cache.delete(f"k{i}")
        finally:
            resumed = _up(server, fault)
        while cache.stats().invalidation.outbox_pending:
            time.sleep(0.0005)
        return time.perf_counter() - resumed
    finally:
        cache.close()


async def async_trial(server: RedisServerProcess, writes: int, fault: str) -> float:
    cache = AsyncCache(server.url, namespace="outbox-report", redis_timeout=0.1)
    try:
        await cache.set("warm", 1)
        _down(server, fault)
        try:
            for i in range(writes):
                await cache.delete(f"k{i}")
        finally:
            resumed = _up(server, fault)
        while cache.stats().invalidation.outbox_pending:
            await asyncio.sleep(0.0005)
        return time.perf_counter() - resumed
    finally:
        await cache.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--writes", type=int, default=100)
    parser.add_argument("--fault", choices=("pause", "kill"), default="pause")
    args = parser.parse_args()
    with RedisServerProcess() as server:
        for name, run in (
            ("Cache", lambda: sync_trial(server, args.writes, args.fault)),
            ("AsyncCache", lambda: asyncio.run(async_trial(server, args.writes, args.fault))),
        ):
            delays = [run() * 1000 for _ in range(args.trials)]
            print(
                f"{name:<10} {args.writes} pending deletes, {args.trials} trials: applied "
                f"{statistics.median(delays):.1f} ms (median), "
                f"{_percentile(delays, 0.99):.1f} ms (p99), {max(delays):.1f} ms (max) "
                f"after Redis answered again ({args.fault})"
            )


if __name__ == "__main__":
    main()
