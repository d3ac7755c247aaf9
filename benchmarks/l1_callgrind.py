"""Instruction counts per L1 operation under ``valgrind --tool=callgrind`` (stable on a
noisy machine, unlike timings).

    python benchmarks/l1_callgrind.py            # the table (needs valgrind)

Each case runs a child process twice, with ``n`` and with ``2n`` operations after the same
set-up, and reports (Ir(2n) - Ir(n)) / n: the start-up, import and fill costs cancel out.
The loops are the same ``for k in keys: fn(k)`` loops as ``l1_report.py`` (their own cost,
"loop + id(k)", is a row of its own).
"""

from __future__ import annotations

import argparse
import os
import subprocess

from callgrind import collected_instructions

_CHILD = r"""
import importlib.util, random, sys, types

case, impl, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
# The package without its __init__ (redis-py and the rest): the L1 module needs only
# _sentinel. Its cost would cancel out anyway; under valgrind it took most of the time.
_spec = importlib.util.find_spec("stratacache")
_pkg = types.ModuleType("stratacache")
_pkg.__path__ = list(_spec.submodule_search_locations)
sys.modules["stratacache"] = _pkg
n = 10_000

def make_keys(prefix):
    keys = [f"{{prefix}}:{{i:08d}}" for i in range(n)]
    random.Random(1).shuffle(keys)
    return keys

keys = make_keys("key")
other = make_keys("new")
value = object()
ttl = 3600.0
if impl.startswith("stratacache"):
    if "compiled" in impl:
        from stratacache._l1_c import L1 as cls
    else:
        from stratacache._l1_py import L1 as cls
    cache = cls(n, policy="tinylfu") if impl.endswith("tinylfu") else cls(n)
    put = cache.set
    get = cache.get
elif impl == "cachebox.TTLCache":
    import cachebox
    cache = cachebox.TTLCache(n, ttl)  # one ttl for every entry, given here
    put = cache.insert  # called directly: a wrapper would add a Python frame per call
    get = cache.get
elif impl == "cachebox.VTTLCache":
    import cachebox
    cache = cachebox.VTTLCache(n)  # a ttl per entry, given with each insert as to L1.set
    put = cache.insert
    get = cache.get
elif impl == "cachebox.LRUCache":
    import cachebox
    cache = cachebox.LRUCache(n)
    put = cache.insert
    get = cache.get
elif impl == "dict":
    cache = {{}}
    put = lambda k, v, t=None: cache.__setitem__(k, v)
    get = cache.get
elif impl == "loop":
    get = put = id
# TTLCache takes its one ttl in the constructor, LRUCache none: their insert gets no ttl
withttl = case.endswith("_ttl") and impl not in ("cachebox.TTLCache", "cachebox.LRUCache")


def run(keys, other, value, ttl, put, get):
    # in a function, as a caller's code is: names are locals (LOAD_FAST), not the module
    # dict lookups (LOAD_NAME) that would add ~140 instructions per name to every row
    for k in keys:
        if impl == "loop":
            break
        if withttl:
            put(k, value, ttl)
        else:
            put(k, value)
    batches = [other, keys]
    for r in range(reps):
        batch = batches[r % 2]
        if case.startswith("get"):
            for k in keys:
                get(k)
        elif impl == "loop":
            for k in batch:
                id(k)
        elif withttl:
            for k in batch:
                put(k, value, ttl)
        else:
            for k in batch:
                put(k, value)


run(keys, other, value, ttl, put, get)
"""


def instructions(case: str, impl: str, reps: int) -> int:
    code = _CHILD.format(bench_dir=os.path.dirname(os.path.abspath(__file__)))
    return collected_instructions(code, case, impl, str(reps))


def per_op(case: str, impl: str) -> float:
    """Instructions per operation: the difference between 2 and 1 rounds of 10,000."""
    return (instructions(case, impl, 2) - instructions(case, impl, 1)) / 10_000


CASES = ("get_hit", "set_evict", "set_evict_ttl")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", default="")
    args = parser.parse_args(argv)
    impls = (
        args.impls.split(",")
        if args.impls
        else [
            "loop",
            "dict",
            "stratacache.L1 (compiled)",
            "stratacache.L1 (compiled) tinylfu",
            "cachebox.LRUCache",
            "cachebox.TTLCache",
            "cachebox.VTTLCache",
        ]
    )
    print("| implementation | " + " | ".join(f"{c} (Ir/op)" for c in CASES) + " |")
    print("|---|" + "---|" * len(CASES))
    for impl in impls:
        cells = []
        for case in CASES:
            if impl == "dict" and case.startswith("set"):
                cells.append("-")
                continue
            try:
                cells.append(f"{per_op(case, impl):.0f}")
            except subprocess.CalledProcessError:
                cells.append("n/a")
        print(f"| {impl} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
