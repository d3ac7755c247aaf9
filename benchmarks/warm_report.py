"""Print the throughput of ``Cache.warm`` beside a raw pipelined ``SET`` of the same msgpack
bytes, from one run.

    taskset -c 1 python benchmarks/warm_report.py            # 100,000 items, ~1 minute
    taskset -c 1 python benchmarks/warm_report.py --items 20000 --rounds 3

Starts its own redis-server (no persistence; it inherits the CPU pinning, so client and
server share one CPU, as in the other reports). Every phase starts from ``FLUSHALL`` and
writes the same items (a small dict per key: an id, a name, a list of three ints) in
batches of ``--batch-size``:

* **raw SET**: the entries' blobs, encoded beforehand exactly as the cache encodes them
  (envelope included: the bytes are the same), sent with redis-py's pipeline
  (``transaction=False``), one ``SET key blob PX ttl`` per item: the floor of what any
  cache can do with redis-py, since it neither encodes nor does anything else.
* **warm (sync)**, ``Cache.warm``: encodes each value into the envelope, reads the tag
  versions, one pipeline per batch (``DEL`` of the lease + ``SET ... PX`` per key), and a
  bus message per batch; ``max_concurrency`` 1 and 4 (threads).
* **raw SET, asyncio**: the same with ``redis.asyncio`` (the baseline of the async half).
* **warm (async)**, ``AsyncCache.warm`` with ``max_concurrency`` 1 and 4 (tasks).

Each phase runs ``--rounds`` times, alternating. Items/s is the best round's; each ratio
is the median over rounds of the phase's throughput over its baseline's in the same round
(the machine is shared and drifts: a round's phases share its conditions). The ratio
warm / raw is the figure of the goal (>= 0.8; the async half also against the asyncio
baseline). No figure here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from time import perf_counter

import redis
import redis.asyncio

from stratacache import L1, AsyncCache, Cache
from stratacache._keys import KeySpace
from stratacache.testing import RedisServerProcess

NS = "warmbench"
TTL = 3600.0


def items(n: int) -> list[tuple[str, dict[str, object]]]:
    return [
        (f"user:{i}", {"id": i, "name": f"user {i}", "scores": [i, i + 1, i + 2]}) for i in range(n)
    ]


def raw_set(url: str, n: int, batch: int) -> float:
    """Seconds to SET the cache's own blobs of ``n`` items, pipelined by ``batch``."""
    cache = Cache(None, namespace=NS)
    keys = KeySpace(NS)
    now = time.time()
    blobs = [
        (keys.data_key(key), cache._encode_new(key, value, TTL, (), ((), 0), now))
        for key, value in items(n)
    ]
    client = redis.Redis.from_url(url)
    px = int(TTL * 1000)
    try:
        start = perf_counter()
        for i in range(0, n, batch):
            pipe = client.pipeline(transaction=False)
            for key, blob in blobs[i : i + batch]:
                pipe.set(key, blob, px=px)
            pipe.execute()
        return perf_counter() - start
    finally:
        client.close()


def raw_set_async(url: str, n: int, batch: int) -> float:
    """:func:`raw_set` with redis.asyncio (the baseline of ``AsyncCache.warm``)."""
    cache = Cache(None, namespace=NS)
    keys = KeySpace(NS)
    now = time.time()
    blobs = [
        (keys.data_key(key), cache._encode_new(key, value, TTL, (), ((), 0), now))
        for key, value in items(n)
    ]
    px = int(TTL * 1000)

    async def run() -> float:
        client = redis.asyncio.Redis.from_url(url)
        try:
            start = perf_counter()
            for i in range(0, n, batch):
                pipe = client.pipeline(transaction=False)
                for key, blob in blobs[i : i + batch]:
                    pipe.set(key, blob, px=px)
                await pipe.execute()
            return perf_counter() - start
        finally:
            await client.aclose()

    return asyncio.run(run())


def warm_sync(url: str, n: int, batch: int, concurrency: int) -> float:
    data = items(n)
    cache = Cache(url, namespace=NS, redis_timeout=5.0)
    try:
        cache.get("warm-up")  # the bus is started before the clock starts
        start = perf_counter()
        report = cache.warm(
            data, batch_size=batch, max_concurrency=concurrency, ttl=TTL, progress=False
        )
        seconds = perf_counter() - start
        assert report.written == n, report
        return seconds
    finally:
        cache.close()


def warm_async(url: str, n: int, batch: int, concurrency: int) -> float:
    data = items(n)

    async def run() -> float:
        cache = AsyncCache(url, namespace=NS, redis_timeout=5.0)
        try:
            await cache.get("warm-up")
            start = perf_counter()
            report = await cache.warm(
                data, batch_size=batch, max_concurrency=concurrency, ttl=TTL, progress=False
            )
            seconds = perf_counter() - start
            assert report.written == n, report
            return seconds
        finally:
            await cache.close()

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n, batch = args.items, args.batch_size
    phases: dict[str, Callable[[str], float]] = {
        "raw pipelined SET": lambda url: raw_set(url, n, batch),
        "warm, sync, concurrency 1": lambda url: warm_sync(url, n, batch, 1),
        "warm, sync, concurrency 4": lambda url: warm_sync(url, n, batch, 4),
        "raw pipelined SET, asyncio": lambda url: raw_set_async(url, n, batch),
        "warm, async, concurrency 1": lambda url: warm_async(url, n, batch, 1),
        "warm, async, concurrency 4": lambda url: warm_async(url, n, batch, 4),
    }
    times: dict[str, list[float]] = {name: [] for name in phases}
    with RedisServerProcess() as server:
        flusher = redis.Redis.from_url(server.url)
        for _ in range(args.rounds):
            for name, phase in phases.items():
                flusher.flushall()
                times[name].append(phase(server.url))
        flusher.close()
    pinned = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"# warm_report: {n:,} items, batches of {batch}, {args.rounds} rounds")
    print(
        f"# python {platform.python_version()}, L1 {L1.__module__}, "
        f"redis-py {redis.__version__}, CPUs {pinned}, {sys.platform}"
    )
    print(
        "# items/s: best round; ratios: median over rounds of (phase / its baseline in the"
        " same round), which cancels the machine's drift between rounds"
    )
    print(f"{'phase':<30} {'best s':>8} {'items/s':>10} {'vs raw':>7} {'vs raw asyncio':>15}")
    raw, araw = times["raw pipelined SET"], times["raw pipelined SET, asyncio"]
    for name, seconds in times.items():
        rate = n / min(seconds)
        ratio = statistics.median(r / s for r, s in zip(raw, seconds))
        versus = ""
        if "async" in name:
            versus = f"{statistics.median(r / s for r, s in zip(araw, seconds)):>15.2f}"
        print(f"{name:<30} {min(seconds):>8.3f} {rate:>10,.0f} {ratio:>7.2f} {versus}")
    print("goal: warm >= 0.80 x raw pipelined SET of the same bytes")


if __name__ == "__main__":
    main()
