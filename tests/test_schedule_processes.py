"""Scheduled invalidation across real processes: several spawned interpreters register the
same schedule (a cron with seconds, on the real clock) and each tick fires in exactly one
of them, as the audit stream records (one record per tick, its reason naming the tick).
The clock-driven tests are in ``tests/_async/test_schedule.py``.
"""

from __future__ import annotations

import multiprocessing
import re
import time
from collections import Counter
from typing import Any

from stratacache import Cache

NS = "schedproc"
CRON = "* * * * * */2"  # every 2 seconds (croniter: seconds as the sixth field)
PROCESSES = 2


def scheduled_worker(url: str, cluster: bool, barrier: Any, stop: Any, results: Any) -> None:
    cache = Cache(url, cluster=cluster, namespace=NS, schedule_poll=0.05, redis_timeout=2.0)
    try:
        cache.schedule_invalidation(CRON, name="proc", tag="t")
        barrier.wait(30)
        stop.wait(60)
        results.put(cache.stats().schedules[0].fired_here)
    finally:
        cache.close()


def test_each_tick_fires_once_across_processes(target: tuple[str, bool]) -> None:
    url, cluster = target
    ctx = multiprocessing.get_context("spawn")
    barrier, stop, results = ctx.Barrier(PROCESSES + 1), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=scheduled_worker, args=(url, cluster, barrier, stop, results))
        for _ in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(60)
        cache = Cache(url, cluster=cluster, namespace=NS)
        try:
            # run until at least two ticks have fired (polling, no timing assertion)
            deadline = time.monotonic() + 60
            while True:
                ticks = [r for r in cache.audit_log(1000) if r.action == "tag"]
                if len(ticks) >= 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            stop.set()
            fired = sum(results.get(timeout=60) for _ in procs)
            for proc in procs:
                proc.join(30)
            records = [r for r in cache.audit_log(1000) if r.action == "tag"]
        finally:
            cache.close()
    finally:
        stop.set()
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    assert all(proc.exitcode == 0 for proc in procs)
    per_tick = Counter(re.search(r"tick (\d+)", r.reason or "").group(1) for r in records)  # type: ignore[union-attr]
    assert len(per_tick) >= 2
    assert set(per_tick.values()) == {1}, per_tick  # exactly one firing per tick
    assert fired == len(records)  # and every firing of every process is one of them
