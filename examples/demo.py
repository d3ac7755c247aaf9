"""``make demo``: the seed's UserService on stratacache, in several worker processes.

Starts a throwaway redis-server, fills SQLite with users, then shows what the cache does:
hit rates per process, one database query per user across every process (single-flight
inside a process, the Redis lease across them), a stampede on a cold key, what an update
does (here and, through the invalidation bus, in another process's L1), the
stale-set race that plain cache-aside loses, a tag over 100,000 keys invalidated in
O(1), a delete made while Redis is paused (kept in the outbox, applied when it is back),
and the operations side: Prometheus metrics and the live instances of a namespace.
Runs in well under a minute.
"""

from __future__ import annotations

import multiprocessing
import random
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stratacache import MISSING, Cache
from stratacache.testing import RedisServerProcess

from user_service import Database, User, UserService

USERS = 100
WORKERS = 4
THREADS = 8
READS_PER_THREAD = 250


def _reads_worker(url: str, db_path: str, worker: int, barrier: Any, out: Any) -> None:
    """Many threads read users with a skewed (hot-key) distribution."""
    db = Database(db_path, query_delay=0.005)
    service = UserService(db, Cache(url, namespace="demo", lease_wait=5))
    rng = random.Random(worker)
    ids = [min(USERS, int(rng.paretovariate(1.2))) for _ in range(THREADS * READS_PER_THREAD)]
    barrier.wait()

    def reader(part: list[int]) -> None:
        for user_id in part:
            service.get_user(user_id)

    threads = [threading.Thread(target=reader, args=(ids[i::THREADS],)) for i in range(THREADS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    out.put((worker, service.get_metrics(), elapsed, set(ids)))
    service.cache.close()


def _stampede_worker(url: str, db_path: str, user_id: int, barrier: Any, out: Any) -> None:
    """Ten threads in this process ask for the same cold user at the same moment."""
    db = Database(db_path, query_delay=0.3)
    service = UserService(db, Cache(url, namespace="demo", lease_wait=5))
    start = threading.Barrier(10)
    names: list[str] = []

    def reader() -> None:
        start.wait()
        user = service.get_user(user_id)
        names.append(user.name if user else "?")

    barrier.wait()
    threads = [threading.Thread(target=reader) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((db.queries, service.get_metrics()["coalesced"], sorted(set(names))))
    service.cache.close()


def _watch_worker(url: str, db_path: str, user_id: int, ready: Any, out: Any) -> None:
    """Holds a user in L1, then reads it in a loop until an update elsewhere shows."""
    service = UserService(Database(db_path), Cache(url, namespace="demo"))
    first = service.get_user(user_id)
    in_l1 = service.cached_user(user_id) == first
    ready.set()
    seen: Any = "never"
    seen_at = 0.0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        user = service.get_user(user_id)
        if user is not None and user != first:
            seen, seen_at = user.name, time.time()
            break
        time.sleep(0.0002)
    out.put((seen, seen_at, in_l1))
    service.cache.close()


def _run(ctx: Any, target: Any, args_for: Any) -> list[Any]:
    barrier = ctx.Barrier(WORKERS)
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_for(i), barrier, out)) for i in range(WORKERS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return results


def _stale_set_race(url: str, db_path: str) -> None:
    """A reader pauses after its DB read while a writer updates and invalidates."""
    db = Database(db_path)
    reader = UserService(db, Cache(url, namespace="demo"))
    writer = UserService(Database(db_path), Cache(url, namespace="demo"))
    user = db.insert_user("Erin", "erin@example.com")
    read_done, resume = threading.Event(), threading.Event()

    def paused_load() -> dict[str, Any] | None:
        row = db.get_user(user.id)
        read_done.set()
        resume.wait(10)
        return asdict(row) if row else None

    result: list[Any] = []
    t = threading.Thread(
        target=lambda: result.append(reader.cache.get_or_set(reader.key(user.id), paused_load))
    )
    t.start()
    read_done.wait(10)
    writer.update_user(User(user.id, "Erin (renamed)", user.email))
    resume.set()
    t.join()
    in_l2 = writer.cache.get(reader.key(user.id), MISSING)
    print(f"  the paused reader returned {result[0]['name']!r} to its caller (what it read)")
    print(
        f"  but cached it? L2: {'no' if in_l2 is MISSING else repr(in_l2)}, "
        f"L1: {'no' if reader.cached_user(user.id) is None else 'yes'} "
        f"(fills refused: {reader.cache.stats().fills_refused})"
    )
    print(f"  next read: {reader.get_user(user.id).name!r}")  # type: ignore[union-attr]
    reader.cache.close()
    writer.cache.close()


def main() -> None:
    started = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp, RedisServerProcess() as server:
        print(f"redis-server {server.url} (throwaway: no persistence, stopped at the end)")
        db_path = str(Path(tmp) / "users.db")
        db = Database(db_path)
        for i in range(1, USERS + 1):
            db.insert_user(f"user{i}", f"user{i}@example.com")
        print(f"SQLite: {USERS} users\n")

        print(f"1) {WORKERS} processes x {THREADS} threads x {READS_PER_THREAD} reads, hot users")
        results = _run(ctx, _reads_worker, lambda i: (server.url, db_path, i))
        total_queries = 0
        for worker, m, elapsed, _ in sorted(results, key=lambda r: r[0]):
            total_queries += m["db_queries"]
            print(
                f"  worker {worker}: {m['total_requests']} reads in {elapsed:.2f}s, "
                f"hit rate {m['hit_rate']}, DB queries {m['db_queries']}, "
                f"coalesced {m['coalesced']}, lease waits {m['lease_waits']}, "
                f"Redis errors {m['redis_errors']}"
            )
        distinct = len(set().union(*(ids for *_, ids in results)))
        print(
            f"  DB queries across all processes: {total_queries}, "
            f"distinct users read: {distinct} (one query per user, whoever asked first)\n"
        )

        cold = db.insert_user("cold", "cold@example.com")
        print(f"2) stampede: {WORKERS} processes x 10 threads read cold user {cold.id} at once")
        results = _run(ctx, _stampede_worker, lambda i: (server.url, db_path, cold.id))
        queries = sum(q for q, _, _ in results)
        coalesced = sum(c for _, c, _ in results)
        print(
            f"  40 requests -> {queries} DB query; {coalesced} waited in-process, "
            f"the other processes waited on the Redis lease\n"
        )

        print("3) an update: DB first, then invalidate; the bus tells every other process")
        ready, out = ctx.Event(), ctx.Queue()
        watcher = ctx.Process(target=_watch_worker, args=(server.url, db_path, 7, ready, out))
        watcher.start()
        ready.wait(30)
        service = UserService(Database(db_path), Cache(server.url, namespace="demo"))
        before = service.get_user(7)
        written_at = time.time()
        service.update_user(User(7, "user7 (updated)", "new7@example.com"))
        after = service.get_user(7)
        print(f"  before: {before}\n  after:  {after}  (DB queries here: {service.db.queries})")
        seen, seen_at, in_l1 = out.get(timeout=30)
        watcher.join(timeout=30)
        print(
            f"  a process holding user 7 in its L1 ({'yes' if in_l1 else 'no'}) served "
            f"{seen!r} {(seen_at - written_at) * 1000:.1f} ms after the write began\n"
        )
        service.cache.close()

        print("4) the stale-set race: a slow reader vs a writer")
        _stale_set_race(server.url, db_path)

        print(f"\n5) a tag over {TAGGED:,} keys: invalidated in O(1), reclaimed in the background")
        _tag_at_scale(server.url)

        print("\n6) Redis paused for 1.5 s while a user is deleted (the write is not lost)")
        _delete_during_a_pause(server)

        print("\n7) operations: Prometheus metrics and the live instances of the namespace")
        _operations(server.url)
    print(f"\ndone in {time.perf_counter() - started:.1f}s")


def _delete_during_a_pause(server: RedisServerProcess) -> None:
    """The case of issue 11: cache-aside's delete while Redis does not answer."""
    a, b = Cache(server.url, namespace="pause"), Cache(server.url, namespace="pause")
    a.set("user:1", "old")
    b.get("user:1")  # now in b's L1
    server.pause()
    start = time.perf_counter()
    a.delete("user:1")
    returned = time.perf_counter() - start
    pending = a.stats().invalidation.outbox_pending
    time.sleep(1.5)
    server.resume()
    resumed = time.perf_counter()
    while a.stats().invalidation.outbox_pending:
        time.sleep(0.0005)
    applied = time.perf_counter() - resumed
    fresh = Cache(server.url, namespace="pause")
    print(
        f"  delete() returned after {returned * 1000:.0f} ms with {pending} operation in the "
        f"outbox;\n  applied {applied * 1000:.1f} ms after Redis came back; now the other "
        f"instance reads {b.get('user:1')!r}, a fresh one {fresh.get('user:1')!r}"
    )
    for cache in (a, b, fresh):
        cache.close()


def _operations(url: str) -> None:
    """What an operator sees: the collector's text format, and ``stratacache instances``."""
    import subprocess

    import prometheus_client

    import stratacache.prometheus

    caches = [Cache(url, namespace="demo", instance=f"web-{i}") for i in (1, 2)]
    for cache in caches:
        for user_id in range(1, 30):
            cache.get_or_set(f"user:{user_id}", lambda user_id=user_id: {"id": user_id})
            cache.get(f"user:{user_id}")
    registry = prometheus_client.CollectorRegistry()
    stratacache.prometheus.register(caches[0], registry=registry)
    wanted = ("stratacache_hits_total", "stratacache_misses_total", "stratacache_bus_healthy")
    text = prometheus_client.generate_latest(registry).decode()
    for line in text.splitlines():
        if line.startswith(wanted):
            print(f"  {line}")

    def current() -> bool:  # each cache's prober rewrites its record once a second
        seen = stratacache.instances(url, "demo")
        return len(seen) == 2 and all(i.hit_ratio > 0 and i.bus_state == "healthy" for i in seen)

    deadline = time.monotonic() + 5
    while not current() and time.monotonic() < deadline:
        time.sleep(0.05)
    table = subprocess.run(
        [sys.executable, "-m", "stratacache", "instances", url, "-n", "demo"],
        capture_output=True,
        text=True,
        check=False,
    )
    print(table.stdout.rstrip() or table.stderr.rstrip())
    for cache in caches:
        cache.close()


TAGGED = 100_000


def _tag_at_scale(url: str) -> None:
    """One instance invalidates a big tag; another, holding some of its keys in L1, stops
    serving them within milliseconds; the keys' bytes are deleted afterwards in chunks."""
    writer, reader = Cache(url, namespace="scale"), Cache(url, namespace="scale")
    keys = [f"shoe:{i}" for i in range(TAGGED)]
    start = time.perf_counter()
    for first in range(0, TAGGED, 10_000):
        chunk = keys[first : first + 10_000]
        writer.set_many({key: {"id": key} for key in chunk}, ttl=600, tags=["catalog:shoes"])
    filled = time.perf_counter() - start
    sample = keys[:: TAGGED // 20]
    for key in sample:
        reader.get(key)  # now in the reader's L1
    start = time.perf_counter()
    count = writer.invalidate_tag("catalog")  # the parent tag reaches catalog:shoes
    call = time.perf_counter() - start
    while any(reader.l1.peek(key, MISSING) is not MISSING for key in sample):
        time.sleep(0.0002)
    heard = time.perf_counter() - start
    stale = sum(reader.get(key, MISSING) is not MISSING for key in sample)
    while writer.stats().invalidation.reclaim_pending:
        time.sleep(0.005)
    reclaimed = time.perf_counter() - start
    print(
        f"  wrote {TAGGED:,} tagged entries in {filled:.1f}s; invalidate_tag('catalog') "
        f"returned {count:,} in {call * 1000:.1f} ms\n"
        f"  the other instance dropped them from L1 after {heard * 1000:.1f} ms; "
        f"stale reads after that: {stale}\n"
        f"  reclaim: {writer.stats().invalidation.reclaimed_keys:,} keys deleted in "
        f"{reclaimed:.2f}s ({writer.stats().invalidation.reclaimed_keys / reclaimed:,.0f}/s), "
        f"in chunks of 1,000"
    )
    writer.close()
    reader.close()


if __name__ == "__main__":
    main()
