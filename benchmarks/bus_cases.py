"""Cases of the invalidation-bus benchmarks, shared by ``bench_bus.py`` and ``bus_report.py``.

Propagation: one process writes, three reader processes (spawned) note when they first
*serve* each new version through ``Cache.get``; beside it, the raw redis-py baseline, where
the readers are plain subscribers noting when each published message arrives. Readers of
the cache poll ``get`` every ``POLL`` seconds, as a busy service would be reading anyway;
the raw subscribers block in ``get_message``, so the baseline is the better case. A second
baseline, ``raw+kv``, adds what any design that never ships the value must pay: the writer
``SET``s before it publishes and each subscriber ``GET``s after it hears; ``raw+kv polled``
is that floor with the subscribers in the cache readers' loop (look without blocking, then
sleep ``POLL``), so that it and the cache row differ only in the code under test.

Throughput: invalidations per second from one writer (``Cache.delete`` of distinct keys),
counted until another instance has heard the last of them, with batching on and off;
beside it, raw ``PUBLISH`` of one message per key.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

import redis

from stratacache import Cache

NS = "benchbus"
KEY = "watched"
POLL = 0.0001
CHANNEL = "benchbus:raw"


def _reader(url: str, mode: str, rounds: int, barrier: Any, results: Any) -> None:
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 60
    if mode in ("raw", "raw+kv", "raw+kv polled"):
        client = redis.Redis.from_url(url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(CHANNEL)
        while pubsub.get_message(timeout=0.1) is None and not pubsub.subscribed:
            pass
        barrier.wait()
        polled = mode == "raw+kv polled"
        while rounds not in seen and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0 if polled else 1.0)
            if message is not None:
                if mode != "raw":
                    client.get(KEY)  # the re-read an invalidation-only design needs
                seen[int(message["data"])] = time.time()
            elif polled:
                time.sleep(POLL)  # the cache readers' loop: look, then sleep
        pubsub.close()
        client.close()
    else:
        cache = Cache(url, namespace=NS)
        cache.get(KEY)
        barrier.wait()
        while rounds not in seen and time.monotonic() < deadline:
            value = cache.get(KEY)
            if value not in seen:
                seen[value] = time.time()
            time.sleep(POLL)
        cache.close()
    seen.pop(0, None)
    results.put(seen)


def propagation(url: str, mode: str, rounds: int = 200, readers: int = 3) -> list[float]:
    """Lags (seconds) from the write (or raw publish) to each reader's first sight of it."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(readers + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_reader, args=(url, mode, rounds, barrier, results))
        for _ in range(readers)
    ]
    writer = Cache(url, namespace=NS) if mode == "bus" else None
    client = redis.Redis.from_url(url)
    try:
        if writer is not None:
            writer.set(KEY, 0)
        for p in procs:
            p.start()
        barrier.wait(timeout=60)
        time.sleep(0.1)
        written: dict[int, float] = {}
        for n in range(1, rounds + 1):
            written[n] = time.time()
            if writer is not None:
                writer.set(KEY, n)
            else:
                if mode != "raw":
                    client.set(KEY, n)
                client.publish(CHANNEL, str(n))
            time.sleep(0.005)
        lags = []
        for _ in procs:
            seen = results.get(timeout=60)
            lags += [seen[n] - written[n] for n in seen if n in written]
        for p in procs:
            p.join(timeout=30)
    finally:
        if writer is not None:
            writer.close()
        client.close()
    return sorted(lags)


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values (nearest rank)."""
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def invalidations_per_second(
    url: str, window: float | None, n: int = 5000, threads: int = 1
) -> tuple[float, int]:
    """(invalidations/s, messages sent) for ``n`` deletes in ``threads`` threads, until a
    second instance has heard the last one; ``window=None`` is the raw PUBLISH baseline."""
    if window is None:
        client = redis.Redis.from_url(url)
        try:
            per = n // threads

            def raw(t: int) -> None:
                for i in range(per):
                    client.publish(CHANNEL, f"k{t}:{i}")

            start = time.perf_counter()
            _run_threads(raw, threads)
            return per * threads / (time.perf_counter() - start), per * threads
        finally:
            client.close()
    writer = Cache(url, namespace=NS, bus_batch_window=window)
    reader = Cache(url, namespace=NS)
    try:
        writer.get("warm")
        reader.get("warm")
        assert writer._bus is not None and reader._bus is not None
        wbus, rstate = writer._bus, reader._bus.state
        sent_before = wbus.outbox.sent
        per = n // threads

        def deletes(t: int) -> None:
            for i in range(per):
                writer.delete(f"k{t}:{i}")

        start = time.perf_counter()
        _run_threads(deletes, threads)
        deadline = time.monotonic() + 30
        while wbus.outbox.pending() or (rstate.last_seq_of(wbus.outbox.source) or 0) < (
            wbus.outbox.last_seq
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("the reader did not hear every invalidation")
            time.sleep(0.0001)
        elapsed = time.perf_counter() - start
        return per * threads / elapsed, wbus.outbox.sent - sent_before
    finally:
        writer.close()
        reader.close()


def _run_threads(fn: Any, threads: int) -> None:
    if threads == 1:
        fn(0)
        return
    pool = [threading.Thread(target=fn, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
