"""Print the invalidation bus's figures beside the raw redis-py baseline, from one run.

    taskset -c 1 python benchmarks/bus_report.py

Starts its own redis-server (inheriting the CPU pinning). Propagation: a write in this
process until the new value is served in 3 spawned reader processes, beside raw
PUBLISH -> receive in 3 plain subscribers (see ``bus_cases``). Throughput: invalidations
per second with batching on and off, beside raw PUBLISH.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stratacache import _l1
from stratacache.testing import RedisServerProcess

from bus_cases import invalidations_per_second, percentile, propagation


def main() -> None:
    print(f"L1 implementation: {_l1.L1.__module__}")
    with RedisServerProcess() as server:
        print("\npropagation, write -> served in 3 other processes (200 writes, 5 ms apart)")
        print(f"  {'case':<52} {'p50':>9} {'p99':>9} {'max':>9}  p99 ratio")
        base = None
        for name, mode in (
            ("raw redis-py PUBLISH -> receive (baseline)", "raw"),
            ("raw SET+PUBLISH -> receive+GET (floor, no value sent)", "raw+kv"),
            ("stratacache set -> new value served (bus)", "bus"),
        ):
            lags = propagation(server.url, mode)
            p50, p99 = percentile(lags, 0.5), percentile(lags, 0.99)
            base = base or p99
            print(
                f"  {name:<52} {p50 * 1e3:7.3f}ms {p99 * 1e3:7.3f}ms {lags[-1] * 1e3:7.3f}ms"
                f"  {p99 / base:5.2f}x"
            )
        print("\ninvalidations per second (5,000 deletes, until another instance heard all)")
        print(f"  {'case':<52} {'per s':>10} {'messages':>9}")
        for threads in (1, 4):
            for name, window in (
                ("raw redis-py PUBLISH per key (baseline)", None),
                ("Cache.delete, batching off (window 0)", 0.0),
                ("Cache.delete, batching on (window 1 ms)", 0.001),
            ):
                rate, messages = invalidations_per_second(server.url, window, threads=threads)
                print(f"  {name + f', {threads} thread(s)':<52} {rate:10.0f} {messages:9d}")


if __name__ == "__main__":
    main()
