"""Print one table of the tiered cache's benchmarks with ratios to each group's baseline.

    taskset -c 1 python benchmarks/cache_report.py

Starts its own redis-server (inheriting the CPU pinning, so client and server share one
CPU and the loopback round trip pays no cross-CPU wake-up). Each figure is the best of
several repeats, per operation; compare ratios within one run, never absolute times.
"""

from __future__ import annotations

import asyncio
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stratacache import _l1
from stratacache.testing import RedisServerProcess

from cache_cases import (
    close_resources,
    decorated_hit_cases,
    get_many_cases,
    l1_hit_cases,
    l2_hit_cases,
    miss_cases,
)


def best_per_op(case, n: int, repeat: int = 7) -> float:
    case()  # warm up
    return min(timeit.repeat(case, number=1, repeat=repeat)) / n


def table(title: str, cases: dict, n: int, baselines: list[str]) -> None:
    times = {name: best_per_op(case, n) for name, case in cases.items()}
    print(f"\n{title}")
    print(f"  {'case':<55} {'per op':>11}  ratio")
    base = None
    for name, t in times.items():
        if any(b in name for b in baselines):
            base = t
        unit = f"{t * 1e9:8.0f} ns" if t < 1e-5 else f"{t * 1e6:8.1f} µs"
        print(f"  {name:<55} {unit:>11}  {t / base:5.2f}x" if base else f"  {name:<55} {unit:>11}")


def main() -> None:
    print(f"L1 implementation: {_l1.L1.__module__}")
    loop = asyncio.new_event_loop()
    table("get, L1 hit", l1_hit_cases(20_000, loop), 20_000, ["(baseline)", "(async baseline)"])
    table("decorated function, hit", decorated_hit_cases(20_000), 20_000, ["(baseline)"])
    with RedisServerProcess() as server:
        table(
            "get, L2 hit (L1 miss)",
            l2_hit_cases(server.url, 2_000, loop),
            2_000,
            ["(baseline)", "(async baseline)"],
        )
        table("get_many(100), L2", get_many_cases(server.url, 200), 200, ["(baseline)"])
        table("get_or_set, miss (loader)", miss_cases(server.url, 1_000), 1_000, ["(baseline)"])
        close_resources(loop)
    loop.close()


if __name__ == "__main__":
    main()
