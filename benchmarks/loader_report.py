"""What the loader's timeouts and breaker cost on a miss (docs/loader.md).

Every call is a miss, so each one runs the whole fill and the loader (which returns at
once). By default the caches have no Redis (``redis=None``): what is measured is then
the read path's own work, which the timeouts change, without the network round trips
(``--redis``: a private redis-server; each miss adds an L2 read, a lease and a write).
Modes, measured in the same run: ``plain`` (no limit, no breaker: the path as it was),
``breaker`` (``loader_breaker_threshold=5``), ``hard`` (``hard_timeout=10``: the load
runs in an asyncio task / a worker thread), ``soft+hard`` (``soft_timeout=5``,
``hard_timeout=10``). Sync ``Cache`` and ``AsyncCache``. Best of ``--rounds`` rounds of
``--misses`` calls, microseconds per miss, and the ratio to ``plain``.

    taskset -c 1 python benchmarks/loader_report.py [--misses 2000] [--rounds 5] [--redis]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from typing import Any

from stratacache import AsyncCache, Cache
from stratacache.testing import RedisServerProcess

MODES: dict[str, dict[str, Any]] = {
    "plain": {},
    "breaker": {"loader_breaker_threshold": 5},
    "hard": {"hard_timeout": 10},
    "soft+hard": {"soft_timeout": 5, "hard_timeout": 10},
}
_ids = itertools.count()


def sync_round(url: str | None, options: dict[str, Any], misses: int) -> float:
    cache = Cache(url, namespace=f"lr{next(_ids)}", bus=False, l1_maxsize=2 * misses, **options)
    try:
        cache.get_or_set("warm", lambda: 0)
        start = time.perf_counter()
        for i in range(misses):
            cache.get_or_set(f"k{i}", lambda: 1)
        return (time.perf_counter() - start) / misses
    finally:
        cache.close()


async def async_round(url: str | None, options: dict[str, Any], misses: int) -> float:
    cache = AsyncCache(
        url, namespace=f"lr{next(_ids)}", bus=False, l1_maxsize=2 * misses, **options
    )

    async def load() -> int:
        return 1

    try:
        await cache.get_or_set("warm", load)
        start = time.perf_counter()
        for i in range(misses):
            await cache.get_or_set(f"k{i}", load)
        return (time.perf_counter() - start) / misses
    finally:
        await cache.close()


def report(url: str | None, misses: int, rounds: int) -> None:
    for kind in ("Cache", "AsyncCache"):
        best: dict[str, float] = {}
        for _ in range(rounds):  # interleaved: drift hits every mode alike
            for mode, options in MODES.items():
                if kind == "Cache":
                    t = sync_round(url, options, misses)
                else:
                    t = asyncio.run(async_round(url, options, misses))
                best[mode] = min(best.get(mode, t), t)
        where = "Redis" if url else "no Redis"
        print(f"\n{kind}, {where}: us per miss (best of {rounds} x {misses})")
        print("| mode | us/miss | x plain |\n|---|---|---|")
        for mode, t in best.items():
            print(f"| {mode} | {t * 1e6:.1f} | {t / best['plain']:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis", action="store_true")
    args = parser.parse_args()
    if not args.redis:
        report(None, args.misses, args.rounds)
        return
    with RedisServerProcess() as server:
        report(server.url, args.misses, args.rounds)


if __name__ == "__main__":
    main()
