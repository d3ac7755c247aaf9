"""Print one table of the tiered cache's benchmarks with ratios to each group's baseline.

    taskset -c 1 python benchmarks/cache_report.py [--quick] [--json out.json]

Starts its own redis-server, then a 3-master Redis Cluster for the cluster L2 hit (both
inherit the CPU pinning, so client and servers share one CPU and the loopback round trip
pays no cross-CPU wake-up). Each figure is the best of several repeats, per operation;
compare ratios within one run, never absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stratacache import _l1
from stratacache.testing import RedisClusterProcesses, RedisServerProcess

from cache_cases import (
    close_resources,
    decorated_hit_cases,
    get_many_cases,
    l1_hit_cases,
    l2_hit_cases,
    l2_hit_cluster_cases,
    miss_cases,
)


def best_per_op(case, n: int, repeat: int = 7) -> float:
    case()  # warm up
    return min(timeit.repeat(case, number=1, repeat=repeat)) / n


def table(title: str, cases: dict, n: int, baselines: list[str], repeat: int = 7) -> dict:
    """Print one table; return it as ``report.py`` reads it (seconds per op, and the
    ratio to the group's baseline: the nearest baseline row above)."""
    times = {name: best_per_op(case, n, repeat) for name, case in cases.items()}
    print(f"\n{title}")
    print(f"  {'case':<55} {'per op':>11}  ratio")
    base = None
    rows = []
    for name, t in times.items():
        if any(b in name for b in baselines):
            base = t
        unit = f"{t * 1e9:8.0f} ns" if t < 1e-5 else f"{t * 1e6:8.1f} µs"
        print(f"  {name:<55} {unit:>11}  {t / base:5.2f}x" if base else f"  {name:<55} {unit:>11}")
        rows.append({"name": name, "seconds": t, "ratio": t / base if base else None})
    return {"title": title, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations and repeats")
    parser.add_argument("--json", help="also write the tables to this file (for report.py)")
    args = parser.parse_args(argv)
    scale, repeat = (0.25, 5) if args.quick else (1.0, 7)
    fast, l2, many, miss = (int(n * scale) for n in (20_000, 2_000, 200, 1_000))
    print(f"L1 implementation: {_l1.L1.__module__}")
    loop = asyncio.new_event_loop()
    both = ["(baseline)", "(async baseline)"]
    tables = [
        table("get, L1 hit", l1_hit_cases(fast, loop), fast, both, repeat),
        table("decorated function, hit", decorated_hit_cases(fast), fast, ["(baseline)"], repeat),
    ]
    with RedisServerProcess() as server:
        tables += [
            table("get, L2 hit (L1 miss)", l2_hit_cases(server.url, l2, loop), l2, both, repeat),
            table("get_many(100), L2", get_many_cases(server.url, many, loop), many, both, repeat),
            table(
                "get_or_set, miss (loader)",
                miss_cases(server.url, miss),
                miss,
                ["(baseline)"],
                repeat,
            ),
        ]
        close_resources(loop)
    with RedisClusterProcesses(3) as cluster:
        cases = l2_hit_cluster_cases(cluster.url, l2, loop)
        tables.append(table("get, L2 hit (L1 miss), Redis Cluster", cases, l2, both, repeat))
        close_resources(loop)
    loop.close()
    if args.json:
        Path(args.json).write_text(json.dumps({"tables": tables}, indent=2))


if __name__ == "__main__":
    main()
