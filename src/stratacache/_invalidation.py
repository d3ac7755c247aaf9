"""Invalidation strategies, written once for both halves (no I/O): rules, operations,
the delay and retry queues, dead letters, cascades and their metrics.

Design notes
------------
* An *operation* (:class:`Op`) is what one invalidation asks of one Redis: a key (and,
  through the dependency graph, everything depending on it), a tag, a glob pattern, or
  the namespace epoch. Operations that fail (Redis down, timing out, breaker open) go to
  a :class:`RetryQueue` per Redis (the primary, and the failover one if configured):
  latest-per-target wins, backoff doubles from ``retry_backoff`` up to
  ``retry_backoff_max``, and after ``retry_attempts`` tries an operation becomes a
  :class:`DeadLetter` that can be listed and replayed.
* Nothing accepted is dropped silently: when the retry queue or the dead-letter store is
  full, an *epoch bump* is owed instead. The epoch is stamped into every entry; raising
  it makes every L2 entry written before a miss (O(1)) and its bus message makes every
  instance flush its L1. It covers every operation that could not be kept, so once it is
  applied the retry queue of that Redis is emptied.
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
from typing import Any, NamedTuple, Optional

from ._keys import validate_key
from ._options import Duration, to_seconds
from ._stats import LatencyRecorder, LatencySummary

__all__ = [
    "AuditRecord",
    "DeadLetter",
    "InvalidationRule",
    "InvalidationSettings",
    "InvalidationStats",
]

KEY = "key"
TAG = "tag"
PATTERN = "pattern"
EPOCH = "epoch"

PRIMARY = "primary"
FAILOVER = "failover"

_FIELD_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_GLOB_CHARS = re.compile(r"(?<!\\)[*?\[]")
MAX_RECLAIM_CHUNK = 5000
MAX_RULE_DEPTH = 16  # rules triggering rules: a bound, so a loop of rules always ends


@dataclass(frozen=True)
class InvalidationSettings:
    """The invalidation options of a cache, validated once (see ``Cache``)."""

    retry_attempts: int = 5
    retry_backoff: float = 0.1
    retry_backoff_max: float = 30.0
    retry_queue_size: int = 10_000
    dead_letter_size: int = 10_000
    audit_maxlen: int = 10_000
    reclaim_chunk: int = 1000
    batch_window: float = 0.001

    def __post_init__(self) -> None:
        for name in ("retry_attempts", "retry_queue_size", "dead_letter_size", "reclaim_chunk"):
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


class Op(NamedTuple):
    """One invalidation as sent to one Redis."""

    kind: str
    target: str
    reason: Optional[str] = None


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


@dataclass(frozen=True)
class DeadLetter:
    """An invalidation that failed ``attempts`` times (see ``Cache.dead_letters()``)."""

    kind: str
    """``"key"``, ``"tag"``, ``"pattern"`` or ``"epoch"``."""
    target: str
    redis: str
    """``"primary"`` or ``"failover"``: which Redis it could not reach."""
    attempts: int
    first_failed_at: float
    """Wall-clock time of the first failure."""
    last_error: str
    reason: Optional[str] = None


@dataclass
class _Retry:
    op: Op
    attempts: int
    due: float
    first_failed_at: float
    last_error: str


class RetryQueue:
    """Failed operations of one Redis waiting for another try (thread-safe)."""

    def __init__(
        self,
        redis: str,
        *,
        attempts: int,
        backoff: float,
        backoff_max: float,
        maxsize: int,
        dead_letter_size: int,
    ) -> None:
        self.redis = redis
        self._attempts = attempts
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._maxsize = maxsize
        self._dead_max = dead_letter_size
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], _Retry] = {}
        self._dead: list[DeadLetter] = []
        self.epoch_owed = False
        """An operation could not be kept: an epoch bump must be applied to this Redis."""
        self.overflows = 0

    def _delay(self, attempts: int) -> float:
        return float(min(self._backoff_max, self._backoff * (2 ** max(0, attempts - 1))))

    def failed(self, op: Op, error: str, now: float, wall: float, attempts: int = 1) -> None:
        """Record a failed try of ``op`` (``attempts`` tries so far); the newest operation
        on a target replaces an older one still waiting (latest-per-key wins)."""
        with self._lock:
            if op.kind == EPOCH:
                self.epoch_owed = True
                return
            slot = (op.kind, op.target)
            previous = self._pending.pop(slot, None)
            if attempts >= self._attempts:
                first = previous.first_failed_at if previous is not None else wall
                if len(self._dead) >= self._dead_max:
                    self.overflows += 1
                    self.epoch_owed = True
                    return
                self._dead.append(
                    DeadLetter(op.kind, op.target, self.redis, attempts, first, error, op.reason)
                )
                return
            if previous is None and len(self._pending) >= self._maxsize:
                self.overflows += 1
                self.epoch_owed = True
                return
            first = previous.first_failed_at if previous is not None else wall
            self._pending[slot] = _Retry(op, attempts, now + self._delay(attempts), first, error)

    def take_due(self, now: float, limit: int = 1000) -> list[tuple[Op, int]]:
        """Remove and return up to ``limit`` operations whose time has come, with the
        number of tries each has had."""
        with self._lock:
            due = [slot for slot, r in self._pending.items() if r.due <= now][:limit]
            return [(r.op, r.attempts) for r in (self._pending.pop(slot) for slot in due)]

    def next_due(self) -> Optional[float]:
        """When the earliest waiting operation is due (``None``: none waits)."""
        with self._lock:
            if self.epoch_owed:
                return 0.0
            return min((r.due for r in self._pending.values()), default=None)

    def covered_by_epoch(self) -> int:
        """The epoch bump was applied: every waiting operation is covered; drop them."""
        with self._lock:
            self.epoch_owed = False
            dropped = len(self._pending)
            self._pending.clear()
            return dropped

    def discard(self, kind: str, target: str) -> None:
        """Drop a waiting operation (a newer write made it moot)."""
        with self._lock:
            self._pending.pop((kind, target), None)

    def give_up(self) -> int:
        """Turn every waiting operation into a dead letter (on close); how many."""
        with self._lock:
            waiting = list(self._pending.values())
            self._pending.clear()
            for r in waiting:
                self._dead.append(
                    DeadLetter(
                        r.op.kind,
                        r.op.target,
                        self.redis,
                        r.attempts,
                        r.first_failed_at,
                        r.last_error,
                        r.op.reason,
                    )
                )
            return len(waiting)

    def dead_letters(self) -> list[DeadLetter]:
        """The dead letters, oldest first."""
        with self._lock:
            return list(self._dead)

    def take_dead_letters(self) -> list[DeadLetter]:
        """Remove and return every dead letter (to replay them)."""
        with self._lock:
            dead, self._dead = self._dead, []
            return dead

    def __len__(self) -> int:
        return len(self._pending)


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
    cycles_detected: int = 0
    queue_size: int = 0
    """Operations waiting: retries plus scheduled (delayed) invalidations."""
    dead_letters: int = 0
    epoch_bumps: int = 0
    reclaimed_keys: int = 0
    """Keys of invalidated tags deleted from L2 in the background."""
    reclaim_pending: int = 0
    """Invalidated tags whose keys are still being deleted."""
    audit_failures: int = 0


class InvalidationCounters:
    """The mutable side of :class:`InvalidationStats`."""

    def __init__(self) -> None:
        self.by_type: dict[str, int] = dict.fromkeys(
            (
                "key",
                "related",
                "cascaded",
                "tag",
                "pattern",
                "rule",
                "delayed",
                "retry",
                "epoch",
            ),
            0,
        )
        self.keys_invalidated = 0
        self.latency = LatencyRecorder()
        self.failures = {PRIMARY: 0, FAILOVER: 0}
        self.cascade_depth = LatencyRecorder()
        self.cycles_detected = 0
        self.epoch_bumps = 0
        self.reclaimed_keys = 0
        self.audit_failures = 0


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
