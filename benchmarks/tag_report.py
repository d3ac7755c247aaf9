"""Print the figures of invalidating one tag over 1,000,000 keys, beside the seed's two
naive versions, from one run.

    taskset -c 1 python benchmarks/tag_report.py           # ~6 minutes
    taskset -c 1 python benchmarks/tag_report.py --quick   # chunk 1000 only, ~2 minutes
    taskset -c 1 python benchmarks/tag_report.py --quick --keys 200000   # a smaller tag

Starts its own redis-server (no persistence; it inherits the CPU pinning, so client and
server share one CPU, as in the other reports). Every phase starts from ``FLUSHALL`` and
writes 1M keys under the tag ``bench`` with ``Cache.set_many`` (chunks of 10,000: exactly
the bytes and member-set entries the cache writes), then:

* **stratacache** ``invalidate_tag``: the call's duration; the time until a *second*
  ``Cache``, in another process (as another instance of a service would be; own bus, the
  sampled keys in its L1, reading one of them in a loop) returns a miss for it; the
  time until the background reclaim is over (``reclaim_pending == 0`` and ``DBSIZE`` down
  by 1M), for ``reclaim_chunk`` 1000 (the default), 500 and 5000.
* **naive (a)**, the seed's "disaster 2": ``SMEMBERS`` (``ZRANGE``: our member sets are
  sorted sets) of the whole tag, then one ``DEL``
  round trip per key (without the seed's 1 ms sleep per key). The listing runs on the
  full 1M set; the ``DEL`` loop on the first 100,000 members only (all 1M would add about
  80 s and say nothing new): its rate, and its 1M time, are extrapolated.
* **naive (b)**, the seed's Lua script: ``SMEMBERS`` (``ZRANGE``) + ``DEL`` of every key in one
  ``EVAL``. Redis serves nobody else until it returns: its stall is its duration.

Stalls, reset before each phase and read after it: Redis's own latency monitor
(``latency-monitor-threshold 1`` ms, ``LATENCY LATEST``: the worst event of any kind),
``SLOWLOG`` (commands slower than 1 ms), and a client-side probe: a separate process on
its own connection sending ``PING`` every ~0.2 ms and keeping the worst round trip. The
probe runs on a CPU the script is *not* pinned to when there is one, so that it measures
when Redis answers, not when the probe itself gets the shared CPU; an idle run of the probe
gives its floor. No figure here is a pass/fail test: the goals are printed beside them.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Optional

import redis

from stratacache import Cache, _l1
from stratacache._keys import KeySpace
from stratacache.testing import RedisServerProcess

# the processes the report spawns read the size from the environment (set by --keys)
_KEYS_ENV = "STRATACACHE_TAG_REPORT_KEYS"
N = int(os.environ.get(_KEYS_ENV, "1000000"))
WRITE_CHUNK = 10_000  # keys per set_many call while populating
SAMPLE = 1_000  # keys the second instance holds in its L1
NAIVE_DEL_SAMPLE = 100_000  # keys deleted one round trip at a time by naive (a)
NS = "benchtag"
TAG = "bench"
TTL = 3600.0
POLL = 0.0001  # the second instance's read loop (as a busy service would be reading)
PROBE_GAP = 0.0002  # pause between the probe's PINGs: a stall is caught within ~0.25 ms
MISS = object()
DATA_PREFIX = KeySpace(NS).data_key("x")[:-2]  # "benchtag:v1:d:{": every entry's key starts so

GOAL_EFFECTIVE_MS = 5.0
GOAL_RATE = 500_000.0
GOAL_STALL_MS = 10.0

# The seed's Lua version (naive b). Our member sets are sorted sets (scored by expiry) of
# the inside of the data keys' braces (ARGV[1] is what comes before), so the seed's
# SMEMBERS is a ZRANGE of the whole set here, and each key is rebuilt as the reclaim does.
SEED_LUA = """
local keys = redis.call('ZRANGE', KEYS[1], 0, -1)
for i = 1, #keys do
  redis.call('DEL', ARGV[1] .. keys[i] .. '}')
end
redis.call('DEL', KEYS[1])
return #keys
"""


def key_of(i: int) -> str:
    return f"item:{i}"


def value_of(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"item {i}", "price": 9.99}


SAMPLE_KEYS = [key_of(i) for i in range(0, N, N // SAMPLE)]


# -- the client-side probe ------------------------------------------------------------------


def _probe(url: str, cpu: Optional[int], conn: Any) -> None:
    """PING in a loop; on each request from the parent, send (worst RTT, pings) since the
    previous one and start again."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    client = redis.Redis.from_url(url)
    client.ping()
    conn.send("ready")
    worst, pings = 0.0, 0
    while True:
        if conn.poll():
            if conn.recv() == "stop":
                break
            conn.send((worst, pings))
            worst, pings = 0.0, 0
        start = perf_counter()
        client.ping()
        rtt = perf_counter() - start
        pings += 1
        if rtt > worst:
            worst = rtt
        time.sleep(PROBE_GAP)
    client.close()


class Probe:
    """The probe process seen from the report."""

    def __init__(self, url: str) -> None:
        mine = os.sched_getaffinity(0)
        spare = sorted(set(range(os.cpu_count() or 1)) - mine)
        self.cpu = spare[0] if spare else None
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_probe, args=(url, self.cpu, child), daemon=True)
        self._proc.start()
        if self._conn.recv() != "ready":
            raise RuntimeError("probe did not start")

    def take(self) -> tuple[float, int]:
        """(worst PING round trip in seconds, number of PINGs) since the last take."""
        self._conn.send("take")
        return self._conn.recv()  # type: ignore[no-any-return]

    def close(self) -> None:
        self._conn.send("stop")
        self._proc.join(timeout=10)


# -- the second instance -------------------------------------------------------------------


def _second_instance(url: str, cpu: Optional[int], conn: Any) -> None:
    """Another process's cache: holds the sampled keys in its L1; on "watch", reads one of
    them in a loop until it is a miss and sends back when (``perf_counter`` is the system's
    monotonic clock, comparable across processes) and which sampled keys it still serves."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    cache = fresh_cache(url)
    try:
        wait_bus_healthy(cache)
        for key in SAMPLE_KEYS:  # L2 hits, installed in this L1
            if cache.get(key, MISS) is MISS:
                raise RuntimeError(f"{key} not readable before the invalidation")
        if sum(key in cache.l1 for key in SAMPLE_KEYS) != SAMPLE:
            raise RuntimeError("the sampled keys are not all in the second instance's L1")
        conn.send("ready")
        watched = conn.recv()
        conn.send("watching")
        deadline = time.monotonic() + 10
        while cache.get(watched, MISS) is not MISS:
            if time.monotonic() > deadline:
                raise RuntimeError("the second instance still serves the invalidated key")
            time.sleep(POLL)
        seen = perf_counter()
        conn.send((seen, [k for k in SAMPLE_KEYS if cache.get(k, MISS) is not MISS]))
    except Exception as exc:
        conn.send(exc)
    finally:
        cache.close()


class SecondInstance:
    """The second instance's process seen from the report. It runs on a CPU the report is
    not pinned to when there is one, as another instance would run on another machine:
    polling every 0.1 ms on the writer's CPU would slow the writer's call down (each
    wake-up preempts it) more than it measures anything; across CPUs its wake-ups pay the
    cross-CPU cost instead, which only makes its figure worse."""

    def __init__(self, url: str) -> None:
        spare = sorted(set(range(os.cpu_count() or 1)) - os.sched_getaffinity(0))
        self.cpu = spare[0] if spare else None
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_second_instance, args=(url, self.cpu, child), daemon=True)
        self._proc.start()
        self._expect("ready")

    def _expect(self, what: str) -> Any:
        if not self._conn.poll(120):
            raise RuntimeError("the second instance did not answer")
        reply = self._conn.recv()
        if isinstance(reply, Exception):
            raise reply
        if what and reply != what:
            raise RuntimeError(f"the second instance said {reply!r}, not {what!r}")
        return reply

    def watch(self, key: str) -> None:
        self._conn.send(key)
        self._expect("watching")

    def result(self) -> tuple[float, list[str]]:
        """(when it first missed, the sampled keys it still served after that)."""
        seen, stale = self._expect("")
        self._proc.join(timeout=30)
        return seen, stale

    def close(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join(timeout=10)


# -- stalls seen by Redis and by the probe -------------------------------------------------


@dataclass
class Stalls:
    latency_ms: float  # worst event of Redis's latency monitor
    latency_event: str
    slowlog_ms: float  # slowest command in SLOWLOG
    slowlog_command: str
    slowlog_entries: int  # commands slower than 1 ms
    slowlog_by_command: dict[str, int]
    probe_ms: float  # worst PING round trip seen by the probe
    probe_pings: int

    @property
    def worst_ms(self) -> float:
        return max(self.latency_ms, self.slowlog_ms, self.probe_ms)


class StallWatch:
    def __init__(self, admin: redis.Redis, probe: Probe) -> None:
        self.admin = admin
        self.probe = probe
        admin.config_set("latency-monitor-threshold", 1)
        admin.config_set("slowlog-log-slower-than", 1000)
        admin.config_set("slowlog-max-len", 10_000)

    def reset(self) -> None:
        # twice: freeing a long slow log is itself slow enough to be logged (and sampled
        # by the latency monitor); the second round starts both from nothing
        for _ in range(2):
            self.admin.slowlog_reset()
            self.admin.execute_command("LATENCY", "RESET")
        self.probe.take()

    def read(self) -> Stalls:
        probe_s, pings = self.probe.take()
        worst, event = 0.0, "-"
        for row in self.admin.execute_command("LATENCY", "LATEST"):
            name, _, _, max_ms = row[:4]
            if int(max_ms) > worst:
                worst, event = float(max_ms), name.decode() if isinstance(name, bytes) else name
        slow = [e for e in self.admin.slowlog_get(10_000) if _command_name(e) not in _OWN_COMMANDS]
        slowest = max(slow, key=lambda e: e["duration"], default=None)
        return Stalls(
            latency_ms=worst,
            latency_event=event,
            slowlog_ms=slowest["duration"] / 1000 if slowest else 0.0,
            slowlog_command=_command_name(slowest) if slowest else "-",
            slowlog_entries=len(slow),
            slowlog_by_command=dict(Counter(_command_name(e) for e in slow).most_common()),
            probe_ms=probe_s * 1000,
            probe_pings=pings,
        )


_OWN_COMMANDS = {"SLOWLOG", "LATENCY", "CONFIG"}  # the report's instruments, not the phase's


def _command_name(entry: dict[str, Any]) -> str:
    command = entry.get("command", b"")
    if isinstance(command, bytes):
        command = command.decode(errors="replace")
    return " ".join(command.split()[:1]).upper() or "?"


# -- population -------------------------------------------------------------------------------


def populate(cache: Cache, admin: redis.Redis, keys: KeySpace) -> float:
    """Write N keys under TAG through the cache; the seconds spent in ``set_many``."""
    spent = 0.0
    for start in range(0, N, WRITE_CHUNK):
        mapping = {key_of(i): value_of(i) for i in range(start, min(N, start + WRITE_CHUNK))}
        t = perf_counter()
        cache.set_many(mapping, ttl=TTL, tags=[TAG])
        spent += perf_counter() - t
    # set_many counts a Redis fault instead of raising it: check that everything landed
    members = admin.zcard(keys.tag_members_key(TAG))
    if members != N or admin.dbsize() < N:
        raise RuntimeError(f"population incomplete: {members} members, {admin.dbsize()} keys")
    return spent


def fresh_cache(url: str, **options: Any) -> Cache:
    # redis_timeout: a 10,000-key pipeline on a CPU shared with the server can take longer
    # than the 0.1 s default, and set_many would then drop the chunk (counted, not raised)
    return Cache(url, namespace=NS, redis_timeout=5.0, **options)


def wait_bus_healthy(*caches: Cache) -> None:
    deadline = time.monotonic() + 10
    for cache in caches:
        cache.get("warm-up")  # starts the bus
        while cache.stats().bus_state != "healthy":
            if time.monotonic() > deadline:
                raise RuntimeError("the bus did not become healthy")
            time.sleep(0.01)


# -- phases -----------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    effective_ms: float  # until the change is visible to readers
    effective_note: str
    call_ms: Optional[float]
    reclaim_s: float  # until the 1M keys are deleted (extrapolated for naive a)
    rate: float  # keys deleted per second
    stalls: Stalls
    populate_s: float
    note: str = ""


def phase_ours(url: str, admin: redis.Redis, watch: StallWatch, chunk: int) -> Row:
    keys = KeySpace(NS)
    admin.flushall()
    writer = fresh_cache(url, reclaim_chunk=chunk)
    try:
        populate_s = populate(writer, admin, keys)
        wait_bus_healthy(writer)
        reader = SecondInstance(url)
        try:
            reader.watch(SAMPLE_KEYS[len(SAMPLE_KEYS) // 2])
            before = admin.dbsize()
            writer_l1 = len(writer.l1)
            gc.collect()
            watch.reset()

            start = perf_counter()
            registered = writer.invalidate_tag(TAG)
            call = perf_counter() - start
            seen, stale = reader.result()
        finally:
            reader.close()
        # the invalidation adds two keys (the tag's version, the audit stream); the member
        # set it moved aside is deleted with the last chunk
        target = before - N + 1
        deadline = time.monotonic() + 600
        while writer.stats().invalidation.reclaim_pending or admin.dbsize() > target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"reclaim unfinished: {admin.dbsize()} keys left")
            time.sleep(0.002)
        reclaimed = perf_counter() - start
        stalls = watch.read()
        left = sum(1 for _ in admin.scan_iter(match=DATA_PREFIX + "*"))
        if left:
            raise RuntimeError(f"{left} data keys left after the reclaim")

        if registered != N:
            raise RuntimeError(f"invalidate_tag reported {registered} keys, not {N}")
        stale += [k for k in SAMPLE_KEYS if writer.get(k, MISS) is not MISS]
        if stale:
            raise RuntimeError(f"still served after the invalidation: {stale[:5]}")
        inv = writer.stats().invalidation
        if inv.reclaimed_keys != N:
            raise RuntimeError(f"reclaimed {inv.reclaimed_keys} keys, not {N}")
    finally:
        writer.close()
    return Row(
        name=f"stratacache invalidate_tag, reclaim_chunk={chunk}",
        effective_ms=(seen - start) * 1000,
        effective_note="2nd instance's miss",
        call_ms=call * 1000,
        reclaim_s=reclaimed,
        rate=N / reclaimed,
        stalls=stalls,
        populate_s=populate_s,
        note=f"writer L1 held {writer_l1} tagged entries",
    )


def phase_naive_loop(url: str, admin: redis.Redis, watch: StallWatch) -> Row:
    keys = KeySpace(NS)
    admin.flushall()
    with fresh_cache(url) as cache:
        populate_s = populate(cache, admin, keys)
    gc.collect()
    watch.reset()
    start = perf_counter()
    members = admin.zrange(keys.tag_members_key(TAG), 0, -1)
    listed = perf_counter() - start
    data_keys = [keys.member_data_key(m) for m in members]
    t = perf_counter()
    for data_key in data_keys[:NAIVE_DEL_SAMPLE]:
        admin.delete(data_key)
    looped = perf_counter() - t
    stalls = watch.read()
    rate = NAIVE_DEL_SAMPLE / looped
    total = listed + N / rate  # the loop over all 1M keys, extrapolated
    return Row(
        name="naive (a): ZRANGE (seed: SMEMBERS) + DEL per key",
        effective_ms=total * 1000,
        effective_note="last key gone (extrapolated)",
        call_ms=None,
        reclaim_s=total,
        rate=N / total,
        stalls=stalls,
        populate_s=populate_s,
        note=f"ZRANGE {listed * 1000:.0f} ms; DEL loop timed on {NAIVE_DEL_SAMPLE:,} keys",
    )


def phase_naive_lua(url: str, admin: redis.Redis, watch: StallWatch) -> Row:
    keys = KeySpace(NS)
    admin.flushall()
    with fresh_cache(url) as cache:
        populate_s = populate(cache, admin, keys)
    script = admin.register_script(SEED_LUA)
    gc.collect()
    watch.reset()
    start = perf_counter()
    deleted = script(keys=[keys.tag_members_key(TAG)], args=[keys.data_key_prefix()])
    elapsed = perf_counter() - start
    stalls = watch.read()
    if deleted != N or admin.dbsize() > 1:
        raise RuntimeError(f"the Lua script deleted {deleted}; {admin.dbsize()} keys left")
    return Row(
        name="naive (b): one Lua ZRANGE (seed: SMEMBERS) + DEL",
        effective_ms=elapsed * 1000,
        effective_note="script returns",
        call_ms=elapsed * 1000,
        reclaim_s=elapsed,
        rate=N / elapsed,
        stalls=stalls,
        populate_s=populate_s,
        note="Redis serves nobody while it runs",
    )


# -- output -------------------------------------------------------------------------------------


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def print_table(rows: list[Row], probe_floor_ms: float) -> None:
    print(
        f"\n| approach | effective (ms) | call (ms) | {N:,} deleted after (s) | reclaim (keys/s) "
        "| LATENCY max (ms) | SLOWLOG max (ms) | probe max RTT (ms) | populate (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r.stalls
        call = "-" if r.call_ms is None else f"{r.call_ms:.2f}"
        print(
            f"| {r.name} | {r.effective_ms:,.2f} ({r.effective_note}) | {call} "
            f"| {r.reclaim_s:.2f} | {r.rate:,.0f} | {s.latency_ms:.0f} ({s.latency_event}) "
            f"| {s.slowlog_ms:.1f} ({s.slowlog_command}, {s.slowlog_entries} >1 ms) "
            f"| {s.probe_ms:.1f} | {r.populate_s:.1f} |"
        )
    print(f"\nprobe floor (idle server, 1 s): max RTT {probe_floor_ms:.2f} ms")
    for r in rows:
        slow = ", ".join(f"{n} {c}" for n, c in r.stalls.slowlog_by_command.items()) or "none"
        print(f"  {r.name}: {r.note}; commands > 1 ms: {slow}; {r.stalls.probe_pings} probe PINGs")

    ours = rows[0]
    loop = next(r for r in rows if r.name.startswith("naive (a)"))
    lua = next(r for r in rows if r.name.startswith("naive (b)"))
    redis_stall = max(ours.stalls.latency_ms, ours.stalls.slowlog_ms)
    stall_ratio = lua.stalls.worst_ms / max(ours.stalls.worst_ms, 1e-9)
    print(f"\nGoals ({ours.name}):")
    print(
        f"- effective: second instance {ours.effective_ms:.2f} ms "
        f"(goal <= {GOAL_EFFECTIVE_MS:.0f} ms): {_met(ours.effective_ms <= GOAL_EFFECTIVE_MS)}; "
        f"the writer's call {ours.call_ms:.2f} ms ({ours.note}, dropped in the call); "
        f"naive (b) takes {lua.effective_ms / ours.effective_ms:,.0f}x as long, "
        f"naive (a) {loop.effective_ms / ours.effective_ms:,.0f}x"
    )
    print(
        f"- reclaim: {ours.rate:,.0f} keys/s (goal >= {GOAL_RATE:,.0f}): "
        f"{_met(ours.rate >= GOAL_RATE)}; {ours.rate / loop.rate:.1f}x naive (a), "
        f"{ours.rate / lua.rate:.2f}x naive (b)"
    )
    print(
        f"- longest Redis stall (goal <= {GOAL_STALL_MS:.0f} ms): {redis_stall:.1f} ms by "
        f"Redis's own monitors ({_met(redis_stall <= GOAL_STALL_MS)}), "
        f"{ours.stalls.probe_ms:.1f} ms seen by the probe "
        f"({_met(ours.stalls.probe_ms <= GOAL_STALL_MS)}); naive (b) stalls "
        f"{lua.stalls.worst_ms:,.0f} ms ({stall_ratio:,.0f}x), "
        f"naive (a) {loop.stalls.worst_ms:,.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="reclaim_chunk 1000 only")
    parser.add_argument("--keys", type=int, help=f"keys under the tag (default {N:,})")
    args = parser.parse_args()
    if args.keys is not None and args.keys != N:
        if args.keys < NAIVE_DEL_SAMPLE or args.keys % SAMPLE:
            parser.error(f"--keys must be a multiple of {SAMPLE} and >= {NAIVE_DEL_SAMPLE:,}")
        os.environ[_KEYS_ENV] = str(args.keys)
        os.execv(sys.executable, [sys.executable, *sys.argv])  # the constants read it again
    chunks = (1000,) if args.quick else (1000, 500, 5000)

    print(f"L1 implementation: {_l1.L1.__module__}")
    print(f"Python {platform.python_version()}, pinned to CPUs {sorted(os.sched_getaffinity(0))}")
    with RedisServerProcess() as server:
        admin = redis.Redis.from_url(server.url)
        print(f"Redis {admin.info('server')['redis_version']}, {N:,} keys under one tag")
        probe = Probe(server.url)
        print(f"probe process on CPU {probe.cpu if probe.cpu is not None else 'shared'}")
        try:
            watch = StallWatch(admin, probe)
            watch.reset()
            time.sleep(1.0)
            probe_floor_ms = watch.read().probe_ms
            rows = []
            for chunk in chunks:
                rows.append(phase_ours(server.url, admin, watch, chunk))
                print(f"  done: {rows[-1].name} ({rows[-1].reclaim_s:.2f} s)", flush=True)
            rows.append(phase_naive_loop(server.url, admin, watch))
            print(f"  done: {rows[-1].name}", flush=True)
            rows.append(phase_naive_lua(server.url, admin, watch))
            print(f"  done: {rows[-1].name}", flush=True)
        finally:
            probe.close()
            admin.close()
    print_table(rows, probe_floor_ms)
    print(
        f"\npopulation ({N:,} keys, set_many x{WRITE_CHUNK:,}, tags=[{TAG!r}]):",
        ", ".join(f"{r.populate_s:.1f} s" for r in rows),
    )


if __name__ == "__main__":
    main()
