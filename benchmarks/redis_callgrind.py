"""Instruction counts per Redis-path operation under ``valgrind --tool=callgrind``, beside
the redis-py code a user would write by hand (stable on a noisy machine, unlike timings).

    python benchmarks/redis_callgrind.py                 # every case (needs valgrind)
    python benchmarks/redis_callgrind.py --cases hit     # only the L2 hit cases
    python benchmarks/redis_callgrind.py --only Async    # the cases whose name has it

A private redis-server is started (outside valgrind: only the client is counted). Each
case runs a child process twice, with ``n`` and ``2n`` operations after the same set-up,
and reports (Ir(2n) - Ir(n)) / n: start-up, imports and connecting cancel out. The cases
are those of ``cache_cases.py``: an L2 hit (two keys alternating in an L1 of one entry)
against ``GET`` + ``msgpack.unpackb``, and a ``get_or_set`` miss (a new key each time,
untagged and tagged) against ``GET`` + ``SET`` of the same bytes; sync and asyncio.
The asyncio cache rows are not stable yet (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse

from callgrind import collected_instructions

_CHILD = r"""
import asyncio, itertools, sys
import msgpack, redis, redis.asyncio
from stratacache import AsyncCache, Cache


url, case, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
VALUE = {"id": 42, "name": "Ada Lovelace", "tags": ["math", "engines"], "score": 3.5}
BLOB = msgpack.packb(VALUE)
keys = ["a", "b"]
counter = itertools.count()


def sync_case():
    if case == "hit: redis-py GET + unpackb":
        raw = redis.Redis.from_url(url)
        for k in keys:
            raw.set(f"raw:{k}", BLOB)
        return lambda i: msgpack.unpackb(raw.get(f"raw:{keys[i & 1]}"))
    if case == "miss: redis-py GET + SET":
        raw = redis.Redis.from_url(url)

        def op(i):
            key = f"raw-miss:{next(counter)}"
            raw.get(key)
            raw.set(key, BLOB, px=60_000)

        return op
    if case == "hit: Cache.get":
        cache = Cache(url, namespace="cg", l1_maxsize=1, bus=False)
        for k in keys:
            cache.set(k, VALUE)
        return lambda i: cache.get(keys[i & 1])
    cache = Cache(url, namespace="cg-miss", l1_maxsize=10, bus=False)
    tags = ("t1",) if case.endswith("(tagged)") else ()
    return lambda i: cache.get_or_set(f"m:{next(counter)}", lambda: VALUE, ttl=60, tags=tags)


async def async_case():
    if case == "hit: redis.asyncio GET + unpackb":
        raw = redis.asyncio.Redis.from_url(url)
        for k in keys:
            await raw.set(f"raw:{k}", BLOB)

        async def op(i):
            msgpack.unpackb(await raw.get(f"raw:{keys[i & 1]}"))

        return op
    if case == "miss: redis.asyncio GET + SET":
        raw = redis.asyncio.Redis.from_url(url)

        async def op(i):
            key = f"raw-miss:{next(counter)}"
            await raw.get(key)
            await raw.set(key, BLOB, px=60_000)

        return op
    if case == "hit: AsyncCache.get":
        cache = AsyncCache(url, namespace="acg", l1_maxsize=1, bus=False)
        for k in keys:
            await cache.set(k, VALUE)

        async def op(i):
            await cache.get(keys[i & 1])

        return op
    cache = AsyncCache(url, namespace="acg-miss", l1_maxsize=10, bus=False)
    tags = ("t1",) if case.endswith("(tagged)") else ()

    async def op(i):
        await cache.get_or_set(f"m:{next(counter)}", lambda: VALUE, ttl=60, tags=tags)

    return op


async def run_async():
    op = await async_case()
    for i in range(50):  # warm: connections made, scripts loaded
        await op(i)
    for i in range(n):
        await op(i)


if "asyncio" in case or "Async" in case:
    asyncio.run(run_async())
else:
    op = sync_case()
    for i in range(50):
        op(i)
    for i in range(n):
        op(i)
"""

CASES = {
    "hit": [
        "hit: redis-py GET + unpackb",
        "hit: Cache.get",
        "hit: redis.asyncio GET + unpackb",
        "hit: AsyncCache.get",
    ],
    "miss": [
        "miss: redis-py GET + SET",
        "miss: Cache.get_or_set (untagged)",
        "miss: Cache.get_or_set (tagged)",
        "miss: redis.asyncio GET + SET",
        "miss: AsyncCache.get_or_set (untagged)",
        "miss: AsyncCache.get_or_set (tagged)",
    ],
}


def instructions(url: str, case: str, n: int) -> int:
    return collected_instructions(_CHILD, url, case, str(n))


def per_op(url: str, case: str, n: int) -> float:
    """Instructions per operation: the difference between ``2n`` and ``n`` operations."""
    return (instructions(url, case, 2 * n) - instructions(url, case, n)) / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", choices=["all", *CASES], default="all")
    parser.add_argument("--only", default="", help="comma-separated parts of case names")
    parser.add_argument("-n", type=int, default=1000, help="operations per round")
    args = parser.parse_args(argv)
    from stratacache.testing import RedisServerProcess

    groups = list(CASES) if args.cases == "all" else [args.cases]
    with RedisServerProcess() as server:
        print("| case | Ir/op | ratio to its redis-py baseline |")
        print("|---|---|---|")
        for group in groups:
            baselines: dict[bool, float] = {}
            for case in CASES[group]:
                if args.only and not any(part in case for part in args.only.split(",")):
                    continue
                is_async = "asyncio" in case or "Async" in case
                cost = per_op(server.url, case, args.n)
                if "redis" in case.split(":")[1]:  # a baseline row
                    baselines[is_async] = cost
                    ratio = "1.00 (baseline)"
                elif is_async in baselines:
                    ratio = f"{cost / baselines[is_async]:.2f}"
                else:
                    ratio = "(baseline not run)"
                print(f"| {case} | {cost:,.0f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
