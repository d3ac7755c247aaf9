"""A stampede across processes: the Redis lease lets one loader call serve everyone."""

from __future__ import annotations

import multiprocessing

import pytest

from stratacache._primitives import Redis, RedisCluster

from workers import stampede_worker


@pytest.mark.slow
def test_4_processes_x_10_threads_over_5_cold_keys_make_5_loader_calls(
    target: tuple[str, bool],
) -> None:
    url, cluster = target
    keys = [f"cold:{i}" for i in range(5)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=stampede_worker,
            args=(url, cluster, keys, 10, "stampede-loader-calls", barrier, results),
        )
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0

    client = RedisCluster.from_url(url) if cluster else Redis.from_url(url)
    try:
        loader_calls = int(client.get("stampede-loader-calls") or 0)
    finally:
        client.close()
    assert loader_calls == 5
    assert sum(loads for _, loads in outcomes) == 5
    expected = sorted(f"value-of-{k}" for k in keys for _ in range(10))
    assert all(seen == expected for seen, _ in outcomes)
