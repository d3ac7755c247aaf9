"""Invalidation strategies, written once for both halves (no I/O): rules, operations,
the delay and retry queues, dead letters, cascades and their metrics.

Design notes
------------
* An *operation* (:class:`~stratacache._outbox.Op`) is what one invalidation asks of one
  Redis: a key (and, through the dependency graph, everything depending on it), a tag, a
  glob pattern, or the namespace epoch. One that fails waits in the outbox
  (``stratacache._outbox``) until Redis answers again: transient errors never turn it
  into a dead letter, and a full outbox owes an epoch bump instead.
* Rules (:class:`InvalidationRule`) map an invalidated key to more keys or patterns,
  with ``{field}`` templating from the trigger, an optional condition and an optional
  delay (a second invalidation of the same targets later: "delayed double delete").
"""

from __future__ import annotations

import heapq
import itertools
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from ._keys import validate_key
from ._options import Duration, to_seconds
from ._outbox import Op
from ._stats import BucketCounter, Histogram, LatencyRecorder, LatencySummary

__all__ = [
    "AuditRecord",
    "InvalidationRule",
    "InvalidationSettings",
    "InvalidationStats",
]

PRIMARY = "primary"
FAILOVER = "failover"

_FIELD_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_GLOB_CHARS = re.compile(r"(?<!\\)[*?\[]")
MAX_RECLAIM_CHUNK = 5000
MAX_RULE_DEPTH = 16  # rules triggering rules: a bound, so a loop of rules always ends

# the invalidation seed's Prometheus buckets
INVALIDATION_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0)
CASCADE_DEPTH_BUCKETS: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)
# the methods whose durations ``latency`` summarises (a caller waits for them)
_CALLER_METHODS = frozenset(("key", "related", "tag", "pattern"))


@dataclass(frozen=True)
class InvalidationSettings:
    """The invalidation options of a cache, validated once (see ``Cache``)."""

    retry_backoff: float = 0.05
    retry_backoff_max: float = 2.0
    outbox_size: int = 10_000
    close_timeout: float = 2.0
    dead_letter_size: int = 10_000
    audit_maxlen: int = 10_000
    reclaim_chunk: int = 1000
    batch_window: float = 0.001

    def __post_init__(self) -> None:
        for name in ("outbox_size", "dead_letter_size", "reclaim_chunk"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        # one step holds Redis for ~2-3 us per key (measured): 5000 keys is already ~12 ms
        if self.reclaim_chunk > MAX_RECLAIM_CHUNK:
            raise ValueError(f"reclaim_chunk must be at most {MAX_RECLAIM_CHUNK}")
        if type(self.audit_maxlen) is not int or self.audit_maxlen < 0:
            raise ValueError(f"audit_maxlen must be an int >= 0, got {self.audit_maxlen!r}")
        object.__setattr__(
            self, "retry_backoff", to_seconds(self.retry_backoff, "retry_backoff", allow_zero=False)
        )
        object.__setattr__(
            self, "retry_backoff_max", to_seconds(self.retry_backoff_max, "retry_backoff_max")
        )
        object.__setattr__(self, "batch_window", to_seconds(self.batch_window, "batch_window"))
        object.__setattr__(self, "close_timeout", to_seconds(self.close_timeout, "close_timeout"))


# -- rules ------------------------------------------------------------------------------


def is_glob(target: str) -> bool:
    """Whether a rule target is a pattern: an unescaped ``*``, ``?`` or ``[``."""
    return _GLOB_CHARS.search(target) is not None


def _trigger_regex(trigger: str) -> re.Pattern[str]:
    """``{name}`` fields capture one ``:``-free segment; the rest is a Redis-style glob."""
    parts: list[str] = []
    pos = 0
    seen: set[str] = set()
    for match in _FIELD_RE.finditer(trigger):
        parts.append(_glob_to_regex(trigger[pos : match.start()]))
        name = match.group(1)
        if name in seen:
            parts.append(f"(?P={name})")
        else:
            seen.add(name)
            parts.append(f"(?P<{name}>[^:]+)")
        pos = match.end()
    parts.append(_glob_to_regex(trigger[pos:]))
    return re.compile("".join(parts), re.DOTALL)


def _glob_to_regex(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(re.escape(text[i + 1]))
            i += 2
            continue
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            end = text.find("]", i + 1)
            if end == -1:
                raise ValueError(f"unterminated '[' in rule trigger {text!r}")
            body = text[i + 1 : end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class InvalidationRule:
    """When a key matching ``trigger`` is invalidated, invalidate ``targets`` too.

    ``trigger`` is a key, a Redis-style glob (``user:*``) or a template whose ``{name}``
    fields each match one ``:``-free segment (``user:{id}``). Each target is a key or a
    glob and may use the trigger's fields (``user_posts:{id}``, ``feed:{id}:*``); a
    target with an unescaped ``*``, ``?`` or ``[`` is invalidated as a pattern.

    ``condition``, if given, is called with the invalidated key; the rule fires only if it
    returns true (in ``AsyncCache`` it may return an awaitable). ``delay`` > 0 invalidates
    the targets once more that many seconds later ("delayed double delete": a reader that
    refilled a target from a lagging replica in between is undone).
    """

    trigger: str
    targets: Sequence[str]
    delay: Duration = 0.0
    condition: Optional[Callable[[str], Any]] = None
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_key(self.trigger)
        if isinstance(self.targets, str):
            raise TypeError("targets must be a sequence of str, not a single str")
        targets = tuple(self.targets)
        if not targets:
            raise ValueError("a rule needs at least one target")
        fields = set(_FIELD_RE.findall(self.trigger))
        for target in targets:
            validate_key(target)
            unknown = set(_FIELD_RE.findall(target)) - fields
            if unknown:
                raise ValueError(
                    f"target {target!r} uses {sorted(unknown)} that trigger "
                    f"{self.trigger!r} does not capture"
                )
        if self.condition is not None and not callable(self.condition):
            raise TypeError("condition must be callable")
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "delay", to_seconds(self.delay, "delay"))
        object.__setattr__(self, "_regex", _trigger_regex(self.trigger))

    @property
    def delay_seconds(self) -> float:
        """``delay`` in seconds."""
        return float(self.delay)  # type: ignore[arg-type]  # a float after __post_init__

    def match(self, key: str) -> Optional[dict[str, str]]:
        """The trigger's fields if ``key`` matches it, else ``None``."""
        found = self._regex.fullmatch(key)
        return None if found is None else found.groupdict()

    def render(self, fields: dict[str, str]) -> list[str]:
        """The targets with the trigger's fields filled in."""
        return [_FIELD_RE.sub(lambda m: fields[m.group(1)], target) for target in self.targets]


# -- queues --------------------------------------------------------------------------------


class DelayQueue:
    """Invalidations scheduled for later (rule delays), earliest first (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, Op]] = []
        self._seq = itertools.count()

    def schedule(self, due: float, ops: Iterable[Op]) -> None:
        """Add ``ops`` to run at monotonic time ``due``."""
        with self._lock:
            for op in ops:
                heapq.heappush(self._heap, (due, next(self._seq), op))

    def take_due(self, now: float, window: float) -> list[Op]:
        """Everything due by ``now + window``: one batch, coalesced by target."""
        with self._lock:
            out: dict[tuple[str, str], Op] = {}
            while self._heap and self._heap[0][0] <= now + window:
                op = heapq.heappop(self._heap)[2]
                out[(op.kind, op.target)] = op
            return list(out.values())

    def take_all(self) -> list[Op]:
        """Everything still scheduled (on close: applied early rather than never)."""
        with self._lock:
            ops = [entry[2] for entry in sorted(self._heap)]
            self._heap.clear()
            return ops

    def next_due(self) -> Optional[float]:
        """When the earliest scheduled invalidation is due."""
        with self._lock:
            return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)


# -- cascades -------------------------------------------------------------------------------


def find_cycles(edges: dict[str, list[str]], roots: Iterable[str]) -> list[tuple[str, ...]]:
    """The cycles reachable from ``roots`` in a dependency graph (``edges[k]``: the keys
    that depend on ``k``), one per back edge of an iterative depth-first search."""
    WHITE, GREY, BLACK = 0, 1, 2
    color: dict[str, int] = {}
    cycles: list[tuple[str, ...]] = []
    for root in roots:
        if color.get(root, WHITE) != WHITE:
            continue
        path: list[str] = [root]
        color[root] = GREY
        stack: list[Iterable[str]] = [iter(edges.get(root, ()))]
        while stack:
            child = next(stack[-1], None)  # type: ignore[call-overload]
            if child is None:
                color[path.pop()] = BLACK
                stack.pop()
                continue
            state = color.get(child, WHITE)
            if state == GREY:
                cycles.append((*path[path.index(child) :], child))
            elif state == WHITE:
                color[child] = GREY
                path.append(child)
                stack.append(iter(edges.get(child, ())))
    return cycles


# -- metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InvalidationStats:
    """Invalidation metrics (``CacheStats.invalidation``), named as in the seed's
    Prometheus metrics."""

    invalidations: dict[str, int] = field(default_factory=dict)
    """Invalidations by type: the calls of ``invalidate`` (key), ``invalidate_related``,
    ``invalidate_tag(s)``, ``invalidate_pattern`` and ``invalidate_all`` (epoch); keys
    reached through dependencies (cascaded); rules fired; delayed invalidations and
    retries run."""
    keys_invalidated: int = 0
    """Keys removed from L2 (dependency cascades and patterns included)."""
    latency: LatencySummary = field(default_factory=LatencySummary)
    """Time from an invalidation call to its L2 effect (seconds)."""
    failures: dict[str, int] = field(default_factory=dict)
    """Failed tries by Redis: ``primary``, ``failover``."""
    cascade_depth: LatencySummary = field(default_factory=LatencySummary)
    """Depth of dependency cascades (0: no dependents)."""
    durations: dict[str, dict[str, Histogram]] = field(default_factory=dict)
    """Durations (seconds) by method (``key``, ``related``, ``tag``, ``pattern``,
    ``epoch``, ``rule``, ``delayed``, ``retry``) and result (``ok``; ``failed``: a Redis
    step failed and waits in the outbox, or the call raised); only those seen."""
    failures_by_type: dict[str, dict[str, int]] = field(default_factory=dict)
    """Failed tries by error type (``transient``: Redis did not answer, the operation
    waits in the outbox; ``refused``: Redis refused it for good) and Redis."""
    cascade_depths: dict[str, Histogram] = field(default_factory=dict)
    """Depth of dependency cascades by what set them off (the methods of ``durations``)."""
    cycles_detected: int = 0
    queue_size: int = 0
    """Operations waiting: the outbox plus scheduled (delayed) invalidations."""
    outbox_pending: int = 0
    """Writes and invalidations accepted but not yet applied to Redis (all Redises)."""
    outbox_applied: int = 0
    """Pending operations applied after their first try failed, since the start."""
    dead_letters: int = 0
    """Operations Redis refused for good (see ``Cache.dead_letters()``)."""
    epoch_bumps: int = 0
    reclaimed_keys: int = 0
    """Keys of invalidated tags deleted from L2 in the background."""
    reclaim_pending: int = 0
    """Invalidated tags whose keys are still being deleted."""
    audit_failures: int = 0


INVALIDATION_TYPES = (
    "key",
    "related",
    "cascaded",
    "tag",
    "pattern",
    "rule",
    "delayed",
    "retry",
    "epoch",
)
"""The kinds ``InvalidationStats.invalidations`` counts (the ``type`` label in metrics)."""


class InvalidationCounters:
    """The mutable side of :class:`InvalidationStats`."""

    def __init__(self) -> None:
        self.by_type: dict[str, int] = dict.fromkeys(INVALIDATION_TYPES, 0)
        self.keys_invalidated = 0
        self.latency = LatencyRecorder(bounds=INVALIDATION_BUCKETS)
        self.failures = {PRIMARY: 0, FAILOVER: 0}
        self.failures_by_type: dict[str, dict[str, int]] = {
            kind: {PRIMARY: 0, FAILOVER: 0} for kind in ("transient", "refused")
        }
        self.cascade_depth = LatencyRecorder(bounds=CASCADE_DEPTH_BUCKETS)
        self.cycles_detected = 0
        self.epoch_bumps = 0
        self.reclaimed_keys = 0
        self.audit_failures = 0
        # created on first use: a few methods are ever seen by most caches
        self._durations: dict[tuple[str, str], BucketCounter] = {}
        self._cascade_depths: dict[str, BucketCounter] = {}

    def record_duration(self, method: str, seconds: float, failed: bool) -> None:
        """One invalidation of ``method`` took ``seconds``; ``failed``: a Redis step of it
        failed (or it raised)."""
        key = (method, "failed" if failed else "ok")
        counter = self._durations.get(key)
        if counter is None:
            counter = self._durations.setdefault(key, BucketCounter(INVALIDATION_BUCKETS))
        counter.record(seconds)
        if method in _CALLER_METHODS:
            self.latency.record(seconds)

    def record_failure(self, redis: str, transient: bool) -> None:
        """A try on ``redis`` (``primary``/``failover``) failed."""
        self.failures[redis] += 1
        self.failures_by_type["transient" if transient else "refused"][redis] += 1

    def record_cascade(self, depth: int, trigger: str) -> None:
        """A dependency cascade set off by ``trigger`` went ``depth`` levels deep."""
        self.cascade_depth.record(depth)
        counter = self._cascade_depths.get(trigger)
        if counter is None:
            counter = self._cascade_depths.setdefault(trigger, BucketCounter(CASCADE_DEPTH_BUCKETS))
        counter.record(depth)

    def durations(self) -> dict[str, dict[str, Histogram]]:
        """Snapshots of the duration histograms, by method and result."""
        out: dict[str, dict[str, Histogram]] = {}
        for (method, result), counter in list(self._durations.items()):
            out.setdefault(method, {})[result] = counter.snapshot()
        return out

    def cascade_depths(self) -> dict[str, Histogram]:
        """Snapshots of the cascade depth histograms, by trigger."""
        return {trigger: c.snapshot() for trigger, c in list(self._cascade_depths.items())}


@dataclass(frozen=True)
class AuditRecord:
    """One entry of the audit stream (see ``Cache.audit_log()``)."""

    id: str
    """The stream entry id (``<ms>-<seq>``)."""
    instance: str
    action: str
    target: str
    count: int
    time: float
    """Wall-clock time of the invalidation."""
    reason: Optional[str] = None
