"""Print how much memory Redis holds for the cache under churn, against the data alone.

    taskset -c 1 python benchmarks/growth_report.py                  # ~4 minutes
    taskset -c 1 python benchmarks/growth_report.py --value-bytes 200

The workload (1,000,000 writes by default), through ``Cache.set_many`` as a service writes:

* key names ``item:N`` live in a *rolling window* of 10,000 names (100 blocks of 100); the
  window moves on by one block every 1,000 writes, so 100,000 names come and go. Each
  write picks a block of the window and writes 20 of its names, with a short ``ttl``
  (5 s): a name that leaves the window expires a few seconds later and is never written
  again, as keys of a real service do (sessions, carts, listings).
* every entry carries three tags, two of them hierarchical (``page:B``, ``region:R``,
  ``owner``), so six member-set entries per write: the whole window shares ``page``,
  ``region`` and ``owner``, which are never invalidated (the case that grew without bound).
* every ``set_many`` declares one dependency (a written key on its block's first key);
  every 500 calls one ``invalidate_tag("page:B")`` (reclaimed in the background) and one
  ``invalidate`` of a block's first key (a dependency cascade).

``used_memory`` (bytes the allocator gave Redis; no fragmentation, no RSS) is sampled as it
goes, then read once the writes end (``end``) and again after a ``SCAN`` of the whole
keyspace (``end, swept``), which removes the entries that have expired but that Redis's
sampling expiry had not collected yet (it frees memory, it changes no live entry).

The data alone is measured twice in the same run. (1) The same writes without tags,
dependencies and invalidations, in a fresh ``redis-server``, each ``set_many`` paced to
come when it came in the tagged run (the ttl is wall-clock time: an unpaced, faster run
keeps more names within their ttl), compared at the end of the writes, expired entries not
yet collected included on both sides. (2) In another fresh ``redis-server``: every live
data key of the first (its exact bytes and remaining ttl, ``DUMP`` / ``RESTORE``), nothing
else: no tag member sets, dependency sets, versions, leases, bus or audit keys. Both
servers' empty ``used_memory`` is printed and subtracted in the *net* ratio, which is the
stricter one (the constant ~1 MB of an empty server flatters the raw ratio). ``MEMORY
USAGE`` of every key by kind is printed beside it.

Run it on the code before a change too (``PYTHONPATH`` at another checkout's ``src``): it
uses the public API only. No figure here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import redis

from stratacache import Cache, _l1
from stratacache._keys import KeySpace
from stratacache.testing import RedisServerProcess

NS = "growth"
BLOCK = 100  # names per block: one block shares its tags, and is written together
BATCH = 20  # names written per set_many call
SAMPLES = 20  # used_memory readings during the run
GOAL_RATIO = 1.5

_KIND_NAMES = {
    "d": "data",
    "l": "lease",
    "t": "tag version",
    "z": "tag members (sorted set)",
    "s": "tag members (set, before)",
    "r": "members being reclaimed",
    "e": "dependents (sorted set)",
    "g": "dependents (set, before)",
    "m": "namespace meta (epoch, audit)",
    "f": "fence",
}


@dataclass
class Workload:
    writes: int
    window: int
    ttl: float
    value_bytes: int
    seed: int

    @property
    def slide_every(self) -> int:  # writes between two moves of the window
        return 1000

    def tags(self, block: int) -> list[str]:
        return [f"page:{block}", f"region:{block % 10}", "owner"]


def value_of(n: int, size: int, rng: random.Random) -> dict[str, Any]:
    """A record of about ``size`` bytes of msgpack (text that does not compress)."""
    text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(max(0, size - 40)))
    return {"id": n, "name": f"item {n}", "price": 9.99, "text": text}


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def run_writes(
    cache: Cache,
    admin: redis.Redis,
    w: Workload,
    pace: list[float],
    *,
    tagged: bool = True,
) -> list[tuple[int, int, int]]:
    """The churn; returns (writes so far, used_memory, DBSIZE) samples. ``tagged=False``:
    the same writes (same names, values, ttl, order) without tags, dependencies and
    invalidations, each ``set_many`` made no sooner after the start than in the tagged run
    (``pace``, filled by that run): the ttl is wall-clock time, so a faster run would have
    more names within their ttl, and its memory would not be the same data."""
    rng = random.Random(w.seed)
    blocks = w.window // BLOCK
    texts = [value_of(0, w.value_bytes, rng)["text"] for _ in range(64)]
    with_ttl = "ttl" in inspect.signature(cache.add_dependency).parameters
    samples = []
    every = max(1, w.writes // SAMPLES)
    first_block = 0
    calls = 0
    done = 0
    start = time.monotonic()
    while done < w.writes:
        if tagged:
            pace.append(time.monotonic() - start)
        elif calls < len(pace):
            ahead = pace[calls] - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        first_block = done // w.slide_every
        block = first_block + rng.randrange(blocks)
        base = block * BLOCK
        names = rng.sample(range(base, base + BLOCK), BATCH)
        mapping = {
            f"item:{n}": {"id": n, "name": f"item {n}", "price": 9.99, "text": texts[n % 64]}
            for n in names
        }
        if not tagged:
            cache.set_many(mapping, ttl=w.ttl)
        else:
            cache.set_many(mapping, ttl=w.ttl, tags=w.tags(block))
        child, parent = f"item:{names[0]}", f"item:{base}"
        if tagged and child != parent:
            if with_ttl:
                cache.add_dependency(child, parent, ttl=w.ttl)
            else:
                cache.add_dependency(child, parent)
        calls += 1
        if tagged and calls % 500 == 0:
            cache.invalidate_tag(f"page:{first_block + rng.randrange(blocks)}")
            cache.invalidate(f"item:{(first_block + rng.randrange(blocks)) * BLOCK}")
        before = done
        done += BATCH
        if done // every != before // every:
            samples.append((done, used(admin), admin.dbsize()))
    return samples


def by_kind(admin: redis.Redis) -> tuple[dict[str, list[int]], list[bytes]]:
    """kind letter -> [keys, MEMORY USAGE bytes]; and the data keys (a SCAN of everything,
    which also removes the expired keys it meets)."""
    prefix = f"{NS}:v1:"
    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    data: list[bytes] = []
    batch: list[bytes] = []

    def flush() -> None:
        pipe = admin.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)
        for key, size in zip(batch, pipe.execute()):
            if size is None:
                continue  # expired between the scan and now
            text = key.decode()
            kind = text[len(prefix)] if text.startswith(prefix) else "?"
            if text == f"{prefix}bus":
                kind = "bus"
            kinds[kind][0] += 1
            kinds[kind][1] += int(size)
            if kind == "d":
                data.append(key)
        batch.clear()

    for key in admin.scan_iter(count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            flush()
    flush()
    return dict(kinds), data


def data_alone(admin: redis.Redis, data_keys: list[bytes]) -> tuple[int, int, int]:
    """The live data keys alone in a fresh server: (its empty used_memory, used_memory with
    them, how many were copied)."""
    with RedisServerProcess() as server:
        copy = redis.Redis.from_url(server.url)
        try:
            empty = used(copy)
            copied = 0
            for start in range(0, len(data_keys), 1000):
                chunk = data_keys[start : start + 1000]
                pipe = admin.pipeline(transaction=False)
                for key in chunk:
                    pipe.dump(key)
                    pipe.pttl(key)
                got = pipe.execute()
                out = copy.pipeline(transaction=False)
                for key, blob, pttl in zip(chunk, got[::2], got[1::2]):
                    if blob is None or pttl == -2:
                        continue  # expired since the scan
                    out.restore(key, max(0, pttl), blob)
                    copied += 1
                out.execute()
            return empty, used(copy), copied
        finally:
            copy.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writes", type=int, default=1_000_000)
    parser.add_argument("--window", type=int, default=10_000, help="live key names")
    parser.add_argument("--ttl", type=float, default=5.0, help="seconds")
    parser.add_argument("--value-bytes", type=int, default=1000, help="about, in msgpack")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    w = Workload(args.writes, args.window, args.ttl, args.value_bytes, args.seed)

    print(f"L1 implementation: {_l1.L1.__module__}; stratacache from {Cache.__module__}")
    print(f"Python {platform.python_version()}, pinned to CPUs {sorted(os.sched_getaffinity(0))}")
    print(
        f"{w.writes:,} writes ({BATCH} per set_many), window {w.window:,} names, "
        f"{w.writes // w.slide_every * BLOCK:,} names in all, ttl {w.ttl} s, "
        f"tags {w.tags(7)} (expanded: 6 per entry), values ~{w.value_bytes} B"
    )
    ks = KeySpace(NS)
    print(f"member sets at {ks.tag_members_key('T')!r}, dependents at {ks.dependents_key('K')!r}")
    with RedisServerProcess() as server:
        admin = redis.Redis.from_url(server.url)
        print(f"Redis {admin.info('server')['redis_version']}")
        empty = used(admin)
        cache = Cache(server.url, namespace=NS, redis_timeout=5.0, default_ttl=w.ttl)
        try:
            start = perf_counter()
            pace: list[float] = []
            samples = run_writes(cache, admin, w, pace)
            elapsed = perf_counter() - start
            deadline = time.monotonic() + 60
            while cache.stats().invalidation.reclaim_pending and time.monotonic() < deadline:
                time.sleep(0.01)
            errors = cache.stats().errors
        finally:
            cache.close()
        end = used(admin)
        kinds, data_keys = by_kind(admin)
        swept = used(admin)
        copy_empty, copy_used, copied = data_alone(admin, data_keys)
        admin.close()
    print(f"  tagged run done: {elapsed:.1f} s; now the same writes without tags", flush=True)
    with RedisServerProcess() as server:
        admin = redis.Redis.from_url(server.url)
        plain_empty = used(admin)
        cache = Cache(server.url, namespace=NS, redis_timeout=5.0, default_ttl=w.ttl)
        try:
            start = perf_counter()
            plain_samples = run_writes(cache, admin, w, pace, tagged=False)
            plain_elapsed = perf_counter() - start
        finally:
            cache.close()
        plain_end = used(admin)
        admin.close()

    print(
        f"\nwrites took {elapsed:.1f} s ({w.writes / elapsed:,.0f}/s); L2 errors: {errors}; "
        f"without tags and dependencies {plain_elapsed:.1f} s (paced as the tagged run)"
    )
    print("\n| writes | used_memory (MB) | keys | without tags/deps: used_memory (MB) | keys |")
    print("|---|---|---|---|---|")
    for (done, mem, keys), (_, plain_mem, plain_keys) in zip(samples, plain_samples):
        print(f"| {done:,} | {mem / 1e6:.2f} | {keys:,} | {plain_mem / 1e6:.2f} | {plain_keys:,} |")

    print("\nafter the writes, by kind (MEMORY USAGE, SAMPLES 0):\n")
    print("| kind | keys | MB | bytes per live data key |")
    print("|---|---|---|---|")
    live = max(1, kinds.get("d", [0, 0])[0])
    for kind, (count, size) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        name = _KIND_NAMES.get(kind, kind)
        print(f"| {name} | {count:,} | {size / 1e6:.2f} | {size / live:,.0f} |")
    index = sum(size for kind, (_, size) in kinds.items() if kind != "d")
    data_usage = kinds.get("d", [0, 0])[1]

    data_net = copy_used - copy_empty
    print(
        f"\nused_memory: empty {empty / 1e6:.2f} MB; end of the writes {end / 1e6:.2f} MB; "
        f"after a sweep of expired keys {swept / 1e6:.2f} MB"
    )
    print(
        f"data alone ({copied:,} live entries in a fresh server): {copy_used / 1e6:.2f} MB "
        f"(empty {copy_empty / 1e6:.2f} MB, so {data_net / 1e6:.2f} MB net; "
        f"MEMORY USAGE of the data keys: {data_usage / 1e6:.2f} MB, of everything else "
        f"{index / 1e6:.2f} MB = {index / max(1, data_usage):.2f}x)"
    )
    print(
        f"the same writes without tags and dependencies: used_memory {plain_end / 1e6:.2f} MB "
        f"at the end (empty {plain_empty / 1e6:.2f} MB)"
    )
    for label, total, total_empty, base, base_empty in (
        (
            "end of the writes, against the same writes without tags/deps",
            end,
            empty,
            plain_end,
            plain_empty,
        ),
        ("after the sweep, against the live entries alone", swept, empty, copy_used, copy_empty),
    ):
        raw = total / base
        net = (total - total_empty) / max(1, base - base_empty)
        verdict = "met" if net <= GOAL_RATIO else "**missed**"
        print(
            f"- {label}: {raw:.2f}x, {net:.2f}x net of the empty servers "
            f"(goal <= {GOAL_RATIO}x: {verdict})"
        )


if __name__ == "__main__":
    main()
