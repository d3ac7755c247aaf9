"""Print what a Bloom filter check and add cost, beside raw redis-py baselines measured in
the same run.

    taskset -c 1 python benchmarks/bloom_report.py          # ~1 minute
    taskset -c 1 python benchmarks/bloom_report.py --quick  # fewer rounds

Starts its own redis-server (no persistence; it inherits the CPU pinning, so client and
server share one CPU, as in the other reports). A filter of 1,000,000 items at 1 % (k = 7,
one shard) is rebuilt from ``range(1_000_000)``, then, best of ``ROUNDS`` rounds:

* single calls: a raw ``GET`` (the floor of one round trip), ``might_contain`` (one
  EVALSHA), ``might_contain`` answered by the local copy (``local=True``: no round trip),
  ``add``;
* 1000 items: ``might_contain_many`` / ``add_many`` (one pipeline of two script calls)
  beside the naive raw versions, a pipeline of 7000 ``GETBIT`` / ``SETBIT``;
* Redis's own time per script call (``INFO commandstats``, ``usec_per_call`` of
  ``eval``: 500 items per call), which is how long a batch holds Redis.

No figure here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable
from time import perf_counter
from typing import Any

import redis

from stratacache import Cache
from stratacache.testing import RedisServerProcess

NS = "benchbloom"
CAPACITY = 1_000_000


def best(fn: Callable[[], Any], rounds: int, per_round: int) -> float:
    """Best mean seconds per call over ``rounds`` rounds of ``per_round`` calls."""
    times = []
    for _ in range(rounds):
        start = perf_counter()
        for _ in range(per_round):
            fn()
        times.append((perf_counter() - start) / per_round)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds, per_round = (3, 200) if args.quick else (7, 1000)
    bulk_rounds = 3 if args.quick else 7
    with RedisServerProcess() as server:
        raw = redis.Redis(host=server.host, port=server.port)
        cache = Cache(server.url, namespace=NS, redis_timeout=30.0, bus=False)
        users = cache.bloom("users", CAPACITY, 0.01)
        local_cache = Cache(server.url, namespace=NS, redis_timeout=30.0, bus=False)
        local = local_cache.bloom("users", CAPACITY, 0.01, local=True, refresh_interval=3600)
        start = perf_counter()
        users.rebuild(range(CAPACITY), progress=False)
        rebuild_s = perf_counter() - start
        local.refresh()
        raw.set("probe", b"x")
        p = users.params
        shard_key = cache._keys.bloom_keys("users", 0)[1]  # generation "a" after one rebuild
        present = list(range(1000))
        absent = list(range(CAPACITY, CAPACITY + 1000))
        positions = [pos for item in absent for pos in p.positions(*p.locate(item)[1:])]

        rows: list[tuple[str, float, str]] = []
        rows.append(
            (
                "raw GET (one round trip)",
                best(lambda: raw.get("probe"), rounds, per_round),
                "baseline",
            )
        )
        rows.append(
            (
                "might_contain, absent id",
                best(lambda: users.might_contain(-1), rounds, per_round),
                "",
            )
        )
        rows.append(
            (
                "might_contain, present id",
                best(lambda: users.might_contain(5), rounds, per_round),
                "",
            )
        )
        rows.append(
            (
                "might_contain, local copy hit",
                best(lambda: local.might_contain(5), rounds, per_round),
                "no round trip",
            )
        )
        counter = iter(range(10**9))
        rows.append(
            ("add (new id)", best(lambda: users.add(f"n{next(counter)}"), rounds, per_round), "")
        )

        def raw_getbits() -> None:
            pipe = raw.pipeline(transaction=False)
            for pos in positions:
                pipe.getbit(shard_key, pos)
            pipe.execute()

        def raw_setbits() -> None:
            pipe = raw.pipeline(transaction=False)
            for pos in positions:
                pipe.setbit(shard_key, pos, 1)
            pipe.execute()

        bulk: list[tuple[str, float, str]] = []
        bulk.append(("raw pipeline of 7000 GETBIT", best(raw_getbits, bulk_rounds, 5), "baseline"))
        bulk.append(
            (
                "might_contain_many(1000)",
                best(lambda: users.might_contain_many(absent), bulk_rounds, 5),
                "",
            )
        )
        bulk.append(
            (
                "might_contain_many(1000), local hits",
                best(lambda: local.might_contain_many(present), bulk_rounds, 5),
                "",
            )
        )
        batches = iter(range(10**9))
        bulk.append(("raw pipeline of 7000 SETBIT", best(raw_setbits, bulk_rounds, 5), "baseline"))
        bulk.append(
            (
                "add_many(1000) new ids",
                best(
                    lambda: users.add_many(f"b{next(batches)}:{i}" for i in range(1000)),
                    bulk_rounds,
                    5,
                ),
                "",
            )
        )
        raw.config_resetstat()
        for _ in range(20):
            users.might_contain_many(absent)
        check_us = raw.info("commandstats").get("cmdstat_eval", {}).get("usec_per_call", 0.0)
        raw.config_resetstat()
        for _ in range(20):
            users.add_many(f"c{next(batches)}:{i}" for i in range(1000))
        add_us = raw.info("commandstats").get("cmdstat_eval", {}).get("usec_per_call", 0.0)
        cache.close()
        local_cache.close()
        raw.close()

    print(f"# Bloom filter report: Python {platform.python_version()}, {platform.machine()}")
    mib = p.bits / 8 / 2**20
    print(
        f"filter: capacity {CAPACITY}, error rate 0.01, {p.bits} bits ({mib:.2f} MiB), "
        f"k = {p.hashes}, {p.shards} shard(s)"
    )
    print(
        f"rebuild from range({CAPACITY}): {rebuild_s:.1f} s ({CAPACITY / rebuild_s:,.0f} items/s)\n"
    )
    floor = rows[0][1]
    print("| single call | us | x raw GET | note |\n|---|---|---|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds * 1e6:.1f} | {seconds / floor:.2f} | {note} |")
    print("\n| 1000 items | ms | note |\n|---|---|---|")
    for name, seconds, note in bulk:
        print(f"| {name} | {seconds * 1e3:.2f} | {note} |")
    print(f"\nRedis time per script call (500 items): check {check_us:.0f} us, add {add_us:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
