"""The invalidator: invalidation by key (with dependency cascades), tag, pattern, rule
and epoch, on the primary Redis and an optional failover one, with retries, dead letters,
background reclaim of invalidated tags, and the audit stream.

The bookkeeping without I/O (rules, queues, cycle search, metrics) is in
``stratacache._invalidation``; the tag-version scheme is explained in ``stratacache._tags``.
This module does the I/O, and one background worker (a task here, a thread in the
generated sync twin) runs what is not done in the caller's call: retries with backoff,
delayed invalidations, the chunked reclaim of invalidated tags, and audit writes.

Reclaim: the keys registered under an invalidated tag are deleted in chunks, one Lua
step each (a ZRANGE by rank over the moved-aside member set, UNLINK), skipping any key written with
the tag again since the invalidation. It starts ``RECLAIM_DELAY`` after the invalidation,
so that the other instances' reads of the new versions and the reloads that follow an
invalidation are not queued behind it. On a cluster the client UNLINKs each chunk (the
keys are in other slots): a key rewritten in that one round trip loses its new value,
which costs one miss, never a stale read (its stamp would be current).

Order of effects, for every kind: the local L1 first (this process stops serving the old
value at once), then Redis, then the local L1 again (a fill that read Redis before the
Redis step landed is refused by the L1's ticket guard), then one bus message so that
every other instance drops its copies. Tags differ: their local drop costs as much as
the entries this L1 holds under them (up to the whole L1: milliseconds), so Redis comes
first, then the bus message, sent from the call rather than batched, so the other
instances are not kept waiting for it, then the local L1, once (the ticket guard still
refuses a fill that read Redis before the new version). A Redis step that fails is
left in the outbox (``stratacache._outbox``) and applied when Redis answers again; its bus
message is sent when it is applied.

The outbox is flushed by the worker: while a Redis has pending operations and its last
try failed, the worker probes it (``PING``, outside the circuit breaker, every
``PROBE_INTERVAL``); the first answer makes every pending operation due at once, so they
are applied within about one probe interval of Redis answering again. The retries go
around the breaker too (they are background work, no caller waits for them) and close it
when they succeed, so that the readers come back to Redis at the same moment.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Optional

from .._bus import BusPublisherState, new_source_id
from .._bus_messages import Action
from .._errors import RedisUnavailableError
from .._invalidation import (
    FAILOVER,
    MAX_RULE_DEPTH,
    PRIMARY,
    AuditRecord,
    DelayQueue,
    InvalidationCounters,
    InvalidationRule,
    InvalidationSettings,
    InvalidationStats,
    find_cycles,
    is_glob,
)
from .._keys import KeySpace, glob_match
from .._logging import LogLimiter
from .._outbox import EPOCH, KEY, LEASE, PATTERN, TAG, WRITE, DeadLetter, Op, Outbox
from .._primitives import (
    AsyncEvent,
    AsyncLock,
    AsyncWorker,
    async_call_loader,
    async_current_loop,
    async_sleep,
    async_wait_event,
)
from .._tags import EPOCH as EPOCH_VERSION
from .._tags import TagVersions
from .redis_tier import AsyncRedisTier

logger = logging.getLogger("stratacache.invalidation")

RECLAIM_DELAY = 0.02  # seconds between a tag's invalidation and the start of its reclaim
_IDLE_WAIT = 1.0  # longest the worker sleeps with nothing due (it is woken for new work)
_STOP_TIMEOUT = 5.0
_MAX_CASCADE = 100_000  # keys one dependency cascade may reach (a runaway graph stops here)
_AUDIT_BUFFER = 10_000  # audit records waiting for the worker; beyond, counted as failures
PROBE_INTERVAL = 0.05  # seconds between PINGs of a Redis that has pending operations
_DESCRIBE = {
    WRITE: "a write",
    KEY: "an invalidation",
    TAG: "a tag invalidation",
    PATTERN: "a pattern invalidation",
    EPOCH: "an epoch bump",
    LEASE: "a lease release",
}

# The primary Redis's failures during one call of the cache (``on_write_error="raise"``):
# the facade sets a list, ``_failed`` appends to it. None outside such a call.
_CALL_FAILURES: contextvars.ContextVar[Optional[list[BaseException]]] = contextvars.ContextVar(
    "stratacache_call_failures", default=None
)


def watch_failures() -> contextvars.Token[Optional[list[BaseException]]]:
    """Start collecting the primary Redis's failures of this call (strict writes)."""
    return _CALL_FAILURES.set([])


def watched_failures(
    token: contextvars.Token[Optional[list[BaseException]]],
) -> list[BaseException]:
    """Stop collecting (see :func:`watch_failures`); the failures seen meanwhile."""
    failures = _CALL_FAILURES.get() or []
    _CALL_FAILURES.reset(token)
    return failures


class _Timing:
    """The invalidation being timed in this context (its metrics' labels)."""

    __slots__ = ("failed", "method")

    def __init__(self, method: str) -> None:
        self.method = method
        self.failed = False


# The innermost timed invalidation of this call: ``_failed`` marks it failed, a cascade
# takes its method as the trigger. Per context, so concurrent calls do not mix.
_TIMING: contextvars.ContextVar[Optional[_Timing]] = contextvars.ContextVar(
    "stratacache_invalidation_timing", default=None
)


@dataclass
class LocalEffects:
    """What an invalidation does to this process's L1 (and fail-safe copy): provided by
    the cache, since they touch its tiers and its tag-version table."""

    keys: Callable[[Sequence[str]], int]
    tags: Callable[[Sequence[str]], int]
    pattern: Callable[[str], int]
    clear: Callable[[], None]


@dataclass
class _Reclaim:
    """An invalidated tag whose keys are still to be deleted."""

    tag: str
    key: str  # the member set moved aside by the invalidation
    due: float  # timer value before which it does not start
    cursor: int = 0  # of the walk over ``key`` (a rank; 0: not started)


class _Target:
    """One Redis that invalidations go to, with its outbox and reclaim backlog."""

    def __init__(self, name: str, tier: AsyncRedisTier, outbox: Outbox) -> None:
        self.name = name
        self.tier = tier
        # the worker's view of the tier: around the breaker (see the module notes)
        self.retry_tier = tier.around_breaker()
        self.outbox = outbox
        self.reclaim: collections.deque[_Reclaim] = collections.deque()  # oldest first
        self.reachable = True  # False from a failed try until Redis answers again
        self.next_probe = 0.0
        self.outage_started: Optional[float] = None  # timer value; None: no outbox backlog
        self.applied_before = 0  # outbox.applied when the backlog began


class AsyncInvalidator:
    """Carries out a cache's invalidations (see the module notes)."""

    def __init__(
        self,
        *,
        keys: KeySpace,
        local: LocalEffects,
        versions: TagVersions,
        primary: Optional[AsyncRedisTier],
        failover: Optional[AsyncRedisTier],
        publish: Callable[[Action, Iterable[str], bool], Any],  # the bus's; bool: unbatched
        settings: InvalidationSettings,
        instance: str,
        timer: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
        bus_key: Optional[bytes] = None,
    ) -> None:
        self._keys = keys
        self._local = local
        self._versions = versions
        self._publish_primary = publish
        self.settings = settings
        self.instance = instance
        self._timer = timer
        self._clock = clock
        self._targets: list[_Target] = []
        for name, tier in ((PRIMARY, primary), (FAILOVER, failover)):
            if tier is not None:
                tier.audit_maxlen = settings.audit_maxlen
                outbox = Outbox(
                    name,
                    backoff=settings.retry_backoff,
                    backoff_max=settings.retry_backoff_max,
                    maxsize=settings.outbox_size,
                    dead_letter_size=settings.dead_letter_size,
                )
                self._targets.append(_Target(name, tier, outbox))
        self.primary_outbox: Optional[Outbox] = (
            self._targets[0].outbox if primary is not None else None
        )
        """The primary Redis's outbox (the read path asks it what it must not serve)."""
        # the failover Redis has a bus of its own: its instances hear our invalidations
        # from a source id whose sequence numbers only count what is sent there
        self._failover_outbox = BusPublisherState(new_source_id(), time.time, bus_key)
        self._rules: list[InvalidationRule] = []
        self._delayed = DelayQueue()
        self._audit: collections.deque[dict[str, Any]] = collections.deque()
        self._audit_lock = AsyncLock()
        self._reclaim_lock = AsyncLock()
        self._audit_failing = False
        self.counters = InvalidationCounters()
        self._worker: Optional[AsyncWorker] = None
        self._dead_letter_log = LogLimiter(logger, interval=10.0)
        self._worker_loop: Any = None  # the event loop it runs in (None for threads)
        self._worker_lock = threading.Lock()
        self._wake = AsyncEvent()
        self._stopping = False

    # -- public operations (called by the cache) -------------------------------------------

    def add_rule(self, rule: InvalidationRule) -> None:
        """Add a rule (see :class:`InvalidationRule`)."""
        if not isinstance(rule, InvalidationRule):
            raise TypeError(f"expected an InvalidationRule, not {type(rule).__name__}")
        self._rules.append(rule)

    async def invalidate_keys(
        self, keys: Sequence[str], reason: Optional[str], *, kind: str = "key"
    ) -> int:
        """Invalidate ``keys`` and, transitively, every key that depends on them; fire the
        rules they trigger. Returns how many keys were removed from L1 or L2."""
        self.counters.by_type[kind] += 1
        with self._timed(kind):
            removed = await self._cascade(list(dict.fromkeys(keys)), reason, fire_rules=True)
        self._record_audit(kind, ",".join(keys), removed, reason)
        return removed

    async def invalidate_tags(self, tags: Sequence[str], reason: Optional[str]) -> int:
        """Invalidate every entry carrying one of ``tags`` or a tag below one of them
        (O(1) per tag); returns the number of keys registered under them (L1's count
        without Redis)."""
        tags = list(dict.fromkeys(tags))
        self.counters.by_type["tag"] += 1
        registered: Optional[int] = None
        with self._timed("tag"):
            for target in self._targets:
                applied = await self._apply_tags(target, [Op(TAG, t, reason) for t in tags])
                if target.name == PRIMARY:
                    registered = applied
            dropped = self._local.tags(tags)
        count = dropped if registered is None else registered
        self._record_audit("tag", ",".join(tags), count, reason)
        return count

    async def invalidate_pattern(self, glob: str, reason: Optional[str]) -> int:
        """Invalidate every key matching the Redis-style ``glob``: L1 at once, L2 by a
        chunked SCAN + UNLINK on every master; the number of L2 entries removed (L1's
        count without Redis)."""
        self.counters.by_type["pattern"] += 1
        with self._timed("pattern"):
            count = self._local.pattern(glob)
            for target in self._targets:
                removed = await self._apply_pattern(target, Op(PATTERN, glob, reason))
                if target.name == PRIMARY and removed is not None:
                    count = removed
            self._local.pattern(glob)
        self._record_audit("pattern", glob, count, reason)
        return count

    async def add_dependency(self, key: str, depends_on: Sequence[str], ttl: float) -> None:
        """Record that ``key`` must be invalidated whenever one of ``depends_on`` is, for
        as long as the entry of ``key`` now stored lives and at least ``ttl`` seconds.

        Raises :class:`RedisUnavailableError` if the primary Redis cannot record it (a
        dependency that silently did not exist would leave stale data behind later)."""
        await self._on_the_graph("add_dependents", key, depends_on, ttl)

    async def remove_dependency(self, key: str, depends_on: Sequence[str]) -> None:
        """Forget that ``key`` depends on ``depends_on``."""
        await self._on_the_graph("remove_dependents", key, depends_on)

    async def _on_the_graph(
        self, method: str, key: str, depends_on: Sequence[str], *extra: Any
    ) -> None:
        """Change the dependency graph on every Redis; only the primary's failure raises
        (the failover's is counted: its graph then misses an edge)."""
        for target in self._targets:
            try:
                await getattr(target.tier, method)(depends_on, key, *extra)
            except RedisUnavailableError as exc:
                self.counters.record_failure(target.name, exc.transient)
                if target.name == PRIMARY:
                    raise

    async def bump_epoch(self, reason: Optional[str]) -> None:
        """Make every entry of the namespace a miss, everywhere (O(1))."""
        self._local.clear()
        self.counters.by_type["epoch"] += 1
        with self._timed("epoch"):
            for target in self._targets:
                await self._apply_epoch(target, Op(EPOCH, "", reason))
        self._local.clear()

    def dead_letters(self) -> list[DeadLetter]:
        """Operations Redis refused for good (and, after close, what was still pending),
        oldest first (primary, then failover)."""
        return [letter for t in self._targets for letter in t.outbox.dead_letters()]

    async def replay_dead_letters(self) -> int:
        """Try every dead letter again now; the number applied now. One that fails with a
        transient error waits in the outbox; one refused again is a dead letter again."""
        applied = 0
        for target in self._targets:
            for letter in target.outbox.take_dead_letters():
                op = Op(letter.kind, letter.target, letter.reason)
                with self._timed("retry"):
                    if await self._apply_one(target, op):
                        applied += 1
        return applied

    async def audit_log(self, count: int) -> list[AuditRecord]:
        """The newest ``count`` audit records of the primary Redis, newest first."""
        await self._flush_audit()
        if not self._targets:
            return []
        rows = await self._targets[0].tier.audit_log(count)
        out = []
        for entry_id, fields in rows:
            f = {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}
            out.append(
                AuditRecord(
                    id=entry_id.decode(),
                    instance=f.get("instance", ""),
                    action=f.get("action", ""),
                    target=f.get("target", ""),
                    count=int(f.get("count", "0")),
                    time=float(f.get("time", "0")),
                    reason=f.get("reason") or None,
                )
            )
        return out

    # -- the write path's side of the outbox (see stratacache._outbox) ---------------------

    def write_failed(self, keys: Sequence[str], exc: RedisUnavailableError) -> None:
        """A ``set``/``delete`` of ``keys`` did not reach the primary Redis: delete them
        there as soon as it answers (the old value must not come back)."""
        target = self._targets[0]
        self._failed(target, [Op(WRITE, key, "write failed") for key in keys], exc)

    def write_succeeded(self, keys: Sequence[str]) -> None:
        """A write of ``keys`` reached the primary Redis: their pending writes are moot."""
        outbox = self.primary_outbox
        if outbox is not None and outbox.active:
            outbox.write_succeeded(list(keys))

    def release_lease_later(self, key: str, token: bytes, *, unreachable: bool = True) -> None:
        """A lease command timed out (or was cancelled): it may still run (a paused server
        runs what was sent before it stopped), leaving a lease nobody holds and every
        reader of the key waiting ``lease_wait``. Release it (by its token) once Redis
        answers; at once if nothing says Redis is unreachable."""
        target = self._targets[0]
        op = Op(LEASE, key, None, token)
        if unreachable:
            self._failed(target, [op], RedisUnavailableError("lease command timed out"))
            return
        target.outbox.failed(op, "lease command interrupted", self._timer(), self._clock())
        target.outbox.due_now()
        self._ensure_worker()

    def redis_answers(self) -> None:
        """The primary Redis answered a call (its breaker closed, or the bus heard its
        heartbeat again): apply everything pending now rather than at its backoff."""
        for target in self._targets[:1]:
            if target.outbox.active and not target.reachable:
                target.reachable = True
                target.outbox.due_now()
                self._ensure_worker()

    @contextlib.contextmanager
    def _timed(self, method: str) -> Iterator[None]:
        """Time one invalidation of ``method`` for its histogram; failed if a Redis step
        of it failed (an enclosing invalidation then failed too) or it raised."""
        outer = _TIMING.get()
        timing = _Timing(method)
        token = _TIMING.set(timing)
        start = perf_counter()
        try:
            yield
        except BaseException:
            timing.failed = True
            raise
        finally:
            _TIMING.reset(token)
            if timing.failed and outer is not None:
                outer.failed = True
            self.counters.record_duration(method, perf_counter() - start, timing.failed)

    def redis_reachable(self) -> bool:
        """False from a failed try on the primary Redis until it answers again."""
        return all(t.reachable for t in self._targets[:1])

    def stats(self) -> InvalidationStats:
        """A snapshot of the invalidation metrics."""
        c = self.counters
        return InvalidationStats(
            invalidations=dict(c.by_type),
            keys_invalidated=c.keys_invalidated,
            latency=c.latency.summary(),
            failures=dict(c.failures),
            cascade_depth=c.cascade_depth.summary(),
            durations=c.durations(),
            failures_by_type={kind: dict(by) for kind, by in c.failures_by_type.items()},
            cascade_depths=c.cascade_depths(),
            cycles_detected=c.cycles_detected,
            queue_size=sum(len(t.outbox) for t in self._targets) + len(self._delayed),
            outbox_pending=sum(len(t.outbox) for t in self._targets),
            outbox_applied=sum(t.outbox.applied for t in self._targets),
            dead_letters=sum(len(t.outbox.dead_letters()) for t in self._targets),
            epoch_bumps=c.epoch_bumps,
            reclaimed_keys=c.reclaimed_keys,
            reclaim_pending=sum(len(t.reclaim) for t in self._targets),
            audit_failures=c.audit_failures,
        )

    # -- cascades and rules ----------------------------------------------------------------

    async def _cascade(
        self, roots: list[str], reason: Optional[str], *, fire_rules: bool, depth: int = 0
    ) -> int:
        removed = self._local.keys(roots)
        reached: dict[str, None] = dict.fromkeys(roots)
        for target in self._targets:
            result = await self._apply_keys(target, [Op(KEY, k, reason) for k in roots])
            if result is not None:
                count, visited = result
                if target.name == PRIMARY:
                    removed = max(removed, count)
                reached.update(dict.fromkeys(visited))
        if fire_rules and self._rules and depth < MAX_RULE_DEPTH:
            await self._fire_rules(list(reached), reason, depth)
        return removed

    async def _fire_rules(self, keys: list[str], reason: Optional[str], depth: int) -> None:
        for key in keys:
            for rule in self._rules:
                fields = rule.match(key)
                if fields is None:
                    continue
                if rule.condition is not None and not await async_call_loader(
                    functools.partial(rule.condition, key)
                ):
                    continue
                self.counters.by_type["rule"] += 1
                targets = rule.render(fields)
                ops = [Op(PATTERN if is_glob(t) else KEY, t, reason) for t in targets]
                with self._timed("rule"):
                    await self._run_now(ops, fire_rules=True, depth=depth + 1)
                if rule.delay_seconds > 0:
                    self._delayed.schedule(self._timer() + rule.delay_seconds, ops)
                    self._ensure_worker()

    async def _run_now(self, ops: list[Op], *, fire_rules: bool, depth: int) -> None:
        """Rule targets (keys and patterns), now: the keys as one cascade."""
        keys = [op.target for op in ops if op.kind == KEY]
        if keys:
            await self._cascade(keys, ops[0].reason, fire_rules=fire_rules, depth=depth)
        for op in ops:
            if op.kind == PATTERN:
                self._local.pattern(op.target)
                for target in self._targets:
                    await self._apply_pattern(target, op)
                self._local.pattern(op.target)

    # -- one Redis ---------------------------------------------------------------------------

    async def _apply_keys(
        self, target: _Target, ops: list[Op], retry: bool = False
    ) -> Optional[tuple[int, list[str]]]:
        """The dependency cascade from ``ops``' keys on one Redis, a pipeline per level:
        (entries removed, every key reached); ``None`` if it failed (left in the outbox).
        ``retry``: the ops come from the outbox (the worker's tier, done when applied)."""
        tier = target.retry_tier if retry else target.tier
        frontier = [op.target for op in ops]
        reached: dict[str, None] = dict.fromkeys(frontier)
        edges: dict[str, list[str]] = {}
        removed = 0
        depth = 0
        revisited = False
        while frontier:
            try:
                results = await tier.invalidate_keys(frontier)
            except RedisUnavailableError as exc:
                if depth == 0:
                    self._failed(target, ops, exc, retry)
                    return None
                self._failed(target, [Op(KEY, k, ops[0].reason) for k in frontier], exc)
                break  # the keys reached so far are done; the rest is retried from here
            if depth == 0:
                self._applied(target, ops, retry)
            await self._announce(target, Action.INVALIDATE_KEYS, frontier)
            following: list[str] = []
            for key, (existed, dependents) in zip(frontier, results):
                removed += existed
                if dependents:
                    edges[key] = dependents
                for child in dependents:
                    if child in reached:
                        revisited = True
                    elif len(reached) < _MAX_CASCADE:
                        reached[child] = None
                        following.append(child)
            if following:
                depth += 1
                self._local.keys(following)
            frontier = following
        self._local.keys(list(reached))
        self.counters.keys_invalidated += removed
        if target.name == PRIMARY:
            timing = _TIMING.get()
            self.counters.record_cascade(depth, "retry" if timing is None else timing.method)
            if depth:
                self.counters.by_type["cascaded"] += len(reached) - len(ops)
            if revisited:
                cycles = find_cycles(edges, [op.target for op in ops])
                if cycles:
                    self.counters.cycles_detected += len(cycles)
                    logger.warning("dependency cycles while invalidating: %r", cycles[:5])
        return removed, list(reached)

    async def _apply_tags(
        self, target: _Target, ops: list[Op], retry: bool = False
    ) -> Optional[int]:
        tags = [op.target for op in ops]
        try:
            results = await (target.retry_tier if retry else target.tier).bump_tags(tags)
        except RedisUnavailableError as exc:
            self._failed(target, ops, exc, retry)
            return None
        self._applied(target, ops, retry)
        if target.name == PRIMARY:
            self._versions.raise_to({tag: version for tag, (version, _, _) in zip(tags, results)})
        due = self._timer() + RECLAIM_DELAY
        for tag, (_, count, reclaim) in zip(tags, results):
            if count:
                target.reclaim.append(_Reclaim(tag, reclaim, due))
        if target.reclaim:
            self._ensure_worker()
        await self._announce(target, Action.INVALIDATE_TAGS, tags, at_once=True)
        return sum(count for _, count, _ in results)

    async def _apply_pattern(self, target: _Target, op: Op, retry: bool = False) -> Optional[int]:
        pattern = self._keys.entry_pattern(op.target)
        data_prefix = self._keys.data_key("x")[:-3].encode()  # b"ns:v1:d:" (not leases)
        removed = 0
        cursors: Optional[dict[str, int]] = None
        tier = target.retry_tier if retry else target.tier
        try:
            while True:
                cursors, found = await tier.scan_step(pattern, cursors)
                doomed = []
                for redis_key in found:
                    owner = self._keys.entry_owner(redis_key)
                    if owner is not None and glob_match(op.target, owner):
                        doomed.append(redis_key)
                        if redis_key.startswith(data_prefix):
                            removed += 1
                await tier.unlink(doomed)
                if not cursors:
                    break
        except RedisUnavailableError as exc:
            self._failed(target, [op], exc, retry)
            return None
        self._applied(target, [op], retry)
        self.counters.keys_invalidated += removed
        await self._announce(target, Action.INVALIDATE_MATCHING, [op.target])
        return removed

    async def _apply_epoch(self, target: _Target, op: Op, retry: bool = False) -> bool:
        try:
            version = await (target.retry_tier if retry else target.tier).bump_epoch()
        except RedisUnavailableError as exc:
            self._failed(target, [op], exc, retry)
            return False
        self.counters.epoch_bumps += 1
        if target.name == PRIMARY:
            self._versions.raise_to({EPOCH_VERSION: version})
        covered = target.outbox.covered_by_epoch()
        if covered:
            logger.warning(
                "epoch bump applied to the %s Redis: it covers %d pending operations",
                target.name,
                covered,
            )
        await self._announce(target, Action.CLEAR, ())
        self._record_audit("epoch", "*", covered, op.reason)
        return True

    async def _retry(self, target: _Target, due: list[Op]) -> None:
        """Apply due operations from the outbox: keys and tags of a kind as one batch (one
        pipeline), the others one by one."""
        batches: dict[str, list[Op]] = {}
        for op in due:
            if op.kind in (KEY, WRITE, TAG):
                batches.setdefault(TAG if op.kind == TAG else KEY, []).append(op)
            else:
                await self._apply_one(target, op, retry=True)
        for kind, ops in batches.items():
            if kind == KEY:
                await self._apply_keys(target, ops, retry=True)
            else:
                await self._apply_tags(target, ops, retry=True)

    async def _apply_one(self, target: _Target, op: Op, retry: bool = False) -> bool:
        if op.kind in (KEY, WRITE):
            return await self._apply_keys(target, [op], retry) is not None
        if op.kind == TAG:
            return await self._apply_tags(target, [op], retry) is not None
        if op.kind == PATTERN:
            return await self._apply_pattern(target, op, retry) is not None
        if op.kind == LEASE:
            try:
                await target.retry_tier.release_lease(op.target, op.token)
            except RedisUnavailableError as exc:
                self._failed(target, [op], exc, retry)
                return False
            self._applied(target, [op], retry)
            return True
        return await self._apply_epoch(target, op, retry)

    async def _announce(
        self, target: _Target, action: Action, args: Iterable[str], *, at_once: bool = False
    ) -> None:
        """The bus message of an applied invalidation, on that Redis's bus (the primary's
        may be batched with others unless ``at_once``; the failover's never is)."""
        if target.name == PRIMARY:
            await self._publish_primary(action, args, at_once)
            return
        for payload in self._failover_outbox.encode_all(action, args):
            try:
                await target.tier.publish(self._keys.channel(), payload)
            except RedisUnavailableError:
                pass  # a gap at the failover's listeners: they flush, the safe outcome

    def _failed(
        self,
        target: _Target,
        ops: Sequence[Op],
        exc: RedisUnavailableError,
        retry: bool = False,
    ) -> None:
        """Leave ``ops`` in the outbox (or make them dead letters if Redis refused them
        for good); a retry that failed backs off."""
        transient = exc.transient
        self.counters.record_failure(target.name, transient)
        timing = _TIMING.get()
        if timing is not None:
            timing.failed = True
        if target.name == PRIMARY:
            failures = _CALL_FAILURES.get()
            if failures is not None:
                failures.append(exc)
        now, wall = self._timer(), self._clock()
        outbox = target.outbox
        was_active = outbox.active
        overflows = outbox.overflows
        for op in ops:
            if retry:
                letter = outbox.retry_failed(op, str(exc), now, transient=transient)
            else:
                letter = outbox.failed(op, str(exc), now, wall, transient=transient)
            if letter is not None:
                self._dead_letter_log.warning(
                    "%s Redis refused %s %r for good (%s): kept as a dead letter, see "
                    "dead_letters() and replay_dead_letters()",
                    target.name,
                    letter.kind,
                    letter.target,
                    letter.last_error,
                )
        if transient:
            target.reachable = False
            target.next_probe = min(target.next_probe, now + PROBE_INTERVAL)
            if target.outage_started is None and outbox.active:
                target.outage_started = now
                target.applied_before = outbox.applied
                if not was_active:
                    logger.warning(
                        "the %s Redis did not take %s (%s): it is kept in the outbox and "
                        "applied as soon as Redis answers; reads of the keys concerned "
                        "skip Redis until then",
                        target.name,
                        _DESCRIBE.get(ops[0].kind, "an operation") if ops else "an operation",
                        exc,
                    )
        if outbox.overflows > overflows:
            logger.warning(
                "the outbox of the %s Redis is full (outbox_size=%d): an epoch bump is owed "
                "instead, which will make every entry of the namespace a miss once Redis "
                "answers",
                target.name,
                self.settings.outbox_size,
            )
        self._ensure_worker()

    def _applied(self, target: _Target, ops: Sequence[Op], retry: bool) -> None:
        """``ops`` reached Redis: done in the outbox if they came from it; Redis answers,
        so what was waiting for it (backing off, or for the next probe) is due now."""
        if not target.reachable:
            target.reachable = True
            target.outbox.due_now()
            self._ensure_worker()
        if retry:
            for op in ops:
                target.outbox.done(op)
        if target.outage_started is not None and not target.outbox.active:
            applied = target.outbox.applied - target.applied_before
            logger.info(
                "the %s Redis answers again: %d pending operations applied, %.2f s after "
                "the first failure",
                target.name,
                applied,
                self._timer() - target.outage_started,
            )
            target.outage_started = None

    # -- audit -----------------------------------------------------------------------------------

    def _record_audit(self, action: str, target: str, count: int, reason: Optional[str]) -> None:
        if not self.settings.audit_maxlen or not self._targets:
            return
        if len(self._audit) >= _AUDIT_BUFFER:
            self.counters.audit_failures += 1
            return
        self._audit.append(
            {
                "instance": self.instance,
                "action": action,
                "target": target[:1024],
                "count": count,
                "time": repr(self._clock()),
                "reason": reason or "",
            }
        )
        self._ensure_worker()

    async def _flush_audit(self) -> None:
        if not self._audit or not self._targets:
            return
        async with self._audit_lock:  # one writer at a time keeps the stream in order
            while self._audit:
                batch: list[dict[str, Any]] = []
                while self._audit and len(batch) < 1000:
                    batch.append(self._audit.popleft())
                try:
                    await self._targets[0].tier.audit(batch)
                    self._audit_failing = False
                except RedisUnavailableError:
                    self._audit_failing = True
                    # put them back (oldest first) unless the buffer filled up meanwhile
                    room = _AUDIT_BUFFER - len(self._audit)
                    self._audit.extendleft(reversed(batch[:room]))
                    self.counters.audit_failures += max(0, len(batch) - room)
                    return

    # -- the background worker -------------------------------------------------------------------

    def _leave_old_loop(self) -> bool:
        """Async only: if the worker ran in another event loop (an earlier ``asyncio.run``),
        drop it and the event and lock it waited on, which belong to that loop. True if
        it did."""
        worker = self._worker
        if worker is None or self._worker_loop is async_current_loop():
            return False
        worker.abandon()
        self._wake = AsyncEvent()
        self._audit_lock = AsyncLock()
        self._reclaim_lock = AsyncLock()
        return True

    def _ensure_worker(self) -> None:
        worker = self._worker
        moved = self._leave_old_loop()
        if (worker is None or moved or not worker.alive()) and not self._stopping:
            with self._worker_lock:  # two threads of a sync cache: one worker
                if self._worker is worker:
                    self._worker_loop = async_current_loop()
                    self._worker = AsyncWorker(self._work, "stratacache-invalidator")
        self._wake.set()

    def rebind_loop(self) -> None:
        """The cache is used from a new event loop: the worker (if one ran) runs on in it."""
        if self._worker is not None:
            self._ensure_worker()

    async def _work(self) -> None:
        _CALL_FAILURES.set(None)  # a task inherits its creator's context: not its failures
        _TIMING.set(None)
        while not self._stopping:
            try:
                busy = await self._work_once()
            except Exception:  # pragma: no cover - never let the loop die (bug guard)
                logger.exception("invalidation worker step failed")
                busy = False
            if self._stopping:
                break
            if busy:
                await async_wait_event(self._wake, 0)  # let callers in between chunks
            else:
                await async_wait_event(self._wake, self._idle_wait())
            self._wake.clear()

    def _idle_wait(self) -> float:
        dues = [self._outbox_due(t) for t in self._targets] + [self._delayed.next_due()]
        dues += [t.reclaim[0].due for t in self._targets if t.reclaim]
        pending = [d for d in dues if d is not None]
        if self._audit:
            # a batch window to gather records; a backoff while Redis refuses them
            return (
                self.settings.retry_backoff if self._audit_failing else self.settings.batch_window
            )
        if not pending:
            return _IDLE_WAIT
        return max(0.0, min(min(pending) - self._timer(), _IDLE_WAIT))

    @staticmethod
    def _outbox_due(target: _Target) -> Optional[float]:
        """When the worker must next look at this Redis's outbox (a probe while it is
        unreachable, else the earliest backoff)."""
        if not target.outbox.active:
            return None
        if not target.reachable:
            return target.next_probe
        return target.outbox.next_due()

    async def _work_once(self) -> bool:
        """One round: the outboxes (a probe of an unreachable Redis, owed epoch bumps, due
        operations), due delayed invalidations, the audit buffer, and one chunk of due
        reclaim per Redis. True if more work is due now."""
        now = self._timer()
        for target in self._targets:
            await self._flush_outbox(target, now)
        delayed = self._delayed.take_due(now, self.settings.batch_window)
        if delayed:
            self.counters.by_type["delayed"] += len(delayed)
            with self._timed("delayed"):
                await self._run_now(delayed, fire_rules=False, depth=MAX_RULE_DEPTH)
        await self._flush_audit()
        busy = False
        for target in self._targets:
            if not (target.reclaim and target.reclaim[0].due <= now):
                continue
            try:
                await self._reclaim_chunk(target)
            except RedisUnavailableError:
                continue  # the keys are logically invalid already; try again later
            busy = busy or bool(target.reclaim and target.reclaim[0].due <= self._timer())
        return busy

    async def _flush_outbox(self, target: _Target, now: float) -> None:
        outbox = target.outbox
        if not outbox.active:
            return
        if not target.reachable:
            if now < target.next_probe:
                return
            target.next_probe = now + PROBE_INTERVAL
            if not await target.retry_tier.ping():
                return
            target.reachable = True
            outbox.due_now()
        if outbox.epoch_owed and not await self._apply_epoch(
            target, Op(EPOCH, "", "outbox overflow"), retry=True
        ):
            return
        due = outbox.take_due(self._timer())
        if due:
            self.counters.by_type["retry"] += len(due)
            try:
                with self._timed("retry"):
                    await self._retry(target, due)
            except BaseException:
                for op in due:  # cancelled (close): back to waiting, not lost
                    outbox.retry_failed(op, "interrupted", self._timer(), transient=True)
                raise

    async def _reclaim_chunk(self, target: _Target) -> None:
        """Delete one chunk of the oldest invalidated tag's keys. ``reclaim_now`` may run
        beside the worker: the lock makes their steps take turns, so each step starts
        from the cursor the previous one left and no chunk is deleted (and counted in
        ``reclaimed_keys``) twice."""
        async with self._reclaim_lock:
            try:
                job = target.reclaim[0]
            except IndexError:
                return
            job.cursor, scanned = await target.tier.reclaim_step(
                job.tag, job.key, job.cursor, self.settings.reclaim_chunk
            )
            if target.name == PRIMARY:
                self.counters.reclaimed_keys += scanned
            if job.cursor == 0:
                target.reclaim.popleft()

    async def reclaim_now(self) -> None:
        """Run every pending reclaim to its end in the caller, without waiting for it to
        be due (tests, benchmarks)."""
        for target in self._targets:
            while target.reclaim:
                await self._reclaim_chunk(target)

    async def aclose(self) -> None:
        """Stop the worker. Delayed invalidations run now (early rather than never); the
        outbox is flushed for up to ``close_timeout`` seconds, and what is still pending
        then becomes a dead letter, and is logged."""
        self._stopping = True
        if self._leave_old_loop():
            self._worker = None  # closed from a new event loop: the old one took it
        self._wake.set()
        if self._worker is not None:
            await self._worker.stop(_STOP_TIMEOUT)
            self._worker = None
        delayed = self._delayed.take_all()
        if delayed:
            await self._run_now(delayed, fire_rules=False, depth=MAX_RULE_DEPTH)
        await self._flush_audit()
        deadline = self._timer() + self.settings.close_timeout
        for target in self._targets:
            target.outbox.due_now()
            while target.outbox.active and self._timer() < deadline:
                await self._flush_outbox(target, self._timer())
                if target.outbox.active:
                    await async_sleep(min(PROBE_INTERVAL, max(0.0, deadline - self._timer())))
            left = target.outbox.give_up()
            if left or target.outbox.epoch_owed:
                logger.warning(
                    "closing with %d operations for the %s Redis not applied%s (kept as "
                    "dead letters): their keys may serve old values until their TTL",
                    left,
                    target.name,
                    " and an epoch bump owed" if target.outbox.epoch_owed else "",
                )
