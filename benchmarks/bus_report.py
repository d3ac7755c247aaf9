"""Print the invalidation bus's figures beside the raw redis-py baseline, from one run.

    taskset -c 1 python benchmarks/bus_report.py [--quick] [--json out.json]

Starts its own redis-server (inheriting the CPU pinning). Propagation: a write in this
process until the new value is served in 3 spawned reader processes, beside raw
PUBLISH -> receive in 3 plain subscribers and the floor of any design that does not ship
values (see ``bus_cases``). Throughput: invalidations
per second with batching on and off, beside raw PUBLISH.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stratacache import _l1
from stratacache.testing import RedisServerProcess

from bus_cases import invalidations_per_second, percentile, propagation


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer writes and deletes")
    parser.add_argument("--json", help="also write the tables to this file (for report.py)")
    args = parser.parse_args(argv)
    rounds, deletes = (100, 2_000) if args.quick else (200, 5_000)
    print(f"L1 implementation: {_l1.L1.__module__}")
    propagation_rows: list[dict] = []
    throughput_rows: list[dict] = []
    with RedisServerProcess() as server:
        print(f"\npropagation, write -> served in 3 other processes ({rounds} writes, 5 ms apart)")
        print(f"  {'case':<52} {'p50':>9} {'p99':>9} {'max':>9}  p99 ratio")
        base = None
        for name, mode in (
            ("raw redis-py PUBLISH -> receive (baseline)", "raw"),
            ("raw SET+PUBLISH -> receive+GET (floor, no value sent)", "raw+kv"),
            ("the floor, subscribers polling like the readers below", "raw+kv polled"),
            ("stratacache set -> new value served (bus)", "bus"),
        ):
            lags = propagation(server.url, mode, rounds=rounds)
            p50, p99 = percentile(lags, 0.5), percentile(lags, 0.99)
            base = base or p99
            print(
                f"  {name:<52} {p50 * 1e3:7.3f}ms {p99 * 1e3:7.3f}ms {lags[-1] * 1e3:7.3f}ms"
                f"  {p99 / base:5.2f}x"
            )
            propagation_rows.append({"name": f"{name}, p99", "seconds": p99, "ratio": p99 / base})
        print(f"\ninvalidations per second ({deletes:,} deletes, until another instance heard all)")
        print(f"  {'case':<52} {'per s':>10} {'messages':>9}")
        for threads in (1, 4):
            raw_rate = None
            for name, window in (
                ("raw redis-py PUBLISH per key (baseline)", None),
                ("Cache.delete, batching off (window 0)", 0.0),
                ("Cache.delete, batching on (window 1 ms)", 0.001),
            ):
                rate, messages = invalidations_per_second(
                    server.url, window, n=deletes, threads=threads
                )
                raw_rate = raw_rate or rate
                label = name + f", {threads} thread(s)"
                print(f"  {label:<52} {rate:10.0f} {messages:9d}")
                # as time per invalidation, so that lower is better as in every other table
                throughput_rows.append(
                    {"name": label, "seconds": 1 / rate, "ratio": raw_rate / rate}
                )
    if args.json:
        tables = [
            {
                "title": "bus propagation: write -> served in 3 other processes (p99)",
                "rows": propagation_rows,
            },
            {
                "title": "invalidations: time per invalidation until another instance heard it",
                "rows": throughput_rows,
            },
        ]
        Path(args.json).write_text(json.dumps({"tables": tables}, indent=2))


if __name__ == "__main__":
    main()
