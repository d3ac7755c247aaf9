"""Print what the read options cost on an L1 hit, and how copy on read copies.

    taskset -c 1 python benchmarks/read_options_report.py

1. ``Cache.get_or_set`` L1 hit: plain (the baseline), with ``early_refresh=True`` (the
   XFetch test on every hit, no refresh due), with ``copy_on_read=True``, with an
   ``AdaptiveTTL`` (the hit is counted); and ``Cache.get`` plain and on a
   ``copy_on_read=True`` cache.
2. Copying a value: ``copy.deepcopy`` (the baseline) against the codec's msgpack round
   trip (``Codec.copy_value``, what ``copy_on_read`` uses) and a bare
   ``msgpack.unpackb(msgpack.packb(v))`` (not usable as is: it turns tuples into lists),
   for a small user record, a flat dict of 10 ints, and a list of 100 user records.

Best of 5 rounds of process CPU time (``time.process_time``), per operation. No figure
here is a pass/fail test.
"""

from __future__ import annotations

import copy
import platform
import time
import timeit
from collections.abc import Callable
from typing import Any

import msgpack  # type: ignore[import-untyped]

from stratacache import AdaptiveTTL, Cache, Codec, _l1

USER = {
    "id": 42,
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "active": True,
    "score": 3.5,
    "roles": ["admin", "dev"],
    "address": {"city": "London", "zip": "N1 9GU"},
}
FLAT = {f"k{i}": i for i in range(10)}
USERS = [dict(USER, id=i) for i in range(100)]


def per_op(fn: Callable[[], Any], n: int) -> float:
    # CPU time of this process, not wall time: on a shared machine, time spent waiting
    # for a CPU is not the operation's
    return min(timeit.repeat(fn, number=n, repeat=5, timer=time.process_time)) / n


def main() -> None:
    print(f"python {platform.python_version()}, L1 {_l1.L1.__module__}")
    print()
    plain = Cache(None)
    copying = Cache(None, copy_on_read=True)
    adaptive = AdaptiveTTL(60, 3600)
    for cache in (plain, copying):
        cache.set("user", USER, ttl=3600)
    plain.get_or_set("early", lambda: USER, 3600, early_refresh=True)
    counting = Cache(None)  # a fill with an AdaptiveTTL makes every hit of its cache count
    counting.get_or_set("adaptive", lambda: USER, adaptive)
    load = lambda: USER  # noqa: E731
    g = plain.get_or_set
    n = 100_000
    base = per_op(lambda: g("user", load, 3600), n)
    rows = [
        ("get_or_set hit (baseline)", base),
        (
            "get_or_set hit, early_refresh=True",
            per_op(lambda: g("early", load, 3600, early_refresh=True), n),
        ),
        (
            "get_or_set hit, copy_on_read=True",
            per_op(lambda: g("user", load, 3600, copy_on_read=True), n),
        ),
        (
            "get_or_set hit, ttl=AdaptiveTTL",
            per_op(lambda: counting.get_or_set("adaptive", load, adaptive), n),
        ),
    ]
    print(f"{'L1 hit (the user record)':<40}{'per op':>10}{'vs baseline':>13}")
    for name, t in rows:
        print(f"{name:<40}{t * 1e9:>8.0f}ns{t / base:>12.2f}x")
    get_base = per_op(lambda: plain.get("user"), n)
    get_copy = per_op(lambda: copying.get("user"), n)
    print(f"{'get hit (baseline)':<40}{get_base * 1e9:>8.0f}ns{1:>12.2f}x")
    print(
        f"{'get hit, copy_on_read cache':<40}{get_copy * 1e9:>8.0f}ns{get_copy / get_base:>12.2f}x"
    )
    print()
    codec = Codec()
    print(
        f"{'copy of':<22}{'deepcopy':>12}{'codec round trip':>18}{'bare msgpack':>14}"
        f"{'deepcopy/codec':>16}"
    )
    for name, value, count in (
        ("user record", USER, 20_000),
        ("flat dict of 10", FLAT, 20_000),
        ("100 user records", USERS, 300),
    ):
        d = per_op(lambda v=value: copy.deepcopy(v), count)
        c = per_op(lambda v=value: codec.copy_value(v), count)
        m = per_op(lambda v=value: msgpack.unpackb(msgpack.packb(v)), count)
        print(f"{name:<22}{d * 1e6:>10.2f}us{c * 1e6:>16.2f}us{m * 1e6:>12.2f}us{d / c:>15.2f}x")
    plain.close()
    copying.close()
    counting.close()


if __name__ == "__main__":
    main()
