"""A chaos checker: processes share a namespace while Redis fails under them; judge the history.

A system of record in SQLite (WAL mode) holds ``keys`` integer versions. ``workers``
spawned processes, each with its own :class:`~stratacache.Cache` on one namespace, run a
random mix (Zipf-like key choice) of ``get_or_set(key, loader)`` reads, whose loader reads
the version from SQLite, and cache-aside writes: the DB update (version + 1), then
``cache.delete(key)`` (variant A) or ``cache.set(key, new_version)`` (variant B). Every
operation goes to a per-worker log with its ``time.time()`` start and end (all processes
share one clock), its key and the version it read or wrote; exceptions raised to the
caller are logged too. Meanwhile the parent injects faults, from a seeded schedule: Redis
paused (SIGSTOP) 0.2-3 s, killed and restarted on its port, ``CLIENT KILL TYPE normal``
and ``TYPE pubsub``; then a quiet period without faults.

The checker (:func:`check_history`) judges the logs afterwards, as Jepsen's checkers do:
a read is *stale within W* if it returned a version older than one whose write had
*returned* more than W seconds before the read *began*. A read overlapping a write may
return either version, and a write that raised does not count as completed. Last, a fresh
``Cache`` reads every key and its value is compared with the DB ("final-state stale").
A run with ``faults=False`` must report nothing stale at any W: that is the control that
shows the checker itself is sound.

Writers of one key hold a per-key lock (a ``multiprocessing.Lock``) across the DB update
and the cache call, as an application using ``set`` must: without it two writers can
``set`` their versions in the opposite order of their commits, a race of the application
that no cache can see. The lock is released only after the cache call; readers take none.

Run it from the command line with ``python benchmarks/consistency_report.py`` (``make
chaos``), or from code::

    from stratacache.testing.chaos import ChaosConfig, run_chaos

    report = run_chaos(ChaosConfig(seconds=30, seed=1))
    print(report.format())
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import itertools
import json
import logging
import multiprocessing
import random
import secrets
import shutil
import sqlite3
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import redis
from redis.cluster import RedisCluster

from ._servers import RedisClusterProcesses, RedisServerProcess

__all__ = [
    "WINDOWS",
    "ChaosConfig",
    "ChaosError",
    "ChaosReport",
    "Fault",
    "HistoryVerdict",
    "Operation",
    "check_history",
    "run_chaos",
]

logger = logging.getLogger("stratacache.testing.chaos")

WINDOWS: tuple[float, ...] = (0.05, 1.0, 5.0)
"""The allowances W (seconds) for which stale reads are counted."""

_READY_TIMEOUT = 60.0  # spawned interpreters import stratacache on a busy machine
_JOIN_GRACE = 30.0  # after the run's end: each worker closes its Cache, writes its summary
_LOCK_TIMEOUT = 10.0
_ADMIN_TIMEOUT = 2.0
_EXAMPLES = 10

Target = Union[RedisServerProcess, RedisClusterProcesses]


class ChaosError(RuntimeError):
    """The harness itself failed (a worker died or hung, the DB failed): no verdict."""


@dataclass(frozen=True)
class ChaosConfig:
    """What one chaos run does. Plain values: it is sent to the worker processes.

    Parameters:
        seconds: length of the workload, quiet period included.
        quiet: the last seconds of the workload, without faults.
        seed: seeds the fault schedule and every worker's choices.
        workers: worker processes (each one ``Cache`` instance).
        keys: keys in the system of record.
        write_ratio: share of operations that are writes.
        set_share: share of writes made with ``set`` (variant B); the rest ``delete``.
        zipf_s: exponent of the key popularity (key ``i`` has weight ``1 / (i + 1) ** s``).
        op_interval: pause of a worker after each operation (keeps the CPU for others).
        faults: inject faults (``False``: the control run).
        fault_gap: ``(min, max)`` seconds between two faults.
        pause: ``(min, max)`` seconds of a pause.
        down: ``(min, max)`` seconds between a kill and the restart.
        cluster: run on a 3-master Redis Cluster (faults hit one master at a time).
        redis_url: use this server (or cluster, with ``cluster``) instead of starting
            one: no kill and no SIGSTOP then; pauses are ``CLIENT PAUSE``, and the
            ``CLIENT KILL`` faults also drop other clients of that server.
        namespace: the cache namespace (default: a fresh one per run).
        cache_options: keyword arguments for every ``Cache`` (``redis`` and
            ``namespace`` excepted), e.g. ``{"redis_timeout": 0.2}``.
        windows: the allowances W for which stale reads are counted.
        keep_logs: keep the directory of the DB and the operation logs (its path is
            in the report).
    """

    seconds: float = 30.0
    quiet: float = 5.0
    seed: int = 0
    workers: int = 3
    keys: int = 50
    write_ratio: float = 0.05
    set_share: float = 0.5
    zipf_s: float = 1.0
    op_interval: float = 0.002
    faults: bool = True
    fault_gap: tuple[float, float] = (0.3, 1.5)
    pause: tuple[float, float] = (0.2, 3.0)
    down: tuple[float, float] = (0.1, 1.0)
    cluster: bool = False
    redis_url: Optional[str] = None
    namespace: Optional[str] = None
    cache_options: Mapping[str, Any] = field(default_factory=dict)
    windows: tuple[float, ...] = WINDOWS
    keep_logs: bool = False

    def __post_init__(self) -> None:
        if self.seconds <= 0 or not 0 <= self.quiet <= self.seconds:
            raise ValueError("need seconds > 0 and 0 <= quiet <= seconds")
        if self.workers < 1 or self.keys < 1:
            raise ValueError("need at least one worker and one key")
        if not 0 <= self.write_ratio <= 1 or not 0 <= self.set_share <= 1:
            raise ValueError("write_ratio and set_share are fractions in [0, 1]")
        for name in ("fault_gap", "pause", "down"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be (min, max) with 0 < min <= max")
        if {"redis", "namespace"} & set(self.cache_options):
            raise ValueError("cache_options cannot set redis or namespace")


@dataclass(frozen=True)
class Operation:
    """One logged operation of a worker.

    ``kind`` is ``"read"`` (``get_or_set``), ``"delete"`` (DB update, then ``delete``) or
    ``"set"`` (DB update, then ``set``); ``version`` is the version the read returned or
    the write committed to the DB (``-1`` for a read that raised); ``error`` is the
    exception raised to the caller, if any.
    """

    kind: str
    worker: int
    key: str
    version: int
    start: float
    end: float
    error: Optional[str] = None


@dataclass(frozen=True)
class Fault:
    """One injected fault: ``kind``, the node it hit, and when it began and ended."""

    kind: str
    node: int
    start: float
    end: float


@dataclass(frozen=True)
class HistoryVerdict:
    """What :func:`check_history` found.

    ``stale[w]``: reads stale within allowance ``w``; ``stale_after[w]``: those of them
    that began after ``after`` (the end of the last fault); ``max_stale_age``: the
    longest a read lagged behind a completed write (0 if none did); ``examples``: a few
    of the stalest reads.
    """

    reads: int
    stale: dict[float, int]
    stale_after: dict[float, int]
    max_stale_age: float
    examples: list[dict[str, Any]]


def check_history(
    ops: Iterable[Operation], windows: Sequence[float] = WINDOWS, after: Optional[float] = None
) -> HistoryVerdict:
    """Judge a history: count the reads that returned an outdated version.

    A read of version ``v`` that began at ``s`` lags by ``s - e``, where ``e`` is the
    earliest end of a successful write of a version above ``v``; it is stale within W if
    it lags by more than W. A write still running when the read began cannot make it
    stale (its end is later), so overlapping reads may return either version.
    """
    writes: dict[str, list[tuple[int, float]]] = {}
    reads: list[Operation] = []
    for op in ops:
        if op.error is not None:
            continue
        if op.kind == "read":
            reads.append(op)
        else:
            writes.setdefault(op.key, []).append((op.version, op.end))
    # per key, by version: the earliest end among the writes of this version or a later one
    index: dict[str, tuple[list[int], list[float]]] = {}
    for key, done in writes.items():
        done.sort()
        versions = [v for v, _ in done]
        earliest = [e for _, e in done]
        for i in range(len(earliest) - 2, -1, -1):
            earliest[i] = min(earliest[i], earliest[i + 1])
        index[key] = (versions, earliest)
    stale = dict.fromkeys(windows, 0)
    stale_after = dict.fromkeys(windows, 0)
    lagging: list[tuple[float, Operation, int]] = []
    for read in reads:
        found = index.get(read.key)
        if found is None:
            continue
        versions, earliest = found
        i = bisect.bisect_right(versions, read.version)
        if i == len(versions):
            continue
        age = read.start - earliest[i]
        if age <= 0:
            continue
        lagging.append((age, read, versions[-1]))
        for w in windows:
            if age > w:
                stale[w] += 1
                if after is not None and read.start > after:
                    stale_after[w] += 1
    lagging.sort(key=lambda item: -item[0])
    examples = [
        {
            "key": read.key,
            "worker": read.worker,
            "read_version": read.version,
            "newest_version": newest,
            "lag_s": round(age, 4),
            "start": read.start,
        }
        for age, read, newest in lagging[:_EXAMPLES]
    ]
    return HistoryVerdict(
        reads=len(reads),
        stale=stale,
        stale_after=stale_after,
        max_stale_age=lagging[0][0] if lagging else 0.0,
        examples=examples,
    )


def _label(w: float) -> str:
    return f"{w * 1000:g}ms" if w < 1 else f"{w:g}s"


@dataclass
class ChaosReport:
    """The figures of one run (see :meth:`format`; :meth:`to_dict` for JSON).

    Rates are reads begun per second: ``read_rates`` has ``overall``, ``paused`` (reads
    begun while Redis, or one master, was paused), ``down`` (killed, not yet restarted)
    and ``no_fault`` (outside every fault). ``stale`` and ``stale_after_last_fault`` are
    keyed by the allowance's label (``"50ms"``, ``"1s"``, ``"5s"``), and so is
    ``consistent_within``, the fraction of reads not stale within that allowance.
    """

    config: dict[str, Any]
    mode: str
    duration: float
    ops: int
    reads: int
    writes: dict[str, int]
    faults: dict[str, int]
    fault_seconds: dict[str, float]
    read_rates: dict[str, float]
    stale: dict[str, int]
    stale_after_last_fault: dict[str, int]
    max_stale_age: float
    stale_examples: list[dict[str, Any]]
    final_stale_keys: list[dict[str, Any]]
    exceptions: int
    exceptions_by_type: dict[str, int]
    exception_examples: list[str]
    consistent_within: dict[str, float]
    writes_skipped: int
    worker_stats: list[dict[str, Any]]
    fault_timeline: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Every fault injected: ``kind``, ``node``, ``start`` and ``end`` (wall clock)."""
    log_dir: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return dataclasses.asdict(self)

    def consistent(self) -> bool:
        """The issue's hard goals: no final-state stale key, nothing stale within 1 s,
        no exception raised to a caller."""
        return (
            not self.final_stale_keys
            and self.stale.get(_label(1.0), 0) == 0
            and self.exceptions == 0
        )

    def format(self) -> str:
        """A human-readable summary."""
        c = self.config
        labels = list(self.stale)
        rates = self.read_rates
        no_fault = rates.get("no_fault") or 0.0

        def vs(rate: Optional[float]) -> str:
            if rate is None:
                return "-"
            ratio = f" ({rate / no_fault:.2f}x no-fault)" if no_fault else ""
            return f"{rate:.0f}{ratio}"

        fault_text = ", ".join(
            f"{kind} {n}"
            + (f" ({self.fault_seconds[kind]:.1f} s)" if self.fault_seconds.get(kind) else "")
            for kind, n in sorted(self.faults.items())
        )
        lines = [
            f"stratacache consistency under faults: {self.mode}, seed {c['seed']}, "
            f"{c['seconds']:g} s ({c['quiet']:g} s quiet), {c['workers']} workers, "
            f"{c['write_ratio'] * 100:g}% writes, {c['keys']} keys",
            f"  ops: {self.ops} in {self.duration:.1f} s; reads {self.reads}, writes "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.writes.items()))
            + (f", {self.writes_skipped} skipped (lock timeout)" if self.writes_skipped else ""),
            f"  faults: {sum(self.faults.values())}" + (f": {fault_text}" if fault_text else ""),
            f"  reads/s: overall {rates.get('overall', 0.0):.0f}, paused {vs(rates.get('paused'))}"
            f", down {vs(rates.get('down'))}, no fault {no_fault:.0f}",
            f"  stale reads (W = {' / '.join(labels)}): "
            + " / ".join(str(self.stale[w]) for w in labels)
            + "; after the last fault: "
            + " / ".join(str(self.stale_after_last_fault[w]) for w in labels),
            f"  longest lag behind a completed write: {self.max_stale_age:.3f} s",
            f"  final-state stale keys: {len(self.final_stale_keys)}"
            + "".join(
                f"\n    {s['key']}: cache {s['cached']}, db {s['db']}"
                for s in self.final_stale_keys
            ),
            f"  exceptions raised to callers: {self.exceptions}"
            + "".join(f"\n    {e}" for e in self.exception_examples[:5]),
            "  consistent: "
            + ", ".join(
                f"within {w} {self.consistent_within[w] * 100:.3f} %"
                for w in labels
                if w in ("50ms", "1s")
            ),
        ]
        if self.log_dir:
            lines.append(f"  logs: {self.log_dir}")
        return "\n".join(lines)


# -- the worker (a spawned process) ---------------------------------------------------


def _zipf_cum_weights(n: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (i + 1) ** s for i in range(n)))


def _key(i: int) -> str:
    return f"item:{i}"


def _clean(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ")[:300]


def _worker(
    index: int,
    config: ChaosConfig,
    url: str,
    namespace: str,
    workdir: str,
    locks: Sequence[Any],
    ready: Any,
    go: Any,
    stop_at: Any,
) -> None:  # pragma: no cover - runs in a spawned process
    """One instance: operations until ``stop_at``; the log and a summary go to ``workdir``."""
    from stratacache import MISSING, Cache

    summary: dict[str, Any] = {"index": index, "stats": None, "failure": None, "skipped": 0}
    rng = random.Random(f"{config.seed}:worker:{index}")
    cum = _zipf_cum_weights(config.keys, config.zipf_s)
    population = range(config.keys)
    db = sqlite3.connect(Path(workdir) / "record.db", timeout=30.0, isolation_level=None)
    cache: Any = None
    try:
        cache = Cache(
            url, namespace=namespace, cluster=config.cluster, **dict(config.cache_options)
        )
        cache.get("chaos-warmup", MISSING)  # starts the bus
        deadline = time.monotonic() + 10.0
        while cache.stats().bus_state not in ("healthy", "off") and time.monotonic() < deadline:
            time.sleep(0.01)
        ready.set()
        if not go.wait(_READY_TIMEOUT):
            return
        with open(Path(workdir) / f"worker-{index}.log", "w", encoding="utf-8") as log:
            while time.time() < stop_at.value:
                i = rng.choices(population, cum_weights=cum)[0]
                key = _key(i)
                if rng.random() < config.write_ratio:
                    kind = "set" if rng.random() < config.set_share else "delete"
                    if not locks[i].acquire(timeout=_LOCK_TIMEOUT):
                        summary["skipped"] += 1
                        continue
                    try:
                        start = time.time()
                        db.execute("BEGIN IMMEDIATE")
                        try:
                            db.execute("UPDATE kv SET version = version + 1 WHERE key = ?", (key,))
                            row = db.execute("SELECT version FROM kv WHERE key = ?", (key,))
                            version = int(row.fetchone()[0])
                            db.execute("COMMIT")
                        except BaseException:
                            db.execute("ROLLBACK")
                            raise
                        error = None
                        try:
                            if kind == "set":
                                cache.set(key, version)
                            else:
                                cache.delete(key)
                        except Exception as exc:
                            error = _clean(f"{kind}: {type(exc).__name__}: {exc}")
                        end = time.time()
                    finally:
                        locks[i].release()
                else:
                    kind = "read"

                    def load(key: str = key) -> int:
                        row = db.execute("SELECT version FROM kv WHERE key = ?", (key,))
                        return int(row.fetchone()[0])

                    start = time.time()
                    error = None
                    try:
                        value = cache.get_or_set(key, load)
                    except Exception as exc:
                        error = _clean(f"get_or_set: {type(exc).__name__}: {exc}")
                    end = time.time()
                    if error is None and type(value) is not int:
                        error = _clean(f"get_or_set: returned {value!r}, not a version")
                    version = value if error is None else -1
                log.write(f"{kind}\t{key}\t{version}\t{start:.6f}\t{end:.6f}\t{error or ''}\n")
                time.sleep(config.op_interval)
        summary["stats"] = cache.stats().to_dict()
    except BaseException:
        summary["failure"] = traceback.format_exc()
        raise
    finally:
        try:
            if cache is not None:
                cache.close()
        finally:
            db.close()
            tmp = Path(workdir) / f"worker-{index}.json.tmp"
            tmp.write_text(json.dumps(summary, default=str), encoding="utf-8")
            tmp.replace(Path(workdir) / f"worker-{index}.json")


# -- the parent: system of record, fault injection, verdict ----------------------------


def _make_record(path: Path, keys: int) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        db.executemany("INSERT INTO kv VALUES (?, 0)", [(_key(i),) for i in range(keys)])
    finally:
        db.close()


def _read_record(path: Path) -> dict[str, int]:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        return {k: int(v) for k, v in db.execute("SELECT key, version FROM kv")}
    finally:
        db.close()


class _Injector:
    """Faults on a started server or cluster (or on any server through commands only)."""

    def __init__(self, config: ChaosConfig, target: Optional[Target], url: str) -> None:
        self.config = config
        self.target = target
        self.url = url
        self.rng = random.Random(f"{config.seed}:faults")
        self.faults: list[Fault] = []

    def _nodes(self) -> list[tuple[str, int]]:
        if isinstance(self.target, RedisClusterProcesses):
            return self.target.startup_nodes
        if isinstance(self.target, RedisServerProcess):
            return [(self.target.host, self.target.port)]
        if self.config.cluster:
            rc = RedisCluster.from_url(self.url, socket_timeout=_ADMIN_TIMEOUT)
            try:
                primaries = rc.get_primaries()  # type: ignore[no-untyped-call]
                return [(n.host, int(n.port)) for n in primaries]
            finally:
                rc.close()
        client = redis.Redis.from_url(self.url)
        kwargs = client.connection_pool.connection_kwargs
        client.close()
        return [(str(kwargs.get("host", "127.0.0.1")), int(kwargs.get("port", 6379)))]

    def _process(self, node: int) -> Optional[RedisServerProcess]:
        if isinstance(self.target, RedisClusterProcesses):
            return self.target.nodes[node]
        if isinstance(self.target, RedisServerProcess):
            return self.target
        return None

    @contextlib.contextmanager
    def _admin(self, host: str, port: int) -> Iterator[redis.Redis]:
        client = redis.Redis(
            host=host, port=port, socket_timeout=_ADMIN_TIMEOUT, socket_connect_timeout=1.0
        )
        try:
            yield client
        finally:
            client.close()

    def run(self, until: float) -> list[Fault]:
        """Inject faults, one at a time, until the wall clock reaches ``until``."""
        nodes = self._nodes()
        kinds = ["pause", "kill", "client-kill-normal", "client-kill-pubsub"]
        weights = [4, 2, 2, 2]
        rng = self.rng
        while True:
            gap = rng.uniform(*self.config.fault_gap)
            kind = rng.choices(kinds, weights)[0]
            node = rng.randrange(len(nodes))
            length = rng.uniform(*(self.config.down if kind == "kill" else self.config.pause))
            if time.time() + gap >= until:
                break
            time.sleep(gap)
            # a fault never reaches into the quiet period: it is cut short or not started
            length = min(length, until - time.time())
            if kind in ("pause", "kill") and length < 0.05:
                break
            try:
                self._inject(kind, node, nodes[node], length)
            except (redis.RedisError, OSError) as exc:
                logger.warning("chaos: %s on node %d failed: %s", kind, node, exc)
        return self.faults

    def _inject(self, kind: str, node: int, addr: tuple[str, int], length: float) -> None:
        process = self._process(node)
        start = time.time()
        if kind == "pause" and process is not None:
            process.pause()
            try:
                time.sleep(length)
            finally:
                process.resume()
        elif kind == "pause":
            kind = "client-pause"
            with self._admin(*addr) as admin:
                admin.client_pause(max(1, int(length * 1000)), all=True)
            time.sleep(length)
        elif kind == "kill":
            if process is None:
                return  # not ours to kill
            process.kill()
            try:
                time.sleep(length)
            finally:
                process.restart()
        else:
            with self._admin(*addr) as admin:
                admin.client_kill_filter(_type=kind.rsplit("-", 1)[1], skipme=True)
        self.faults.append(Fault(kind, node, start, time.time()))

    def heal(self) -> None:
        """Leave every node running and answering (after an interrupted fault)."""
        if isinstance(self.target, RedisClusterProcesses):
            for node in self.target.nodes:
                _heal_node(node)
            self.target.wait_ok()
        elif isinstance(self.target, RedisServerProcess):
            _heal_node(self.target)


def _heal_node(node: RedisServerProcess) -> None:
    if not node.running:
        node.restart()
    else:
        with contextlib.suppress(Exception):
            node.resume()


def _read_log(path: Path, worker: int) -> list[Operation]:
    ops: list[Operation] = []
    if not path.exists():
        return ops
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # the worker died mid-line
            kind, key, version, start, end, error = line.rstrip("\n").split("\t", 5)
            ops.append(
                Operation(kind, worker, key, int(version), float(start), float(end), error or None)
            )
    return ops


def _final_state(
    url: str, config: ChaosConfig, namespace: str, record: dict[str, int]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every key read by a fresh instance: a value other than the DB's is stale."""
    from stratacache import MISSING, Cache

    stale: list[dict[str, Any]] = []
    errors: list[str] = []
    cache = Cache(url, namespace=namespace, cluster=config.cluster, **dict(config.cache_options))
    try:
        for key, version in sorted(record.items()):
            try:
                value = cache.get(key, MISSING)
            except Exception as exc:
                errors.append(_clean(f"final get: {type(exc).__name__}: {exc}"))
                continue
            if value is not MISSING and value != version:
                stale.append({"key": key, "cached": value, "db": version})
    finally:
        cache.close()
    return stale, errors


def _rate(reads: Sequence[Operation], windows: Sequence[tuple[float, float]]) -> Optional[float]:
    """Reads begun inside the windows, per second of window (None: no window)."""
    total = sum(end - start for start, end in windows)
    if total <= 0:
        return None
    starts = sorted(r.start for r in reads)
    n = sum(
        bisect.bisect_left(starts, end) - bisect.bisect_left(starts, start)
        for start, end in windows
    )
    return n / total


def _complement(
    windows: Sequence[tuple[float, float]], begin: float, end: float
) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    at = begin
    for start, stop in sorted(windows):
        if start > at:
            out.append((at, min(start, end)))
        at = max(at, stop)
    if at < end:
        out.append((at, end))
    return [(a, b) for a, b in out if b > a]


@contextlib.contextmanager
def _servers(config: ChaosConfig, target: Optional[Target]) -> Iterator[Optional[Target]]:
    if target is not None or config.redis_url is not None:
        yield target
        return
    started: Target = RedisClusterProcesses(3) if config.cluster else RedisServerProcess()
    with started:
        yield started


def run_chaos(config: ChaosConfig, target: Optional[Target] = None) -> ChaosReport:
    """Run the workload with faults (unless ``config.faults`` is false) and judge it.

    ``target``: a started :class:`RedisServerProcess` or :class:`RedisClusterProcesses`
    to run against (it is paused, killed and restarted). Without it, the run starts its
    own (``config.cluster`` picks which), or uses ``config.redis_url``. Raises
    :class:`ChaosError` if the harness fails (a worker dies or hangs).
    """
    if target is not None and isinstance(target, RedisClusterProcesses) != config.cluster:
        raise ValueError("config.cluster must say whether target is a cluster")
    workdir = Path(tempfile.mkdtemp(prefix="stratacache-chaos-"))
    try:
        with _servers(config, target) as servers:
            url = servers.url if servers is not None else config.redis_url
            assert url is not None
            report = _run(config, servers, url, workdir)
    except BaseException:
        if config.keep_logs:
            logger.warning("chaos: logs kept in %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    if config.keep_logs:
        report.log_dir = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def _run(config: ChaosConfig, target: Optional[Target], url: str, workdir: Path) -> ChaosReport:
    namespace = config.namespace or f"chaos-{config.seed}-{secrets.token_hex(3)}"
    _make_record(workdir / "record.db", config.keys)
    ctx = multiprocessing.get_context("spawn")
    locks = [ctx.Lock() for _ in range(config.keys)]
    ready = [ctx.Event() for _ in range(config.workers)]
    go = ctx.Event()
    stop_at = ctx.Value("d", 0.0, lock=False)
    procs = [
        ctx.Process(
            target=_worker,
            args=(i, config, url, namespace, str(workdir), locks, ready[i], go, stop_at),
            name=f"chaos-worker-{i}",
            daemon=True,
        )
        for i in range(config.workers)
    ]
    injector = _Injector(config, target, url)
    failures: list[str] = []
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + _READY_TIMEOUT
        for i, event in enumerate(ready):
            while not event.wait(0.1):
                if not procs[i].is_alive() or time.monotonic() > deadline:
                    raise ChaosError(f"worker {i} did not start (exit code {procs[i].exitcode})")
        began = time.time()
        stop_at.value = began + config.seconds
        go.set()
        try:
            if config.faults:
                injector.run(until=began + config.seconds - config.quiet)
        finally:
            injector.heal()
        for p in procs:
            p.join(max(0.0, stop_at.value + _JOIN_GRACE - time.time()))
            if p.is_alive():
                failures.append(f"{p.name} hung")
        ended = time.time()
    finally:
        # on a harness failure: stop the workers now rather than at the planned end
        stop_at.value = min(stop_at.value or time.time(), time.time())
        go.set()
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
    summaries = []
    for i in range(config.workers):
        path = workdir / f"worker-{i}.json"
        if not path.exists():
            failures.append(f"worker {i} left no summary (exit code {procs[i].exitcode})")
            continue
        summary = json.loads(path.read_text(encoding="utf-8"))
        if summary["failure"]:
            failures.append(f"worker {i} failed:\n{summary['failure']}")
        summaries.append(summary)
    if failures:
        raise ChaosError("\n".join(failures))
    record = _read_record(workdir / "record.db")
    final_stale, final_errors = _final_state(url, config, namespace, record)
    ops = [op for i in range(config.workers) for op in _read_log(workdir / f"worker-{i}.log", i)]
    return _report(config, target, began, ended, ops, injector.faults, final_stale, final_errors,
                   summaries)  # fmt: skip


def _report(
    config: ChaosConfig,
    target: Optional[Target],
    began: float,
    ended: float,
    ops: list[Operation],
    faults: list[Fault],
    final_stale: list[dict[str, Any]],
    final_errors: list[str],
    summaries: list[dict[str, Any]],
) -> ChaosReport:
    last_fault = max((f.end for f in faults), default=None)
    verdict = check_history(ops, config.windows, after=last_fault)
    reads = [op for op in ops if op.kind == "read" and op.error is None]
    end_of_load = began + config.seconds
    paused = [(f.start, f.end) for f in faults if f.kind in ("pause", "client-pause")]
    down = [(f.start, f.end) for f in faults if f.kind == "kill"]
    rates: dict[str, float] = {"overall": len(reads) / config.seconds}
    for name, windows in (
        ("paused", paused),
        ("down", down),
        ("no_fault", _complement(paused + down, began, end_of_load)),
    ):
        rate = _rate(reads, windows)
        if rate is not None:
            rates[name] = rate
    errors = [op.error for op in ops if op.error is not None] + final_errors
    by_type = Counter(e.split(":", 2)[1].strip() if e.count(":") >= 2 else e for e in errors)
    fault_seconds: dict[str, float] = {}
    for f in faults:
        if f.kind in ("pause", "client-pause", "kill"):
            fault_seconds[f.kind] = fault_seconds.get(f.kind, 0.0) + f.end - f.start
    if config.redis_url is not None:
        mode = f"{'cluster' if config.cluster else 'standalone'} at {config.redis_url}"
    else:
        mode = "cluster (3 masters)" if config.cluster else "standalone"
    n_reads = verdict.reads
    return ChaosReport(
        config={
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(config).items()
        },
        mode=mode,
        duration=ended - began,
        ops=len(ops),
        reads=n_reads,
        writes=dict(Counter(op.kind for op in ops if op.kind != "read")),
        faults=dict(Counter(f.kind for f in faults)),
        fault_timeline=[dataclasses.asdict(f) for f in faults],
        fault_seconds=fault_seconds,
        read_rates=rates,
        stale={_label(w): n for w, n in verdict.stale.items()},
        stale_after_last_fault={_label(w): n for w, n in verdict.stale_after.items()},
        max_stale_age=verdict.max_stale_age,
        stale_examples=verdict.examples,
        final_stale_keys=final_stale,
        exceptions=len(errors),
        exceptions_by_type=dict(by_type),
        exception_examples=errors[:_EXAMPLES],
        consistent_within={
            _label(w): (1.0 - n / n_reads if n_reads else 1.0) for w, n in verdict.stale.items()
        },
        writes_skipped=sum(s["skipped"] for s in summaries),
        worker_stats=[s["stats"] for s in summaries],
    )
