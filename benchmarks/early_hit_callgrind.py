"""Instruction counts of one ``get_or_set`` L1 hit of the sync ``Cache``: a plain hit
against an ``early_refresh=True`` hit whose refresh time has not come (issue 13: the
early-refresh hit should cost about a plain one), under ``valgrind --tool=callgrind``;
with the other L1 hits of the sync cache beside them: ``get``, a ``@cache.cached``
function and a ``@cache.cached`` method (keyed by a template that leaves ``self`` out).

    python benchmarks/early_hit_callgrind.py     # the table (needs valgrind, redis-server)

Each case runs a child process with 2,000 and with 12,000 reads after the same set-up
and reports (Ir(12,000) - Ir(2,000)) / 10,000: start-up, imports and connecting cancel
out. The cache's clock is fixed before the key's refresh time, so no read refreshes;
``bus=False``: no listener or heartbeat thread whose work would count in one run only.
"""

from __future__ import annotations

from callgrind import collected_instructions
from stratacache.testing import RedisServerProcess

_CHILD = r"""
import sys
from itertools import repeat  # clock: a fixed time from a C callable, like time.time
from stratacache import Cache

case, url, reads = sys.argv[1], sys.argv[2], int(sys.argv[3])
cache = Cache(url, namespace="cg", clock=repeat(1000.0).__next__, bus=False)
def load():
    return "x" * 100
cache.get_or_set("k", load, 2.0, early_refresh=True)  # notes the refresh time (> 1000)
def plain(get_or_set):  # loops in functions: fast locals, as in an application
    for _ in range(reads):
        get_or_set("k", load, 2.0)
def early(get_or_set):
    for _ in range(reads):
        get_or_set("k", load, 2.0, early_refresh=True)
def get(get):
    for _ in range(reads):
        get("k")
@cache.cached(2.0)
def decorated(name):
    return "x" * 100
decorated("k")
def cached(decorated):
    for _ in range(reads):
        decorated("k")
class Repo:
    @cache.cached(2.0, key="repo:{name}")
    def find(self, name):
        return "x" * 100
Repo().find("k")
def cached_method(repo):
    for _ in range(reads):
        repo.find("k")
if case == "Cache.get":
    get(cache.get)
elif case == "@cache.cached":
    cached(decorated)
elif case == "@cache.cached method":
    cached_method(Repo())
else:
    {"plain": plain, "early_refresh=True": early}[case](cache.get_or_set)
cache.close()
"""

CASES = ("plain", "early_refresh=True", "Cache.get", "@cache.cached", "@cache.cached method")
FEW, MANY = 2_000, 12_000


def instructions(case: str, url: str, reads: int) -> int:
    return collected_instructions(_CHILD, case, url, str(reads))


def main() -> None:
    print("| L1 hit | Ir/read |")
    print("|---|---|")
    with RedisServerProcess() as server:
        for case in CASES:
            few = instructions(case, server.url, FEW)
            many = instructions(case, server.url, MANY)
            print(f"| {case} | {(many - few) / (MANY - FEW):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
