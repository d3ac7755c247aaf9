"""Print one table: the L1 (compiled and pure) beside dict, lru_cache and peer caches.

    taskset -c 1 python benchmarks/l1_report.py          # ~1 minute
    taskset -c 1 python benchmarks/l1_report.py --quick  # fewer repeats
    python benchmarks/l1_report.py --hit-ratio            # policies on Zipf / scan traces
    python benchmarks/l1_report.py --scaling [--full]     # get/set cost, 1k..1M (10M)

Timings are tight Python loops (``for k in keys: fn(k)``) over 10,000 pre-built ``str``
keys, the best of several repeats (the noise on a shared VM only ever adds time), and
include the loop's own cost (the "loop + id(k)" row: the same loop calling a C builtin);
ratios are against
``dict.get`` measured in the same run. Memory per entry is the RSS growth of a fresh
subprocess per implementation while inserting 100,000 pre-built keys that share one
value object (RSS sees Rust-side allocations that ``tracemalloc`` cannot); the
``tracemalloc`` column is shown where it can see everything. No ratio here is a
pass/fail test.
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import cachebox
import cachetools
import theine

from stratacache._compat import NO_EXTENSIONS

N = 10_000
TTL = 3600.0


def _load_l1() -> dict[str, Any]:
    from stratacache._l1_py import L1 as PyL1

    impls: dict[str, Any] = {"py": PyL1}
    if NO_EXTENSIONS:
        return impls
    from stratacache._l1_c import L1 as CL1  # compiled run: missing = error

    return {"c": CL1, **impls}


L1_IMPLS = _load_l1()


class Adapter:
    """One cache under test, reduced to ``get(k)`` and ``set(k, v)`` bound callables."""

    def __init__(
        self,
        name: str,
        make: Callable[[int], Any],
        get: Callable[[Any], Callable[[Any], Any]],
        set_: Callable[[Any], Callable[..., Any]],
        note: str = "",
        ttl: float | None = None,
    ) -> None:
        self.name = name
        self.make = make
        self.get = get
        self.set = set_
        self.note = note
        self.ttl = ttl  # if set, timed writes call set(k, v, ttl) with it, unwrapped


def _lru_cache_adapter() -> Adapter:
    def make(maxsize: int) -> Any:
        @functools.lru_cache(maxsize=maxsize)
        def cached(key: Any) -> Any:
            return key

        return cached

    return Adapter(
        "functools.lru_cache",
        make,
        get=lambda c: c,
        set_=lambda c: lambda k, v: c(k),  # a miss call is its only way to insert
        note="set = a miss call",
    )


def _theine_make(maxsize: int) -> Any:
    return theine.Cache(maxsize)


def adapters() -> list[Adapter]:
    """Every implementation in the table, compiled L1 first."""
    result = []
    for impl_id, cls in L1_IMPLS.items():
        label = "compiled" if impl_id == "c" else "pure"
        result.append(
            Adapter(
                f"stratacache.L1 ({label})",
                cls,
                get=lambda c: c.get,
                set_=lambda c: c.set,
            )
        )
        result.append(
            Adapter(
                f"stratacache.L1 ({label}), tinylfu",
                functools.partial(cls, policy="tinylfu"),
                get=lambda c: c.get,
                set_=lambda c: c.set,
                note="policy='tinylfu'",
            )
        )
        result.append(
            Adapter(
                f"stratacache.L1 ({label}), ttl",
                cls,
                get=lambda c: c.get,
                set_=lambda c: c.set,
                note="every entry has a ttl",
                ttl=TTL,
            )
        )
    result += [
        Adapter(
            "dict",
            lambda n: {},
            get=lambda d: d.get,
            set_=lambda d: d.__setitem__,
            note="no bound, no eviction",
        ),
        _lru_cache_adapter(),
        Adapter(
            "cachetools.LRUCache",
            cachetools.LRUCache,
            get=lambda c: c.get,
            set_=lambda c: c.__setitem__,
        ),
        Adapter(
            "cachetools.TTLCache",
            lambda n: cachetools.TTLCache(n, TTL),
            get=lambda c: c.get,
            set_=lambda c: c.__setitem__,
        ),
        Adapter(
            "cachebox.LRUCache", cachebox.LRUCache, get=lambda c: c.get, set_=lambda c: c.insert
        ),
        Adapter(
            "cachebox.TTLCache",
            lambda n: cachebox.TTLCache(n, TTL),
            get=lambda c: c.get,
            set_=lambda c: c.insert,
        ),
        Adapter(
            "theine.Cache",
            _theine_make,
            get=lambda c: c.get,
            set_=lambda c: c.set,
            note="get returns (value, found)",
        ),
    ]
    return result


# -- timing ---------------------------------------------------------------------------


def _loop1(fn: Callable[[Any], Any], keys: list[Any]) -> int:
    start = time.perf_counter_ns()
    for k in keys:
        fn(k)
    return time.perf_counter_ns() - start


def _loop2(fn: Callable[[Any, Any], Any], keys: list[Any], value: Any) -> int:
    start = time.perf_counter_ns()
    for k in keys:
        fn(k, value)
    return time.perf_counter_ns() - start


def _loop3(fn: Callable[[Any, Any, Any], Any], keys: list[Any], value: Any, extra: Any) -> int:
    start = time.perf_counter_ns()
    for k in keys:
        fn(k, value, extra)
    return time.perf_counter_ns() - start


def fill(adapter: Adapter, cache: Any, keys: list[Any], value: Any) -> None:
    put = adapter.set(cache)
    for k in keys:
        if adapter.ttl is None:
            put(k, value)
        else:
            put(k, value, adapter.ttl)


def best_ns(run: Callable[[], int], calls: int, repeats: int) -> float:
    """Best per-call time over ``repeats`` runs of ``calls`` calls."""
    gc.collect()
    gc.disable()  # a collection landing in one case would be noise, not a property of it
    try:
        return min(run() for _ in range(repeats)) / calls
    finally:
        gc.enable()


def make_keys(n: int, prefix: str, seed: int = 1) -> list[str]:
    keys = [f"{prefix}:{i:08d}" for i in range(n)]
    random.Random(seed).shuffle(keys)
    return keys


def close(cache: Any) -> None:
    if isinstance(cache, theine.Cache):
        cache.close()


def time_get_hit(adapter: Adapter, keys: list[str], repeats: int) -> float:
    cache = adapter.make(len(keys))
    fill(adapter, cache, keys, "value")
    get = adapter.get(cache)
    result = best_ns(lambda: _loop1(get, keys), len(keys), repeats)
    close(cache)
    return result


def time_get_miss(adapter: Adapter, keys: list[str], absent: list[str], repeats: int) -> float:
    cache = adapter.make(len(keys))
    fill(adapter, cache, keys, "value")
    get = adapter.get(cache)
    result = best_ns(lambda: _loop1(get, absent), len(absent), repeats)
    close(cache)
    return result


def time_set_evicting(adapter: Adapter, keys: list[str], other: list[str], repeats: int) -> float:
    """Every timed ``set`` inserts a new key into a full cache, so each one evicts."""
    cache = adapter.make(len(keys))
    put = adapter.set(cache)
    value = object()
    fill(adapter, cache, keys, value)
    batches = [other, keys]
    turn = [0]

    def run() -> int:
        batch = batches[turn[0] % 2]
        turn[0] += 1
        if adapter.ttl is None:
            return _loop2(put, batch, value)
        return _loop3(put, batch, value, adapter.ttl)

    result = best_ns(run, len(keys), repeats)
    close(cache)
    return result


def time_invalidate_tag(cls: Any, n: int, repeats: int) -> float:
    """One ``invalidate_tag`` over ``n`` tagged keys (refilled between runs, untimed)."""
    keys = make_keys(n, "tagged")
    tags = ("t",)
    cache = cls(n)

    def run() -> int:
        for k in keys:
            cache.set(k, k, None, tags)
        start = time.perf_counter_ns()
        removed = cache.invalidate_tag("t")
        elapsed = time.perf_counter_ns() - start
        assert removed == n
        return elapsed

    return best_ns(run, 1, repeats)


def time_dict_delete(n: int, repeats: int) -> float:
    """Baseline for invalidate_tag: deleting ``n`` keys from a dict one by one."""
    keys = make_keys(n, "tagged")

    def run() -> int:
        d = dict.fromkeys(keys)
        delete = d.__delitem__
        start = time.perf_counter_ns()
        for k in keys:
            delete(k)
        return time.perf_counter_ns() - start

    return best_ns(run, 1, repeats)


# -- memory (one fresh subprocess per implementation) -----------------------------------

_MEMORY_CHILD = r"""
import gc, json, os, sys, tracemalloc
sys.path.insert(0, {bench_dir!r})
import l1_report
name, n, trace = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
adapter = {{a.name: a for a in l1_report.adapters()}}[name]
keys = l1_report.make_keys(n, "mem")
value = object()
page = os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page

cache = adapter.make(n)
gc.collect()
if trace:
    tracemalloc.start()
before = tracemalloc.get_traced_memory()[0] if trace else rss()
l1_report.fill(adapter, cache, keys, value)
gc.collect()
after = tracemalloc.get_traced_memory()[0] if trace else rss()
assert len(keys) == n
print(json.dumps((after - before) / n))
"""

# Python-side only: tracemalloc sees all of their memory.
_TRACEABLE = ("stratacache", "dict", "functools", "cachetools")


def memory_per_entry(name: str, n: int, trace: bool) -> float:
    code = _MEMORY_CHILD.format(bench_dir=os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code, name, str(n), "1" if trace else "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout))


# -- hit ratio (policies) -------------------------------------------------------------


def zipf_trace(n_keys: int, n: int, s: float, seed: int) -> list[str]:
    """``n`` requests over ``n_keys`` keys, Zipf(``s``) popularity, ranks shuffled."""
    rng = random.Random(seed)
    cum = list(itertools.accumulate(1.0 / (i + 1) ** s for i in range(n_keys)))
    perm = list(range(n_keys))
    rng.shuffle(perm)
    return [f"k{perm[i]}" for i in rng.choices(range(n_keys), cum_weights=cum, k=n)]


def scan_trace(n_keys: int, n: int, seed: int, every: int, scan: int) -> list[str]:
    """The Zipf trace with a one-hit sequential scan of ``scan`` new keys every ``every``."""
    base = zipf_trace(n_keys, n, 0.99, seed)
    out: list[str] = []
    for i in range(0, len(base), every):
        out += base[i : i + every]
        out += [f"scan{i}:{j}" for j in range(scan)]
    return out


def hit_ratio(make: Callable[[], Any], trace: list[str], theine_api: bool = False) -> float:
    """Read-through replay: ``get``; on a miss ``set``."""
    cache = make()
    hits = 0
    if theine_api:
        for k in trace:
            if cache.get(k)[1]:
                hits += 1
            else:
                cache.set(k, 1)
    else:
        get, put = cache.get, cache.set
        for k in trace:
            if get(k) is None:
                put(k, 1)
            else:
                hits += 1
    close(cache)
    return hits / len(trace)


def belady(trace: list[str], capacity: int) -> float:
    """The optimal (clairvoyant) hit ratio: evict the key next used farthest ahead."""
    import heapq

    nxt = [0] * len(trace)
    last: dict[str, int] = {}
    for i in range(len(trace) - 1, -1, -1):
        nxt[i] = last.get(trace[i], len(trace) + i)
        last[trace[i]] = i
    cached: dict[str, int] = {}
    heap: list[tuple[int, str]] = []
    hits = 0
    for i, k in enumerate(trace):
        if k in cached:
            hits += 1
        elif len(cached) >= capacity:
            while True:
                neg, victim = heapq.heappop(heap)
                if cached.get(victim) == -neg:
                    del cached[victim]
                    break
        cached[k] = nxt[i]
        heapq.heappush(heap, (-nxt[i], k))
    return hits / len(trace)


def hit_ratio_table(n_requests: int) -> dict[str, dict[str, float]]:
    cap = 10_000
    traces = {
        "zipf 0.99, 100k keys": zipf_trace(100_000, n_requests, 0.99, 7),
        "zipf + scans": scan_trace(100_000, n_requests, 7, every=20_000, scan=5_000),
    }
    impl = L1_IMPLS.get("c", L1_IMPLS["py"])
    rows: dict[str, dict[str, float]] = {}
    for name, trace in traces.items():
        rows[name] = {
            "L1 lru": hit_ratio(lambda: impl(cap), trace),
            "L1 tinylfu": hit_ratio(lambda: impl(cap, policy="tinylfu"), trace),
            "theine (W-TinyLFU)": hit_ratio(lambda: theine.Cache(cap), trace, theine_api=True),
            "Belady (optimal)": belady(trace, cap),
        }
    print(f"Hit ratio, capacity {cap}, {n_requests} requests, read-through replay")
    print()
    cols = list(next(iter(rows.values())))
    print("| trace | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[c] * 100:.1f} %" for c in cols) + " |")
    return rows


# -- scaling --------------------------------------------------------------------------


def scaling_table(sizes: list[int], repeats: int) -> dict[str, dict[str, float]]:
    """ns per get hit / set with eviction, L1 of ``size`` entries (10,000 sampled keys)."""
    rows: dict[str, dict[str, float]] = {}
    cases: list[tuple[str, Callable[[int], Any]]] = []
    for impl_id, cls in L1_IMPLS.items():
        if impl_id == "c":
            cases.append(("L1 compiled lru", cls))
            cases.append(("L1 compiled tinylfu", functools.partial(cls, policy="tinylfu")))
    cases.append(("cachebox.LRUCache", cachebox.LRUCache))
    cases.append(("dict", lambda n: {}))
    print("| entries | " + " | ".join(f"{name} get / set" for name, _ in cases) + " |")
    print("|---|" + "---|" * len(cases))
    for size in sizes:
        keys = [f"key:{i:09d}" for i in range(size)]
        sample = random.Random(1).sample(keys, min(N, size))
        fresh = [f"new:{i:09d}" for i in range(len(sample))]
        cells = []
        for name, make in cases:
            cache = make(size)
            if isinstance(cache, dict):
                put = cache.__setitem__
            else:
                put = cache.insert if hasattr(cache, "insert") else cache.set
            for k in keys:
                put(k, k)
            get = cache.get
            g = best_ns(functools.partial(_loop1, get, sample), len(sample), repeats)
            s = best_ns(functools.partial(_loop2, put, fresh, 1), len(fresh), 1)
            rows.setdefault(str(size), {})[name] = g
            rows[str(size)][name + " set"] = s
            cells.append(f"{g:.0f} / {s:.0f}")
            del cache, get, put
            gc.collect()
        print(f"| {size} | " + " | ".join(cells) + " |", flush=True)
    return rows


# -- the table ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--json", help="also write the raw numbers to this file")
    parser.add_argument("--hit-ratio", action="store_true", help="only the hit-ratio table")
    parser.add_argument("--scaling", action="store_true", help="only the scaling curve")
    parser.add_argument("--full", action="store_true", help="scaling up to 10M entries")
    args = parser.parse_args(argv)
    if args.hit_ratio:
        result: Any = hit_ratio_table(300_000 if args.quick else 1_000_000)
    elif args.scaling:
        sizes = [1_000, 10_000, 100_000, 1_000_000] + ([10_000_000] if args.full else [])
        result = scaling_table(sizes, 3 if args.quick else 7)
    if args.hit_ratio or args.scaling:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return
    repeats = 5 if args.quick else 25
    keys = make_keys(N, "key")
    other = make_keys(N, "new")
    absent = make_keys(N, "absent")
    mem_n = 100_000

    # The harness itself: the same loop calling the cheapest C callable there is.
    empty = best_ns(lambda: _loop1(id, keys), N, repeats)
    rows: dict[str, dict[str, Any]] = {}
    for adapter in adapters():
        row = rows[adapter.name] = {"note": adapter.note}
        row["get hit"] = time_get_hit(adapter, keys, repeats)
        row["get miss"] = time_get_miss(adapter, keys, absent, repeats)
        row["set+evict"] = (
            None if adapter.name == "dict" else time_set_evicting(adapter, keys, other, repeats)
        )
        row["mem B/entry (RSS)"] = memory_per_entry(adapter.name, mem_n, trace=False)
        # --quick (report.py's quick mode, under 3 minutes): RSS only, one subprocess each
        if not args.quick and adapter.ttl is None and adapter.name.startswith(_TRACEABLE):
            row["mem B/entry (tracemalloc)"] = memory_per_entry(adapter.name, mem_n, trace=True)
    for impl_id, cls in L1_IMPLS.items():
        label = "compiled" if impl_id == "c" else "pure"
        rows[f"stratacache.L1 ({label})"]["invalidate_tag 10k (us)"] = (
            time_invalidate_tag(cls, N, max(3, repeats // 5)) / 1e3
        )
    rows["dict"]["invalidate_tag 10k (us)"] = time_dict_delete(N, max(3, repeats // 5)) / 1e3
    rows["dict"]["note"] += "; invalidate = del 10k keys"

    base = rows["dict"]["get hit"]
    columns = [
        "get hit",
        "x dict.get",
        "get miss",
        "set+evict",
        "invalidate_tag 10k (us)",
        "mem B/entry (RSS)",
        "mem B/entry (tracemalloc)",
    ]
    header = "| implementation | " + " | ".join(columns) + " | notes |"
    print(
        f"L1 report: Python {sys.version.split()[0]}, {N} str keys, best of {repeats}, "
        f"ns per call incl. {empty:.0f} ns of loop + C-call cost, "
        f"CPUs {sorted(os.sched_getaffinity(0))}"
    )
    print()
    print(header)
    print("|" + "---|" * (len(columns) + 2))
    for name, row in rows.items():
        row["x dict.get"] = row["get hit"] / base
        cells = []
        for col in columns:
            value = row.get(col)
            if value is None:
                cells.append("-")
            elif col == "x dict.get":
                cells.append(f"{value:.2f}")
            else:
                cells.append(f"{value:.0f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {row['note']} |")
    print(f"| loop + id(k) | {empty:.0f} | - | - | - | - | - | - | harness cost in every row |")

    if "stratacache.L1 (compiled)" in rows:
        c = rows["stratacache.L1 (compiled)"]
        box = rows["cachebox.TTLCache"]
        ratios = {
            "compiled get hit / dict.get": c["get hit"] / base,
            "compiled get hit / cachebox.TTLCache get": c["get hit"] / box["get hit"],
            "compiled set+evict / cachebox.TTLCache set+evict": c["set+evict"] / box["set+evict"],
            "compiled (ttl) set+evict / cachebox.TTLCache set+evict": rows[
                "stratacache.L1 (compiled), ttl"
            ]["set+evict"]
            / box["set+evict"],
            "compiled mem / cachetools.LRUCache mem (RSS)": c["mem B/entry (RSS)"]
            / rows["cachetools.LRUCache"]["mem B/entry (RSS)"],
            "compiled mem / cachebox.LRUCache mem (RSS)": c["mem B/entry (RSS)"]
            / rows["cachebox.LRUCache"]["mem B/entry (RSS)"],
            "compiled tinylfu get hit / compiled lru get hit": rows[
                "stratacache.L1 (compiled), tinylfu"
            ]["get hit"]
            / c["get hit"],
        }
        print()
        for label, ratio in ratios.items():
            print(f"{label}: {ratio:.2f}")
        rows["ratios"] = ratios
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})  # as `taskset -c <last>`
    main()
