"""Instruction counts of ``get_many(100)`` from L2 against redis-py ``MGET`` of the same
100 keys plus 100 ``msgpack.unpackb``, sync and async, under ``valgrind --tool=callgrind``
(stable on a noisy machine, unlike timings).

    python benchmarks/get_many_callgrind.py      # the table (needs valgrind, redis-server)

Each case runs a child process twice, with ``n`` and with ``2n`` calls after the same
set-up, and reports (Ir(2n) - Ir(n)) / n: start-up, imports and connecting cancel out.
Only the client process runs under valgrind; Redis answers at full speed. Every call
reads a batch of 100 keys it has not read before, so all 100 miss L1 and come from one
``MGET``; every batch is written during the set-up, which is the same for ``n`` and
``2n`` (it writes the ``2n`` batches), and L1 is big enough for all of them, so no call
evicts or clears anything (clearing L1 before each call, as this script first did,
counted 100 removals in ``get_many`` that the baseline never pays). The baseline reads
fresh keys too. Only the main thread is counted (every call runs there, sync and
async): the cache's bus threads run for as long as the child does, and under load they
added a few hundred thousand instructions per call that depended on the machine's load.
The child leaves by ``os._exit``, skipping the interpreter's shutdown, whatever the
case: it is not part of a call, and it scaled with ``n`` for ``get_many`` alone, whose L1
still held the ``100 n`` values read (its final collections and deallocations counted
~245k instructions per call, 0 for the baseline, which keeps nothing); the collections
that run during the calls, because the values L1 keeps survive them, are still counted
(lumpy: 0-45k per call in the runs profiled, depending on where the thresholds fall).
Type-attribute cache misses move with the memory layout too: two profiled children whose
calls ran the same code differed by ~170k per call in ``find_name_in_mro`` alone (the
child's source text differed by the ``os._exit`` line); compare changes under ~5% with
a profile of the function concerned, not with this total. ``n`` is 30. The caches run with
``heartbeat_timeout=3600`` and ``redis_timeout=60``: under valgrind a call takes long
enough for the default 1 s to pass between heartbeats (or the default 0.1 s of a Redis
call, the bus's PING among them), the bus to turn unhealthy and L1 to be bypassed, which
is not the path measured here. ``heartbeat_timeout=60`` alone, as first set, was not
enough on a loaded machine: a sync run counted 2.52M instructions per call (0.88x, below
the baseline), and an async child under valgrind logged "Redis did not answer a PING"
and ended with an empty L1. The child now checks that L1 holds every value read, and
fails rather than report another path.
"""

from __future__ import annotations

import argparse

from callgrind import collected_instructions
from stratacache.testing import RedisServerProcess

_CHILD = r"""
import asyncio, os, sys
import msgpack, redis, redis.asyncio
from stratacache import AsyncCache, Cache

case, url, reps, batches = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
VALUE = {"id": 42, "name": "Ada Lovelace", "email": "ada@example.com", "roles": ["admin"]}
# batch b: keys m{b}.0 .. m{b}.99; every batch written, the first `reps` read
batch_keys = [[f"m{b}.{i}" for i in range(100)] for b in range(batches)]
raw_batches = [[f"raw:{k}" for k in keys] for keys in batch_keys]
setup = redis.Redis.from_url(url)
for raw_keys in raw_batches:
    setup.mset({k: msgpack.packb(VALUE) for k in raw_keys})
L1_SIZE = 100 * batches
OPTIONS = {"heartbeat_timeout": 3600, "redis_timeout": 60}  # see the module notes
if case == "sync MGET + unpackb":
    raw = redis.Redis.from_url(url)
    raw.mget(raw_batches[0][:1])  # connect outside the counted calls
    for raw_keys in raw_batches[:reps]:
        [msgpack.unpackb(b) for b in raw.mget(raw_keys)]
elif case == "sync get_many":
    cache = Cache(url, namespace="cg", l1_maxsize=L1_SIZE, **OPTIONS)
    for keys in batch_keys:
        cache.set_many({k: VALUE for k in keys})
    cache.l1.clear()
    for keys in batch_keys[:reps]:
        cache.get_many(keys)
    assert len(cache.l1) == 100 * reps, "L1 was bypassed: not the path measured"
elif case == "async MGET + unpackb":
    async def main():
        raw = redis.asyncio.Redis.from_url(url)
        await raw.mget(raw_batches[0][:1])  # connect outside the counted calls
        for raw_keys in raw_batches[:reps]:
            [msgpack.unpackb(b) for b in await raw.mget(raw_keys)]
        await raw.aclose()
    asyncio.run(main())
elif case == "async get_many":
    async def main():
        cache = AsyncCache(url, namespace="cg", l1_maxsize=L1_SIZE, **OPTIONS)
        for keys in batch_keys:
            await cache.set_many({k: VALUE for k in keys})
        cache.l1.clear()
        for keys in batch_keys[:reps]:
            await cache.get_many(keys)
        assert len(cache.l1) == 100 * reps, "L1 was bypassed: not the path measured"
        await cache.close()
    asyncio.run(main())
else:
    raise SystemExit(f"unknown case {case!r}")
# skip the interpreter's shutdown: see the module notes
os._exit(0)
"""

BASE_REPS = 30
PAIRS = (
    ("sync get_many", "sync MGET + unpackb"),
    ("async get_many", "async MGET + unpackb"),
)


def instructions(case: str, url: str, reps: int) -> int:
    return collected_instructions(
        _CHILD, case, url, str(reps), str(2 * BASE_REPS), main_thread_only=True
    )


def per_call(case: str, url: str) -> float:
    """Instructions per call: the difference between 2n and n calls, over n."""
    return (instructions(case, url, 2 * BASE_REPS) - instructions(case, url, BASE_REPS)) / BASE_REPS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sync-only", action="store_true", help="skip the async pair")
    args = parser.parse_args(argv)
    pairs = PAIRS[:1] if args.sync_only else PAIRS
    print("| case | get_many(100) (Ir/call) | MGET + 100 unpackb (Ir/call) | ratio |")
    print("|---|---|---|---|")
    with RedisServerProcess() as server:
        for ours, baseline in pairs:
            mine = per_call(ours, server.url)
            theirs = per_call(baseline, server.url)
            mode = ours.split()[0]
            print(f"| {mode} | {mine:,.0f} | {theirs:,.0f} | {mine / theirs:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
