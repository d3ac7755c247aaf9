"""Prometheus metrics of stratacache caches (``pip install stratacache[prometheus]``).

One process::

    import prometheus_client
    import stratacache.prometheus

    stratacache.prometheus.register(cache)      # the default registry
    prometheus_client.start_http_server(9100)   # or your framework's /metrics

A collector reads every registered cache's ``stats()`` when Prometheus scrapes: nothing
is added to the cache's hot path. Every metric carries the cache's ``namespace`` label.
The names of the invalidation seed (``cache_invalidation_*``, ``cache_invalidations_total``)
and the cache's own (``stratacache_*``) are listed in docs/operations/metrics.md; the
latencies are histograms with fixed buckets, so they aggregate across pods.

Several processes (gunicorn and other pre-fork servers): prometheus-client's
multiprocess mode reads its own files only and never runs custom collectors. Each worker
therefore calls :func:`export_to_multiprocess_dir`, a daemon thread that writes its
caches' snapshot into ``PROMETHEUS_MULTIPROC_DIR`` every ``interval`` seconds, and the
process serving ``/metrics`` adds :class:`MultiProcessCollector` beside
prometheus-client's own: it sums the workers' counters and histograms (those of exited
workers included, so counters never go backwards) and combines the live workers' gauges.
Gunicorn's ``child_exit`` hook calls :func:`mark_process_dead` as it does
prometheus-client's.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Optional, Union

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from ._async.cache import AsyncCache
from ._invalidation import INVALIDATION_TYPES
from ._stats import CacheStats, Histogram
from ._sync.cache import Cache

__all__ = [
    "METRICS",
    "MultiProcessCollector",
    "StratacacheCollector",
    "export_to_multiprocess_dir",
    "mark_process_dead",
    "register",
    "unregister",
]

logger = logging.getLogger("stratacache.prometheus")

AnyCache = Union[Cache, AsyncCache]
# one sample: label values (after ``namespace``) and a number or a Histogram
_Sample = tuple[tuple[str, ...], Union[float, Histogram]]


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric: its name, type, help text, labels (``namespace`` first,
    implied) and how its samples are read from a :class:`~stratacache.CacheStats`.

    ``combine`` says how several processes' values of a gauge make one: ``sum``,
    ``max`` or ``min`` (counters and histograms are always summed)."""

    name: str
    type: str
    help: str
    labels: tuple[str, ...]
    read: Callable[[CacheStats], list[_Sample]]
    combine: str = "sum"


def _one(
    read: Callable[[CacheStats], Union[float, Histogram]],
) -> Callable[[CacheStats], list[_Sample]]:
    return lambda s: [((), read(s))]


def _bus(read: Callable[[CacheStats], Any]) -> Callable[[CacheStats], list[_Sample]]:
    """Bus metrics are absent while the cache has no bus."""
    return lambda s: [] if s.bus_state == "off" else [((), read(s))]


def _breakers(read: Callable[[str, int], float]) -> Callable[[CacheStats], list[_Sample]]:
    def samples(s: CacheStats) -> list[_Sample]:
        out: list[_Sample] = [(("primary",), read(s.breaker_state, s.breaker_opened))]
        if s.failover_breaker_state != "off":
            out.append((("failover",), read(s.failover_breaker_state, s.failover_breaker_opened)))
        return out

    return samples


def _inv(read: Callable[[Any], list[_Sample]]) -> Callable[[CacheStats], list[_Sample]]:
    return lambda s: [] if s.invalidation is None else read(s.invalidation)


METRICS: tuple[MetricSpec, ...] = (
    # -- the invalidation seed's names ----------------------------------------------------
    MetricSpec(
        "cache_invalidation_duration_seconds",
        "histogram",
        "Time an invalidation took, by method and result (failed: a Redis step of it "
        "waits in the outbox)",
        ("method", "result"),
        _inv(
            lambda i: [
                ((method, result), h)
                for method, by in sorted(i.durations.items())
                for result, h in sorted(by.items())
            ]
        ),
    ),
    MetricSpec(
        "cache_invalidation_failures_total",
        "counter",
        "Failed invalidation tries, by error type (transient: kept in the outbox; "
        "refused: a dead letter) and Redis",
        ("error_type", "redis"),
        _inv(
            lambda i: [
                ((kind, redis), n)
                for kind, by in sorted(i.failures_by_type.items())
                for redis, n in sorted(by.items())
            ]
        ),
    ),
    MetricSpec(
        "cache_invalidation_cascade_depth",
        "histogram",
        "Depth of dependency cascades, by what set them off",
        ("trigger_type",),
        _inv(lambda i: [((t,), h) for t, h in sorted(i.cascade_depths.items())]),
    ),
    MetricSpec(
        "cache_invalidation_queue_size",
        "gauge",
        "Invalidations waiting: the outbox plus scheduled (delayed) ones",
        (),
        _inv(lambda i: [((), i.queue_size)]),
    ),
    MetricSpec(
        "cache_invalidations_total",
        "counter",
        "Invalidations by type (rate() of it is cache_invalidations_per_second)",
        ("type",),
        _inv(lambda i: [((t,), i.invalidations.get(t, 0)) for t in INVALIDATION_TYPES]),
    ),
    # -- the read path ----------------------------------------------------------------------
    MetricSpec(
        "stratacache_hits_total",
        "counter",
        "Reads served by a tier",
        ("tier",),
        lambda s: [(("l1",), s.l1_hits), (("l2",), s.l2_hits)],
    ),
    MetricSpec(
        "stratacache_misses_total",
        "counter",
        "Reads a tier could not serve",
        ("tier",),
        lambda s: [(("l1",), s.l1_misses), (("l2",), s.l2_misses)],
    ),
    MetricSpec("stratacache_loads_total", "counter", "Loader calls", (), _one(lambda s: s.loads)),
    MetricSpec(
        "stratacache_coalesced_total",
        "counter",
        "Reads that waited for another caller's load in this process",
        (),
        _one(lambda s: s.coalesced),
    ),
    MetricSpec(
        "stratacache_lease_waits_total",
        "counter",
        "Reads that waited for another process's lease",
        (),
        _one(lambda s: s.lease_waits),
    ),
    MetricSpec(
        "stratacache_fills_refused_total",
        "counter",
        "Loaded values not cached because an invalidation raced the load",
        (),
        _one(lambda s: s.fills_refused),
    ),
    MetricSpec(
        "stratacache_bloom_rejected_total",
        "counter",
        "Reads a Bloom filter guard answered without Redis or the loader (absent ids)",
        (),
        _one(lambda s: s.bloom_rejected),
    ),
    MetricSpec(
        "stratacache_stale_served_total",
        "counter",
        "Stale values served by fail-safe",
        (),
        _one(lambda s: s.stale_served),
    ),
    MetricSpec(
        "stratacache_decode_errors_total",
        "counter",
        "L2 entries that could not be decoded (served as misses)",
        (),
        _one(lambda s: s.decode_errors),
    ),
    MetricSpec(
        "stratacache_redis_errors_total",
        "counter",
        "Redis calls that failed or timed out",
        (),
        _one(lambda s: s.errors),
    ),
    MetricSpec("stratacache_l1_entries", "gauge", "Entries in L1", (), _one(lambda s: s.l1_size)),
    MetricSpec(
        "stratacache_l1_evictions_total",
        "counter",
        "L1 entries evicted for room",
        (),
        _one(lambda s: s.l1_evictions),
    ),
    MetricSpec(
        "stratacache_breaker_open",
        "gauge",
        "1 while a Redis's circuit breaker is open or half-open, else 0",
        ("redis",),
        _breakers(lambda state, _: 0.0 if state == "closed" else 1.0),
        combine="max",
    ),
    MetricSpec(
        "stratacache_breaker_openings_total",
        "counter",
        "Times a Redis's circuit breaker opened",
        ("redis",),
        _breakers(lambda _, opened: opened),
    ),
    # -- the loader's time limits and circuit breaker (docs/loader.md) ---------------------
    MetricSpec(
        "stratacache_loader_timeouts_total",
        "counter",
        "Callers that stopped waiting for the loader (soft: given the fail-safe value while "
        "the load goes on; hard: given the fail-safe value or LoaderTimeout)",
        ("kind",),
        lambda s: [(("soft",), s.loader_soft_timeouts), (("hard",), s.loader_hard_timeouts)],
    ),
    MetricSpec(
        "stratacache_loader_background_loads",
        "gauge",
        "Loads under a time limit running now (including those no caller waits for)",
        (),
        _one(lambda s: s.loader_background_loads),
    ),
    MetricSpec(
        "stratacache_loader_rejected_total",
        "counter",
        "Loads the loader's open circuit breaker kept from the loader",
        (),
        _one(lambda s: s.loader_rejected),
    ),
    MetricSpec(
        "stratacache_loader_breaker_open",
        "gauge",
        "1 while the loader's circuit breaker is open or half-open, else 0 (absent without one)",
        (),
        lambda s: (
            []
            if s.loader_breaker_state == "off"
            else [((), 0.0 if s.loader_breaker_state == "closed" else 1.0)]
        ),
        combine="max",
    ),
    MetricSpec(
        "stratacache_loader_breaker_openings_total",
        "counter",
        "Times the loader's circuit breaker opened (absent without one)",
        (),
        lambda s: [] if s.loader_breaker_state == "off" else [((), s.loader_breaker_opened)],
    ),
    MetricSpec(
        "stratacache_l2_latency_seconds",
        "histogram",
        "Duration of L2 (Redis) calls",
        (),
        _one(lambda s: s.l2_latency.histogram),
    ),
    MetricSpec(
        "stratacache_load_duration_seconds",
        "histogram",
        "Duration of loader calls",
        (),
        _one(lambda s: s.load_latency.histogram),
    ),
    # -- the bus -------------------------------------------------------------------------------
    MetricSpec(
        "stratacache_bus_healthy",
        "gauge",
        "1 while the invalidation bus is healthy, else 0 (absent without a bus)",
        (),
        _bus(lambda s: 1.0 if s.bus_state == "healthy" else 0.0),
        combine="min",
    ),
    MetricSpec(
        "stratacache_bus_messages_sent_total",
        "counter",
        "Bus messages published",
        (),
        _bus(lambda s: s.bus_messages_sent),
    ),
    MetricSpec(
        "stratacache_bus_messages_received_total",
        "counter",
        "Bus messages received from other instances",
        (),
        _bus(lambda s: s.bus_messages_received),
    ),
    MetricSpec(
        "stratacache_bus_messages_dropped_total",
        "counter",
        "Bus messages dropped: undecodable, unsigned or forged, or replayed",
        (),
        _bus(lambda s: s.bus_messages_dropped),
    ),
    MetricSpec(
        "stratacache_bus_messages_forged_total",
        "counter",
        "Bus messages dropped because their signature was missing or wrong (with bus_secret)",
        (),
        _bus(lambda s: s.bus_messages_forged),
    ),
    MetricSpec(
        "stratacache_bus_flushes_total",
        "counter",
        "L1 flushes by cause (subscribe: a new subscription; gap: a lost message; "
        "heartbeat: the bus went silent)",
        ("cause",),
        lambda s: (
            []
            if s.bus_state == "off"
            else [
                (("subscribe",), s.bus_flushes_subscribe),
                (("gap",), s.bus_flushes_gap),
                (("heartbeat",), s.bus_flushes_heartbeat),
            ]
        ),
    ),
    MetricSpec(
        "stratacache_bus_lag_seconds",
        "histogram",
        "Delay from publishing a bus message to receiving it",
        (),
        _bus(lambda s: s.bus_lag.histogram),
    ),
    MetricSpec(
        "stratacache_bus_unhealthy_seconds_total",
        "counter",
        "Time the bus spent unhealthy",
        (),
        _bus(lambda s: s.bus_unhealthy_seconds),
    ),
    MetricSpec(
        "stratacache_bus_reconnects_total",
        "counter",
        "Bus subscriptions made again after losing one",
        (),
        _bus(lambda s: s.bus_reconnects),
    ),
    # -- the outbox ------------------------------------------------------------------------------
    MetricSpec(
        "stratacache_outbox_pending",
        "gauge",
        "Writes and invalidations accepted but not yet applied to Redis",
        (),
        _inv(lambda i: [((), i.outbox_pending)]),
    ),
    MetricSpec(
        "stratacache_outbox_applied_total",
        "counter",
        "Pending operations applied after their first try failed",
        (),
        _inv(lambda i: [((), i.outbox_applied)]),
    ),
    MetricSpec(
        "stratacache_dead_letters",
        "gauge",
        "Operations Redis refused for good, kept for inspection and replay",
        (),
        _inv(lambda i: [((), i.dead_letters)]),
    ),
    MetricSpec(
        "stratacache_epoch_bumps_total",
        "counter",
        "Namespace epoch bumps applied",
        (),
        _inv(lambda i: [((), i.epoch_bumps)]),
    ),
)
"""Every metric exported, in exposition order."""

# a snapshot of one cache: metric name -> [(label values, number or Histogram)]
Snapshot = dict[str, list[_Sample]]


def snapshot(stats: CacheStats) -> Snapshot:
    """The samples of every metric for one cache's ``stats``."""
    return {spec.name: spec.read(stats) for spec in METRICS}


def _families(snapshots: Iterable[tuple[str, Snapshot]]) -> Iterator[Metric]:
    """Metric families over ``(namespace, snapshot)`` pairs."""
    pairs = list(snapshots)
    for spec in METRICS:
        labels = ["namespace", *spec.labels]
        family: Union[CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily]
        if spec.type == "counter":
            family = CounterMetricFamily(spec.name, spec.help, labels=labels)
        elif spec.type == "gauge":
            family = GaugeMetricFamily(spec.name, spec.help, labels=labels)
        else:
            family = HistogramMetricFamily(spec.name, spec.help, labels=labels)
        for namespace, snap in pairs:
            for values, value in snap.get(spec.name, ()):
                labelvalues = [namespace, *values]
                if isinstance(family, HistogramMetricFamily):
                    assert isinstance(value, Histogram)
                    buckets = [
                        (_le(bound), float(n)) for bound, n in zip(value.bounds, value.counts)
                    ]
                    buckets.append(("+Inf", float(value.count)))
                    family.add_metric(labelvalues, buckets, value.sum)
                else:
                    assert not isinstance(value, Histogram)
                    family.add_metric(labelvalues, float(value))
        yield family


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it (``1.0``, ``0.005``, ``10.0``)."""
    return repr(float(bound))


class StratacacheCollector(Collector):
    """A prometheus-client collector over registered caches (see :func:`register`).

    Caches are held weakly: one that is garbage collected drops out of the scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._caches: dict[str, weakref.ref[Any]] = {}  # namespace -> cache

    def add(self, cache: AnyCache) -> None:
        """Collect ``cache`` too (``ValueError`` if it, or a cache of its namespace, is
        collected already: their series would clash)."""
        namespace = _namespace_of(cache)
        with self._lock:
            ref = self._caches.get(namespace)
            current = None if ref is None else ref()
            if current is cache:
                raise ValueError(f"cache {namespace!r} is registered already")
            if current is not None:
                raise ValueError(
                    f"another cache of namespace {namespace!r} is registered already: "
                    "the two would export the same series"
                )
            self._caches[namespace] = weakref.ref(cache)

    def remove(self, cache: AnyCache) -> None:
        """Stop collecting ``cache`` (``KeyError`` if it is not collected)."""
        namespace = _namespace_of(cache)
        with self._lock:
            ref = self._caches.get(namespace)
            if ref is None or ref() is not cache:
                raise KeyError(f"cache {namespace!r} is not registered")
            del self._caches[namespace]

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for ref in self._caches.values() if ref() is not None)

    def snapshots(self) -> list[tuple[str, Snapshot]]:
        """The current snapshot of every live registered cache, by namespace."""
        with self._lock:
            caches = [(ns, ref()) for ns, ref in self._caches.items()]
        out = []
        for namespace, cache in sorted(caches, key=lambda pair: pair[0]):
            if cache is not None:
                out.append((namespace, snapshot(cache.stats())))
        return out

    def describe(self) -> list[Metric]:
        """The metric families without samples (the registry checks names at once)."""
        return list(_families(()))

    def collect(self) -> Iterator[Metric]:
        """The metric families with every registered cache's samples."""
        return _families(self.snapshots())


_registered: dict[int, tuple[CollectorRegistry, StratacacheCollector]] = {}
_registered_lock = threading.Lock()


def _namespace_of(cache: AnyCache) -> str:
    if not isinstance(cache, (Cache, AsyncCache)):
        raise TypeError(f"expected a Cache or AsyncCache, not {type(cache).__name__}")
    return cache.settings.namespace


def _collector_for(registry: CollectorRegistry, create: bool) -> Optional[StratacacheCollector]:
    entry = _registered.get(id(registry))
    if entry is not None:
        return entry[1]
    if not create:
        return None
    collector = StratacacheCollector()
    registry.register(collector)
    _registered[id(registry)] = (registry, collector)
    return collector


def register(cache: AnyCache, registry: Optional[CollectorRegistry] = None) -> None:
    """Export ``cache``'s metrics from ``registry`` (prometheus-client's default one if
    ``None``). Several caches may be registered, one per namespace; registering a cache
    twice raises ``ValueError``."""
    registry = REGISTRY if registry is None else registry
    _namespace_of(cache)
    with _registered_lock:
        collector = _collector_for(registry, create=True)
        assert collector is not None
        collector.add(cache)


def unregister(cache: AnyCache, registry: Optional[CollectorRegistry] = None) -> None:
    """Stop exporting ``cache``'s metrics from ``registry`` (``KeyError`` if it is not
    registered there)."""
    registry = REGISTRY if registry is None else registry
    with _registered_lock:
        collector = _collector_for(registry, create=False)
        if collector is None:
            raise KeyError(f"cache {_namespace_of(cache)!r} is not registered")
        collector.remove(cache)
        if not len(collector):
            registry.unregister(collector)
            del _registered[id(registry)]


# -- several processes -------------------------------------------------------------------

_FILE_PREFIX = "stratacache_"
_DEAD_SUFFIX = ".dead"


def _multiproc_dir(path: Optional[str]) -> str:
    path = path or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        raise ValueError("no directory given and PROMETHEUS_MULTIPROC_DIR is not set")
    if not os.path.isdir(path):
        raise ValueError(f"{path!r} is not a directory")
    return path


def _encode(snapshots: list[tuple[str, Snapshot]]) -> str:
    out: dict[str, dict[str, list[Any]]] = {}
    for namespace, snap in snapshots:
        metrics: dict[str, list[Any]] = {}
        for name, samples in snap.items():
            metrics[name] = [
                [list(values), [list(v.bounds), list(v.counts), v.sum]]
                if isinstance(v, Histogram)
                else [list(values), v]
                for values, v in samples
            ]
        out[namespace] = metrics
    return json.dumps(out, separators=(",", ":"))


def _decode(text: str) -> dict[str, Snapshot]:
    out: dict[str, Snapshot] = {}
    for namespace, metrics in json.loads(text).items():
        snap: Snapshot = {}
        for name, samples in metrics.items():
            snap[name] = [
                (
                    tuple(values),
                    Histogram(tuple(v[0]), tuple(v[1]), v[2]) if isinstance(v, list) else v,
                )
                for values, v in samples
            ]
        out[namespace] = snap
    return out


class _Exporter:
    """One worker's writer: its caches' snapshot into one file, every ``interval``."""

    def __init__(self, directory: str, interval: float) -> None:
        self.collector = StratacacheCollector()
        self.path = os.path.join(directory, f"{_FILE_PREFIX}{os.getpid()}.json")
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name="stratacache-prometheus-exporter", daemon=True
        )

    def write(self) -> None:
        """Write the snapshot now (atomically: a reader never sees half a file)."""
        tmp = f"{self.path}.{threading.get_ident()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(_encode(self.collector.snapshots()))
        os.replace(tmp, self.path)

    def _run(self) -> None:
        failing = False
        while True:
            try:
                self.write()
                failing = False
            except Exception as exc:  # a full disk must not kill the worker's metrics for good
                if not failing:
                    logger.warning("cannot write metrics to %s: %s", self.path, exc)
                failing = True
            if self.stop.wait(self.interval):
                return


_exporter: Optional[_Exporter] = None
_exporter_lock = threading.Lock()


def export_to_multiprocess_dir(
    cache: AnyCache, *, directory: Optional[str] = None, interval: float = 1.0
) -> None:
    """In a worker of a multi-process server: write ``cache``'s metrics into the
    multiprocess directory (``directory`` or ``PROMETHEUS_MULTIPROC_DIR``) every
    ``interval`` seconds, and once more at exit, for :class:`MultiProcessCollector` to
    serve. Call it after the fork (gunicorn's ``post_fork`` hook, or where the worker
    creates its cache); several caches of one worker share its thread and file."""
    global _exporter
    if not interval > 0:
        raise ValueError(f"interval must be > 0, got {interval!r}")
    path = _multiproc_dir(directory)
    with _exporter_lock:
        exporter = _exporter
        if exporter is not None and (
            not exporter.path.endswith(f"{_FILE_PREFIX}{os.getpid()}.json")
            or os.path.dirname(exporter.path) != path
        ):
            exporter = None  # inherited from the parent by fork, or another directory
        if exporter is None:
            exporter = _Exporter(path, interval)
            _exporter = exporter
            exporter.collector.add(cache)
            exporter.thread.start()
            atexit.register(_final_write, exporter)
        else:
            exporter.collector.add(cache)
            exporter.write()


def _final_write(exporter: _Exporter) -> None:
    exporter.stop.set()
    try:
        exporter.write()
    except Exception:  # pragma: no cover - at exit, nothing left to tell
        pass


def mark_process_dead(pid: int, directory: Optional[str] = None) -> None:
    """A worker exited: its gauges no longer count (its counters and histograms still
    do, so that totals never go backwards). Call it from gunicorn's ``child_exit`` hook
    beside ``prometheus_client.multiprocess.mark_process_dead``."""
    path = os.path.join(_multiproc_dir(directory), f"{_FILE_PREFIX}{pid}.json")
    if os.path.exists(path):
        # a later worker may get the same pid: each exit keeps a file of its own
        os.replace(path, f"{path}.{time.time_ns()}{_DEAD_SUFFIX}")


_COMBINE: dict[str, Callable[[Iterable[float]], float]] = {"sum": sum, "max": max, "min": min}
_SPECS = {spec.name: spec for spec in METRICS}


def _merge(
    files: list[tuple[bool, dict[str, Snapshot]]],
) -> list[tuple[str, Snapshot]]:
    """One snapshot per namespace from every worker's (``live``, snapshots)."""
    merged: dict[str, dict[str, dict[tuple[str, ...], list[Any]]]] = {}
    for live, by_namespace in files:
        for namespace, worker_snap in by_namespace.items():
            metrics = merged.setdefault(namespace, {})
            for name, worker_samples in worker_snap.items():
                spec = _SPECS.get(name)
                if spec is None or (spec.type == "gauge" and not live):
                    continue
                series = metrics.setdefault(name, {})
                for values, value in worker_samples:
                    series.setdefault(values, []).append(value)
    out = []
    for namespace in sorted(merged):
        snap: Snapshot = {}
        for name, series in merged[namespace].items():
            spec = _SPECS[name]
            samples: list[_Sample] = []
            for values, parts in series.items():
                if spec.type == "histogram":
                    samples.append((values, _add_histograms(parts)))
                elif spec.type == "gauge":
                    samples.append((values, _COMBINE[spec.combine](parts)))
                else:
                    samples.append((values, math.fsum(parts)))
            snap[name] = samples
        out.append((namespace, snap))
    return out


def _add_histograms(parts: list[Histogram]) -> Histogram:
    first = parts[0]
    counts = [0] * len(first.counts)
    total = 0.0
    for h in parts:
        if h.bounds != first.bounds:
            continue  # another version's buckets: not addable (never within one release)
        for i, n in enumerate(h.counts):
            counts[i] += n
        total += h.sum
    return Histogram(first.bounds, tuple(counts), total)


class MultiProcessCollector(Collector):
    """In the process serving ``/metrics`` for a multi-process server: the metrics of
    every worker that called :func:`export_to_multiprocess_dir`, combined (counters and
    histograms summed over all workers, exited ones included; gauges over live workers
    only: summed, or the max/min for the breaker and bus states)."""

    def __init__(
        self, registry: Optional[CollectorRegistry] = None, path: Optional[str] = None
    ) -> None:
        self._path = _multiproc_dir(path)
        if registry is not None:
            registry.register(self)

    def _read(self) -> list[tuple[bool, dict[str, Snapshot]]]:
        files = []
        for name in sorted(os.listdir(self._path)):
            if not name.startswith(_FILE_PREFIX):
                continue
            live = name.endswith(".json")
            if not (live or name.endswith(_DEAD_SUFFIX)):
                continue
            try:
                with open(os.path.join(self._path, name), encoding="utf-8") as f:
                    files.append((live, _decode(f.read())))
            except FileNotFoundError:
                continue  # marked dead between listing and reading: read next time
            except ValueError as exc:
                logger.warning("skipping unreadable metrics file %s: %s", name, exc)
        return files

    def describe(self) -> list[Metric]:
        """The metric families without samples."""
        return list(_families(()))

    def collect(self) -> Iterator[Metric]:
        """The combined metric families of every worker."""
        return _families(_merge(self._read()))
