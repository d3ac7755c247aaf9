"""Where the bus's propagation time goes: timestamps along the path of each write.

    taskset -c 1 python benchmarks/bus_stages.py [--rounds 200]

The setup of ``bus_cases.propagation(..., "bus")`` (one writer, 3 spawned readers polling
``get`` every ``POLL``), with the sync bus's methods wrapped to note the wall clock
(``time.time``, comparable between processes on one machine) at each stage, relative to
the start of the writer's ``set``:

- ``write``: the L2 write (``RedisTier.write``) has returned;
- ``send``/``sent``: the publisher thread starts / ends the ``PUBLISH``;
- ``heard``/``applied``: a reader's listener thread has the message / has applied it;
- ``look``/``served``: the reader's ``get`` that serves the new value starts / returns
  (after the L1 drop, its L2 re-read).

Each segment (the difference of two stages) is printed as p50/p99 over every reader and
write; the means add up to the end-to-end mean, the percentiles do not (each segment has
its own tail).
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stratacache import Cache
from stratacache._sync import bus as sync_bus
from stratacache._sync import redis_tier
from stratacache.testing import RedisServerProcess

from bus_cases import KEY, NS, POLL, percentile

# (name, later stage, earlier stage or None for the start of set)
SEGMENTS = (
    ("L2 write", "write", None),
    ("hand-off to the publisher", "send", "write"),
    ("PUBLISH round trip", "sent", "send"),
    ("PUBLISH -> listener has it", "heard", "send"),
    ("apply to L1", "applied", "heard"),
    ("applied -> reader looks", "look", "applied"),
    ("reader's get (L2 re-read)", "served", "look"),
    ("end to end", "served", None),
)


def _reader(url: str, rounds: int, barrier: Any, results: Any) -> None:
    heard: list[tuple[float, float]] = []
    handle = sync_bus.InvalidationBus._handle

    def noting(self: Any, message: dict[str, Any], run: Any) -> bool:
        start = time.time()
        confirmed = handle(self, message, run)
        if message["type"] == "message":  # heartbeats too: matched by time below
            heard.append((start, time.time()))
        return confirmed

    sync_bus.InvalidationBus._handle = noting  # type: ignore[method-assign]
    served: dict[int, tuple[float, float]] = {}
    cache = Cache(url, namespace=NS)
    cache.get(KEY)
    barrier.wait()
    deadline = time.monotonic() + 60
    while rounds not in served and time.monotonic() < deadline:
        look = time.time()
        value = cache.get(KEY)
        if value not in served:
            served[value] = (look, time.time())
        time.sleep(POLL)
    cache.close()
    results.put((served, heard))


def _wrap_writer(log: dict[str, list[tuple[float, float]]]) -> None:
    send, write = sync_bus.InvalidationBus._send, redis_tier.RedisTier.write

    def noting_send(self: Any, payloads: list[bytes], *, guarded: bool = True) -> bool:
        start = time.time()
        reached = send(self, payloads, guarded=guarded)
        if guarded and payloads:  # heartbeats are sent unguarded
            log["send"].append((start, time.time()))
        return reached

    def noting_write(self: Any, *args: Any, **kwargs: Any) -> None:
        start = time.time()
        write(self, *args, **kwargs)
        log["write"].append((start, time.time()))

    sync_bus.InvalidationBus._send = noting_send  # type: ignore[method-assign]
    redis_tier.RedisTier.write = noting_write  # type: ignore[method-assign]


def stages(url: str, rounds: int, readers: int = 3) -> list[dict[str, float]]:
    """One dict of stage -> seconds since the start of ``set`` per (write, reader)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(readers + 1), ctx.Queue()
    procs = [
        ctx.Process(target=_reader, args=(url, rounds, barrier, results)) for _ in range(readers)
    ]
    log: dict[str, list[tuple[float, float]]] = {"send": [], "write": []}
    _wrap_writer(log)
    writer = Cache(url, namespace=NS)
    writer.set(KEY, 0)
    for p in procs:
        p.start()
    barrier.wait(timeout=60)
    time.sleep(0.1)
    log["send"].clear()
    log["write"].clear()
    started: dict[int, float] = {}
    for n in range(1, rounds + 1):
        started[n] = time.time()
        writer.set(KEY, n)
        time.sleep(0.005)
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    writer.close()
    writes, sends = log["write"], log["send"]
    send_starts = [start for start, _ in sends]
    rows = []
    for served, heard in outcomes:
        heard_starts = [start for start, _ in heard]
        for n in range(1, rounds + 1):
            # the first send after this write's L2 write, the first message heard after it
            i = bisect.bisect_left(send_starts, writes[n - 1][1])
            if n not in served or i >= len(sends):
                continue
            j = bisect.bisect_left(heard_starts, sends[i][0])
            if j >= len(heard):
                continue
            t0 = started[n]
            rows.append(
                {
                    "write": writes[n - 1][1] - t0,
                    "send": sends[i][0] - t0,
                    "sent": sends[i][1] - t0,
                    "heard": heard[j][0] - t0,
                    "applied": heard[j][1] - t0,
                    "look": served[n][0] - t0,
                    "served": served[n][1] - t0,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)
    with RedisServerProcess() as server:
        rows = stages(server.url, args.rounds)
    print(f"{len(rows)} (write, reader) pairs; ms")
    print(f"  {'segment':<30} {'mean':>8} {'p50':>8} {'p99':>8}")
    for name, later, earlier in SEGMENTS:
        values = sorted(r[later] - (r[earlier] if earlier else 0.0) for r in rows)
        mean, p50, p99 = (
            sum(values) / len(values),
            percentile(values, 0.5),
            percentile(values, 0.99),
        )
        print(f"  {name:<30} {mean * 1e3:8.3f} {p50 * 1e3:8.3f} {p99 * 1e3:8.3f}")


if __name__ == "__main__":
    main()
