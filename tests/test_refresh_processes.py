"""Early refresh across real processes sharing Redis: one loader call for the fleet.

The processes share a clock (a ``multiprocessing.Value`` the parent moves), so the refresh
happens when the test says, not after a sleep."""

from __future__ import annotations

import math
import multiprocessing

from refresh_workers import early_refresh_worker
from stratacache._primitives import Redis, RedisCluster


def test_three_processes_refresh_a_key_with_one_loader_call(target: tuple[str, bool]) -> None:
    url, cluster = target
    namespace = "rp"
    ctx = multiprocessing.get_context("spawn")
    clock = ctx.Value("d", 1_000_000.0)
    # XFetch's draw, one per entry and process: -ln(draw) = 25, so each process's entry
    # is due 25 load times (>= 1.25 s: the loader sleeps 50 ms) before its expiry, and
    # not at the first read unless a load takes over 1.2 s
    draw = ctx.Value("d", math.exp(-25.0))
    go = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=early_refresh_worker, args=(url, cluster, namespace, clock, draw, go, results)
        )
        for _ in range(3)
    ]
    client = RedisCluster.from_url(url) if cluster else Redis.from_url(url)
    try:
        for p in procs:
            p.start()
        ready = [results.get(timeout=120) for _ in procs]
        assert [r[0] for r in ready] == ["ready"] * 3
        assert int(client.get(f"{namespace}:loads")) == 1  # one fill, two L2 hits
        clock.value += 29.0  # one second before expiry: every process's entry is due,
        # each starts a refresh on its next read
        go.set()
        done = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        # one refresh loaded for the fleet: the others found the lease taken, or the new
        # entry in L2 (adopted) — never a second load
        assert int(client.get(f"{namespace}:loads")) == 2
        assert sum(d[1] for d in done) == 1
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        client.close()
