"""The outbox: writes and invalidations accepted by a cache whose Redis step has not
been applied yet, one per Redis (the primary, and the failover one if configured).
Written once for both halves (no I/O); the invalidator drives it.

Design notes
------------
* **Nothing accepted is forgotten.** A write call (``set``, ``delete``, an
  invalidation) whose Redis step fails or times out leaves a *pending operation* here
  and returns. A failed ``set`` or ``delete`` becomes a pending invalidation of the key
  (kind ``write``): the old L2 value must not come back, and a delete is safe to apply
  late, whereas replaying the write itself could overwrite a newer one. Which writes
  came first cannot be proved across processes; a delete needs no order.
* **Transient errors never dead-letter.** A timeout, a dropped connection, ``LOADING``,
  ``BUSY``, ``TRYAGAIN``, ``CLUSTERDOWN``, a failover, a restart: the operation stays
  pending, retried with capped exponential backoff for as long as it takes, and all of
  them at once as soon as Redis answers again (:meth:`Outbox.due_now`). What Redis
  refuses for good (``NOPERM``, ``WRONGTYPE``, a script error) becomes a
  :class:`DeadLetter`: inspectable and replayable, never retried in a loop.
* **Latest per target wins, and a later write cancels only once it has succeeded.** A
  pending ``write`` of a key is dropped when a newer ``set`` of that key has reached
  Redis (:meth:`Outbox.write_succeeded`); a pending *invalidation* of the key (kind
  ``key``) is kept, since it also reaches the key's dependents and rules. An operation
  being applied right now stays visible (``in flight``) until it is done, so the read
  check below never has a gap.
* **Read-your-writes while pending.** :meth:`Outbox.blocks` says whether an L2 entry may
  be an older value than this instance's pending writes (its key, one of its tags, a
  pattern or the epoch is pending): the cache then treats it as a miss. The check is
  made on the L2 path only, and only while ``active`` is true.
* **Bounded.** Past ``maxsize`` pending operations (or ``dead_letter_size`` dead
  letters) an *epoch bump* is owed instead: applied as soon as Redis answers, it makes
  every entry of the namespace a miss and covers everything that was pending.
* **A crash loses the outbox** (it lives in the process). What bounds the damage then:
  each entry's TTL in L2, and ``l1_max_ttl`` in every L1.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import NamedTuple, Optional

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterError,
    ConnectionError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from ._keys import glob_match

KEY = "key"  # an invalidation of a key (and its dependents, and its rules)
WRITE = "write"  # a set or delete of a key that did not reach Redis: delete it there
TAG = "tag"
PATTERN = "pattern"
EPOCH = "epoch"
LEASE = "lease"  # a lease whose command may have run after its caller gave up: release it

# Error replies that go away by themselves (a server loading, busy with a script, a
# cluster resharding or failing over, a replica promoted, memory full for a moment).
_TRANSIENT_REPLIES = (
    "BUSY",
    "LOADING",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "NOREPLICAS",
    "MISCONF",
    "OOM",
    "NOSCRIPT",
    "UNBLOCKED",
)


def is_transient(exc: BaseException) -> bool:
    """Whether a Redis error may go away by itself (see the module notes)."""
    if isinstance(exc, (AuthenticationError, AuthorizationError)):
        return False  # a wrong password or ACL: an operator must act
    if isinstance(
        exc,
        (
            ConnectionError,  # BusyLoadingError (LOADING) too
            TimeoutError,
            OSError,
            ClusterError,  # ClusterDownError, MasterDownError: redis-py rewrites their text
            RedisClusterException,  # a slot not covered while the cluster reshards
            TryAgainError,
            ReadOnlyError,  # a failover in progress
        ),
    ):
        return True
    if isinstance(exc, ResponseError):
        message = str(exc)
        # redis-py prefixes errors inside a pipeline: "Command # 1 (...) of pipeline
        # caused error: WRONGTYPE ..."
        _, _, reply = message.rpartition("caused error: ")
        return reply.lstrip().startswith(_TRANSIENT_REPLIES)
    # other RedisErrors: client-side (DataError) or protocol trouble: a reconnect may fix
    # the latter, so only DataError is final
    return isinstance(exc, RedisError) and type(exc).__name__ != "DataError"


class Op(NamedTuple):
    """One operation as sent to one Redis."""

    kind: str
    target: str
    reason: Optional[str] = None
    token: bytes = b""  # LEASE only: the lease token to release

    @property
    def slot(self) -> tuple[str, str, bytes]:
        """What a newer operation replaces: the same kind on the same target."""
        return (self.kind, self.target, self.token)


@dataclass(frozen=True)
class DeadLetter:
    """An operation that Redis refused for good (see ``Cache.dead_letters()``)."""

    kind: str
    """``"key"``, ``"write"``, ``"tag"``, ``"pattern"`` or ``"epoch"``."""
    target: str
    redis: str
    """``"primary"`` or ``"failover"``: which Redis refused it."""
    attempts: int
    first_failed_at: float
    """Wall-clock time of the first failure."""
    last_error: str
    reason: Optional[str] = None


@dataclass
class _Pending:
    op: Op
    attempts: int
    due: float
    first_failed_at: float
    last_error: str
    in_flight: bool = False


class Outbox:
    """Pending operations of one Redis, and its dead letters (thread-safe).

    Parameters:
        redis: ``"primary"`` or ``"failover"`` (for dead letters and logs).
        backoff: pause before the first retry; it doubles up to ``backoff_max``.
        maxsize: pending operations kept; past it an epoch bump is owed.
        dead_letter_size: dead letters kept; past it an epoch bump is owed.
    """

    def __init__(
        self,
        redis: str,
        *,
        backoff: float,
        backoff_max: float,
        maxsize: int,
        dead_letter_size: int,
    ) -> None:
        self.redis = redis
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._maxsize = maxsize
        self._dead_max = dead_letter_size
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str, bytes], _Pending] = {}
        # what the read check needs, kept beside _pending so it costs a set lookup
        self._keys: dict[str, int] = {}
        self._tags: dict[str, int] = {}
        self._patterns: dict[str, int] = {}
        self._dead: list[DeadLetter] = []
        self.epoch_owed = False
        """An operation could not be kept: an epoch bump must be applied to this Redis."""
        self.active = False
        """Anything pending or owed (the read path looks at nothing else when False)."""
        self.overflows = 0
        self.applied = 0
        """Pending operations applied (after a failure), since the start."""

    # -- recording --------------------------------------------------------------------

    def _delay(self, attempts: int) -> float:
        return float(min(self._backoff_max, self._backoff * (2 ** max(0, attempts - 1))))

    def failed(
        self, op: Op, error: str, now: float, wall: float, *, transient: bool = True
    ) -> Optional[DeadLetter]:
        """Record a failed try of ``op``. A transient failure keeps it pending (replacing
        an older operation on the same target, or counting one more try of it); a final
        one makes it a dead letter, which is returned."""
        with self._lock:
            if op.kind == EPOCH:
                self.epoch_owed = True
                self.active = True
                return None
            previous = self._pending.get(op.slot)
            first = previous.first_failed_at if previous is not None else wall
            attempts = previous.attempts + 1 if previous is not None else 1
            if not transient:
                if previous is not None:
                    self._remove(op.slot)
                if len(self._dead) >= self._dead_max:
                    self.overflows += 1
                    self.epoch_owed = True
                    self.active = True
                    return None
                letter = DeadLetter(
                    op.kind, op.target, self.redis, attempts, first, error, op.reason
                )
                self._dead.append(letter)
                self.active = bool(self._pending) or self.epoch_owed
                return letter
            if previous is None and len(self._pending) >= self._maxsize:
                self.overflows += 1
                self.epoch_owed = True
                self.active = True
                return None
            if previous is None:
                self._index(op, +1)
            self._pending[op.slot] = _Pending(
                op, attempts, now + self._delay(attempts), first, error
            )
            self.active = True
            return None

    def _index(self, op: Op, delta: int) -> None:
        if op.kind in (KEY, WRITE):
            index = self._keys
        elif op.kind == TAG:
            index = self._tags
        elif op.kind == PATTERN:
            index = self._patterns
        else:
            return
        count = index.get(op.target, 0) + delta
        if count > 0:
            index[op.target] = count
        else:
            index.pop(op.target, None)

    def _remove(self, slot: tuple[str, str, bytes]) -> None:
        pending = self._pending.pop(slot, None)
        if pending is not None:
            self._index(pending.op, -1)
        self.active = bool(self._pending) or self.epoch_owed

    # -- the worker's side ------------------------------------------------------------

    def take_due(self, now: float, limit: int = 1000) -> list[Op]:
        """Up to ``limit`` operations whose time has come, marked in flight (they stay
        visible to :meth:`blocks` until :meth:`done` or :meth:`failed`)."""
        with self._lock:
            out = []
            for pending in self._pending.values():
                if not pending.in_flight and pending.due <= now:
                    pending.in_flight = True
                    out.append(pending.op)
                    if len(out) >= limit:
                        break
            return out

    def done(self, op: Op) -> None:
        """``op`` was applied: forget it (unless a newer operation replaced it meanwhile)."""
        with self._lock:
            pending = self._pending.get(op.slot)
            if pending is not None and pending.op is op:
                self._remove(op.slot)
                self.applied += 1

    def retry_failed(
        self, op: Op, error: str, now: float, *, transient: bool
    ) -> Optional[DeadLetter]:
        """A retry of ``op`` failed: back off (or dead-letter it if the error is final)."""
        with self._lock:
            pending = self._pending.get(op.slot)
            if pending is None or pending.op is not op:
                return None  # cancelled or replaced meanwhile
            pending.in_flight = False
        return self.failed(op, error, now, pending.first_failed_at, transient=transient)

    def due_now(self) -> None:
        """Redis answers again: every pending operation is due at once."""
        with self._lock:
            for pending in self._pending.values():
                pending.due = 0.0

    def next_due(self) -> Optional[float]:
        """When the earliest waiting operation is due (``None``: none waits)."""
        with self._lock:
            if self.epoch_owed:
                return 0.0
            return min((p.due for p in self._pending.values() if not p.in_flight), default=None)

    def covered_by_epoch(self) -> int:
        """The epoch bump was applied: every pending operation is covered; drop them."""
        with self._lock:
            dropped = len(self._pending)
            self._pending.clear()
            self._keys.clear()
            self._tags.clear()
            self._patterns.clear()
            self.epoch_owed = False
            self.active = False
            return dropped

    # -- the writers' side ------------------------------------------------------------

    def write_succeeded(self, keys: list[str]) -> None:
        """A write of ``keys`` reached Redis: their pending ``write`` operations are moot
        (invalidations of them are kept: they reach dependents and rules too)."""
        if not self.active:
            return
        with self._lock:
            for key in keys:
                slot = (WRITE, key, b"")
                if slot in self._pending:
                    self._remove(slot)

    def blocks(self, key: str, tags: tuple[str, ...]) -> bool:
        """Whether an L2 entry of ``key`` with ``tags`` may predate a pending operation
        of this instance (read-your-writes: it must not be served)."""
        if self.epoch_owed or key in self._keys:
            return True
        if self._tags and any(tag in self._tags for tag in tags):
            return True
        if self._patterns:
            with self._lock:
                patterns = list(self._patterns)
            return any(glob_match(pattern, key) for pattern in patterns)
        return False

    # -- dead letters and shutdown ------------------------------------------------------

    def give_up(self) -> int:
        """Turn every pending operation into a dead letter (on close); how many."""
        with self._lock:
            waiting = [p for p in self._pending.values() if p.op.kind != LEASE]
            self._pending.clear()
            self._keys.clear()
            self._tags.clear()
            self._patterns.clear()
            self.active = self.epoch_owed
            for p in waiting:
                self._dead.append(
                    DeadLetter(
                        p.op.kind,
                        p.op.target,
                        self.redis,
                        p.attempts,
                        p.first_failed_at,
                        p.last_error,
                        p.op.reason,
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
