"""Print how stratacache's costs scale, each curve beside its baseline from the same run.

    taskset -c 1 python benchmarks/scaling_report.py [--quick] [--json out.json]

Three curves (the L1's own curve, get and set cost from 1k to 10M entries, is
``l1_report.py --scaling``):

- **L2 hit under 1, 4 and 16 client threads**: wall time per read over all threads, an L1
  of one entry so that every read is an L2 hit, beside raw redis-py ``GET`` +
  ``msgpack.unpackb`` in the same number of threads (redis-py's pool gives each thread its
  own connection, as stratacache's does).
- **Bus propagation with 1 to 16 subscribing processes**: p50 and p99 from a write until
  every reader process serves the new value, beside raw ``PUBLISH`` -> receive in as many
  plain subscribers.
- **Tag invalidation against tag size**: the time ``invalidate_tag`` takes to return, and
  until another instance stops serving the tagged entries, for tags of 100 to 100,000
  (1,000,000 without ``--quick``) entries. Invalidation is an epoch bump, so this curve is
  flat: the members are reclaimed later, in the background.

Starts its own redis-server, which inherits the CPU pinning.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack
import redis

from stratacache import Cache, _l1
from stratacache.testing import RedisServerProcess

from bus_cases import percentile, propagation

VALUE = {"id": 42, "name": "Ada Lovelace", "email": "ada@example.com", "roles": ["admin"]}


def _per_op(fn: Any, threads: int, per_thread: int, repeat: int) -> float:
    """Best wall seconds per operation of ``fn(i)`` called ``per_thread`` times in each of
    ``threads`` threads started together."""
    best = float("inf")
    for _ in range(repeat):
        barrier = threading.Barrier(threads + 1)

        def work(barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            for i in range(per_thread):
                fn(i)

        pool = [threading.Thread(target=work) for _ in range(threads)]
        for t in pool:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in pool:
            t.join()
        best = min(best, (time.perf_counter() - start) / (threads * per_thread))
    return best


def l2_hit_curve(url: str, thread_counts: list[int], per_thread: int, repeat: int) -> list[dict]:
    keys = ["a", "b"]
    raw = redis.Redis.from_url(url, max_connections=64)
    cache = Cache(url, namespace="scaling", l1_maxsize=1)
    try:
        for k in keys:
            raw.set(f"raw:{k}", msgpack.packb(VALUE))
            cache.set(k, VALUE)

        def raw_get(i: int) -> None:
            msgpack.unpackb(raw.get(f"raw:{keys[i & 1]}"))

        def strata_get(i: int) -> None:
            cache.get(keys[i & 1])

        rows = []
        for threads in thread_counts:
            base = _per_op(raw_get, threads, per_thread, repeat)
            ours = _per_op(strata_get, threads, per_thread, repeat)
            rows.append({"threads": threads, "raw_us": base * 1e6, "strata_us": ours * 1e6})
            print(
                f"  {threads:>3} thread(s)  r.get+unpackb {base * 1e6:7.1f} us"
                f"  Cache.get {ours * 1e6:7.1f} us  {ours / base:5.2f}x"
            )
        return rows
    finally:
        cache.close()
        raw.close()


def bus_curve(url: str, reader_counts: list[int], rounds: int) -> list[dict]:
    rows = []
    for readers in reader_counts:
        raw = propagation(url, "raw", rounds=rounds, readers=readers)
        bus = propagation(url, "bus", rounds=rounds, readers=readers)
        row = {
            "readers": readers,
            "raw_p50_ms": percentile(raw, 0.5) * 1e3,
            "raw_p99_ms": percentile(raw, 0.99) * 1e3,
            "bus_p50_ms": percentile(bus, 0.5) * 1e3,
            "bus_p99_ms": percentile(bus, 0.99) * 1e3,
        }
        rows.append(row)
        print(
            f"  {readers:>3} reader(s)  raw p50 {row['raw_p50_ms']:6.3f} ms p99"
            f" {row['raw_p99_ms']:6.3f} ms  bus p50 {row['bus_p50_ms']:6.3f} ms p99"
            f" {row['bus_p99_ms']:6.3f} ms  p99 {row['bus_p99_ms'] / row['raw_p99_ms']:5.2f}x"
        )
    return rows


def _wait_unserved(reader: Cache, key: str, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while reader.get(key) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} was still served {deadline_s} s after the invalidation")
        time.sleep(0.0001)


def tag_curve(url: str, sizes: list[int]) -> list[dict]:
    # a long client timeout: a 10,000-key pipeline on a CPU shared with the server can take
    # longer than the default, and set_many would then drop the chunk (counted, not raised)
    writer = Cache(url, namespace="scalingtags", redis_timeout=10.0)
    reader = Cache(url, namespace="scalingtags", redis_timeout=10.0)
    rows = []
    try:
        for size in sizes:
            tag = f"t{size}"
            for start in range(0, size, 10_000):
                writer.set_many(
                    {f"{tag}:{i}": i for i in range(start, min(size, start + 10_000))},
                    ttl=3600,
                    tags=[tag],
                )
            probe = f"{tag}:{size - 1}"
            if reader.get(probe) != size - 1:
                raise RuntimeError(f"population of {tag} incomplete")
            start = time.perf_counter()
            writer.invalidate_tag(tag)
            returned = time.perf_counter() - start
            _wait_unserved(reader, probe)
            unserved = time.perf_counter() - start
            rows.append({"size": size, "call_ms": returned * 1e3, "unserved_ms": unserved * 1e3})
            print(
                f"  {size:>9,} entries  invalidate_tag returns {returned * 1e3:7.3f} ms,"
                f" another instance stops serving after {unserved * 1e3:7.3f} ms"
            )
    finally:
        writer.close()
        reader.close()
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer points and rounds")
    parser.add_argument("--json", help="also write the raw numbers to this file")
    args = parser.parse_args(argv)
    print(f"L1 implementation: {_l1.L1.__module__}")
    results: dict[str, Any] = {}
    with RedisServerProcess() as server:
        print("\nL2 hit, wall time per read over all threads")
        results["l2_hit_threads"] = l2_hit_curve(
            server.url, [1, 4, 16], per_thread=200 if args.quick else 1000, repeat=3
        )
        print("\nbus propagation, write -> served in N other processes")
        results["bus_readers"] = bus_curve(
            server.url, [1, 4, 8] if args.quick else [1, 2, 4, 8, 16], 50 if args.quick else 200
        )
        print("\ntag invalidation against tag size")
        results["tag_sizes"] = tag_curve(
            server.url,
            [100, 1_000, 10_000, 100_000]
            if args.quick
            else [100, 1_000, 10_000, 100_000, 1_000_000],
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
