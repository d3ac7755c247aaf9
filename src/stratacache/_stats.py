"""Counters, latency summaries and histograms of a cache, and the :class:`CacheStats`
snapshot.

A :class:`LatencyRecorder` keeps two views of the same durations: a bounded window of
recent samples (for the p50/p99 of ``stats()``) and cumulative bucket counts with a sum
(for Prometheus histograms, which aggregate across processes where percentiles cannot).
A record is one ``bisect`` into a fixed tuple and two additions; no recorder is on the L1
hit path.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._invalidation import InvalidationStats
    from ._schedule import ScheduleInfo

_SAMPLES = 4096  # latency samples kept per series: recent behaviour, bounded memory

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds (seconds) of the L2, load and bus lag histograms."""


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts of observations, as a Prometheus histogram has them.

    ``counts[i]`` is the number of observations ``<= bounds[i]``; the last item of
    ``counts`` (one more than ``bounds``) counts every observation (the ``+Inf`` bucket).
    """

    bounds: tuple[float, ...] = ()
    counts: tuple[int, ...] = (0,)
    sum: float = 0.0

    @property
    def count(self) -> int:
        """The number of observations."""
        return self.counts[-1]


class BucketCounter:
    """The mutable side of :class:`Histogram`: a count per bucket and a running sum."""

    __slots__ = ("_bounds", "_counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"bucket bounds must be strictly increasing, got {bounds!r}")
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; last: +Inf
        self.sum = 0.0

    def record(self, value: float) -> None:
        """Add one observation."""
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le=)
        self._counts[bisect_left(self._bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> Histogram:
        """The cumulative counts so far."""
        counts = list(self._counts)  # one copy first: a record racing the loop is not torn
        total = 0
        cumulative = []
        for n in counts:
            total += n
            cumulative.append(total)
        return Histogram(self._bounds, tuple(cumulative), self.sum)


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of recent samples, in seconds (0.0 when there are none)."""

    count: int = 0
    p50: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    histogram: Histogram = field(default_factory=Histogram)
    """Every observation since the start, by bucket (the percentiles cover recent ones)."""


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a cache's counters (see ``Cache.stats()``).

    ``hit_rate`` is the share of reads served by L1 or L2 without calling the loader:
    ``(l1_hits + l2_hits) / (l1_hits + l1_misses)``.
    """

    l1_hits: int = 0
    l1_misses: int = 0
    l2_hits: int = 0
    l2_misses: int = 0
    loads: int = 0
    coalesced: int = 0
    stale_served: int = 0
    errors: int = 0
    decode_errors: int = 0
    lease_waits: int = 0
    fills_refused: int = 0
    bloom_rejected: int = 0
    """Reads a Bloom filter guard answered with the default: the item was definitely
    never added, so neither Redis nor the loader was asked."""
    # early refresh (XFetch): refreshes whose value was stored; found already refreshed
    # by another process (its entry installed, no load); failed (loader or Redis error)
    early_refreshes: int = 0
    early_refreshes_adopted: int = 0
    early_refresh_failures: int = 0
    l1_size: int = 0
    l1_evictions: int = 0
    breaker_state: str = "closed"
    breaker_opened: int = 0
    # the failover Redis's own breaker ("off" without a failover Redis)
    failover_breaker_state: str = "off"
    failover_breaker_opened: int = 0
    # the loader's time limits and circuit breaker (docs/loader.md); the breaker's state
    # is "off" without loader_breaker_threshold
    loader_breaker_state: str = "off"
    loader_breaker_opened: int = 0
    loader_rejected: int = 0  # calls the open breaker kept from the loader
    loader_soft_timeouts: int = 0  # callers given the fail-safe value at the soft timeout
    loader_hard_timeouts: int = 0  # callers that stopped waiting at the hard timeout
    loader_background_loads: int = 0  # timed loads running now (callers gone or waiting)
    loader_background_completed: int = 0  # timed loads that ended after a caller left
    load_latency: LatencySummary = field(default_factory=LatencySummary)
    l2_latency: LatencySummary = field(default_factory=LatencySummary)
    # the invalidation bus ("off" without one); flushes are counted by cause
    bus_state: str = "off"
    bus_messages_sent: int = 0
    bus_messages_received: int = 0
    bus_messages_dropped: int = 0
    bus_messages_forged: int = 0  # unsigned or wrongly signed (also in bus_messages_dropped)
    bus_flushes_subscribe: int = 0
    bus_flushes_gap: int = 0
    bus_flushes_heartbeat: int = 0
    bus_reconnects: int = 0
    bus_unhealthy_seconds: float = 0.0
    bus_lag: LatencySummary = field(default_factory=LatencySummary)
    # invalidation strategies: by type, latency, failures, cascades, queues, reclaim
    invalidation: InvalidationStats | None = None
    # scheduled invalidations of this instance (next fire time, last fired in the fleet)
    schedules: tuple[ScheduleInfo, ...] = ()

    @property
    def hit_rate(self) -> float:
        """Reads served from a cache tier over all reads (0.0 with no reads)."""
        reads = self.l1_hits + self.l1_misses
        return (self.l1_hits + self.l2_hits) / reads if reads else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for logging, JSON, metrics exporters), with ``hit_rate``."""
        data = asdict(self)
        data["hit_rate"] = self.hit_rate
        return data


class LatencyRecorder:
    """A bounded window of recent durations, summarised on demand, and bucket counts of
    all of them (``bounds``: the histogram's upper bounds)."""

    __slots__ = ("_buckets", "_samples", "count")

    def __init__(self, size: int = _SAMPLES, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._buckets = BucketCounter(bounds)
        self.count = 0

    def record(self, seconds: float) -> None:
        """Add one duration in seconds."""
        self._samples.append(seconds)
        self._buckets.record(seconds)
        self.count += 1

    def histogram(self) -> Histogram:
        """The bucket counts of every duration recorded."""
        return self._buckets.snapshot()

    def summary(self) -> LatencySummary:
        """p50, p99 and max of the samples in the window, and the histogram."""
        histogram = self._buckets.snapshot()
        samples = sorted(self._samples)
        if not samples:
            return LatencySummary(count=self.count, histogram=histogram)
        last = len(samples) - 1
        return LatencySummary(
            count=self.count,
            p50=samples[round(0.50 * last)],
            p99=samples[round(0.99 * last)],
            max=samples[-1],
            histogram=histogram,
        )


class Counters:
    """The tier counters a cache keeps in Python (L1 hits and misses live in the L1)."""

    __slots__ = (
        "bloom_rejected",
        "coalesced",
        "decode_errors",
        "errors",
        "fills_refused",
        "l2_hits",
        "l2_latency",
        "l2_misses",
        "lease_waits",
        "load_latency",
        "loads",
        "stale_served",
    )

    def __init__(self) -> None:
        self.l2_hits = 0
        self.l2_misses = 0
        self.loads = 0
        self.coalesced = 0
        self.stale_served = 0
        self.errors = 0
        self.decode_errors = 0
        self.lease_waits = 0
        self.fills_refused = 0
        self.bloom_rejected = 0
        self.load_latency = LatencyRecorder()
        self.l2_latency = LatencyRecorder()
