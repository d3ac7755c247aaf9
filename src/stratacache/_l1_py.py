"""The in-process L1, in pure Python: the readable specification of ``stratacache.L1``.

The compiled class (``cython_ext/_l1_c.pyx``) must behave exactly like this one; the
contract suite and the stateful test run over both. The design notes (eviction, expiry,
the stale-fill guard, concurrency) are at the top of the ``.pyx``; this module only
repeats what differs here.

Built on cachetools: an ``LRUCache`` (maxsize = infinity, ``getsizeof`` = the entry's
weight) keeps recency order and the total weight; this class bounds count and weight
itself, because cachetools has one bound and we have two, and because it must pick
expired entries before live ones when it makes room. ``TLRUCache`` is not used: it
drops *every* expired item on every write and on ``len()``, which is unbounded work and
a different observable behaviour from the compiled cache's bounded ``expire()``.
Expiry order is a ``heapq`` of ``(deadline, seq, key)`` with lazy deletion.

Concurrency: cachetools is not thread-safe, so every operation holds one
``threading.RLock``; ``on_evict`` runs after the lock is released.
"""

from __future__ import annotations

import datetime
import fnmatch
import heapq
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final, Union

from cachetools import Cache, LRUCache

from ._sentinel import MISSING
from ._tinylfu import FrequencySketch, stable_hash

__all__ = ["L1"]

_log = logging.getLogger("stratacache.l1")

_INF: Final = math.inf
_DEFAULT_EXPIRE_LIMIT: Final = 1000
# Tag epochs are remembered only while tickets are outstanding; past this many the map
# is replaced by one "every tag was invalidated now" floor (safe: it can only refuse).
_TAG_EPOCHS_LIMIT: Final = 4096

TTL = Union[float, int, datetime.timedelta, None]
Weigher = Callable[[Any, Any], int]
OnEvict = Callable[[Any, Any, str], object]
Timer = Callable[[], float]
_Note = tuple[Any, Any, str]

POLICIES: Final = ("lru", "tinylfu")
_WINDOW: Final = 0
_PROBATION: Final = 1
_PROTECTED: Final = 2
_NO_KEY: Final = object()
_MISS: Final = object()  # get_unless_due's private miss marker


def _ttl_seconds(ttl: TTL) -> float:
    """``ttl`` as float seconds, ``inf`` for no expiry; ``ValueError`` if negative or NaN."""
    if ttl is None:
        return _INF
    if isinstance(ttl, datetime.timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        raise TypeError(f"ttl must be seconds, a timedelta or None, not {type(ttl).__name__}")
    if not seconds >= 0.0:  # also catches NaN
        raise ValueError(f"ttl must be >= 0, got {ttl!r}")
    return seconds


def _tag_tuple(tags: Iterable[str]) -> tuple[str, ...]:
    """``tags`` as a duplicate-free tuple of ``str``; a bare string is refused."""
    if isinstance(tags, (str, bytes)):
        raise TypeError("tags must be an iterable of str, not a single string")
    if type(tags) is tuple and not tags:
        return ()
    result = tuple(dict.fromkeys(tags))
    for tag in result:
        if not isinstance(tag, str):
            raise TypeError(f"a tag must be a str, not {type(tag).__name__}")
    return result


def _check_tag(tag: object) -> str:
    if not isinstance(tag, str):
        raise TypeError(f"a tag must be a str, not {type(tag).__name__}")
    return tag


def _bound(value: object, name: str) -> int:
    """A positive int limit (``maxsize`` / ``max_weight``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class _Entry:
    """One cached value and what the cache needs to know about it."""

    __slots__ = ("deadline", "region", "seq", "tags", "value", "weight")

    def __init__(
        self, value: Any, deadline: float, tags: tuple[str, ...], weight: int, seq: int
    ) -> None:
        self.region = _WINDOW  # tinylfu policy only
        self.value = value
        self.deadline = deadline
        self.tags = tags
        self.weight = weight
        self.seq = seq  # tie-break between equal deadlines: oldest write expires first


class _Pending:
    """Outstanding tickets for one key and the epoch of its last write/invalidation."""

    __slots__ = ("epoch", "refcount")

    def __init__(self) -> None:
        self.refcount = 0
        self.epoch = 0


def _entry_weight(entry: _Entry) -> int:
    return entry.weight


class L1:
    """Bounded in-process LRU of live objects with per-entry TTL, tags and a stale-fill guard.

    Args:
        maxsize: the most entries kept (``>= 1``).
        max_weight: if given, the most total weight kept (``>= 1``).
        weigher: ``weigher(key, value) -> int >= 0``, called before the cache changes;
            without it every entry weighs 1.
        timer: a monotonic clock returning float seconds; ``time.monotonic`` if None.
        on_evict: ``on_evict(key, value, cause)`` with cause ``"size"``, ``"expired"``
            or ``"invalidated"``, called after the operation finished; an exception
            from it is logged (logger ``stratacache.l1``) and swallowed.
        policy: ``"lru"`` (default) evicts the least recently used entry; ``"tinylfu"``
            is W-TinyLFU as in Caffeine: new entries enter a window LRU (1 % of
            ``maxsize``); one leaving it is admitted to the main SLRU (probation +
            protected, 20/80) only if a count-min sketch of recent accesses (``get``
            hits and writes) says it is used more often than the main region's victim.
            Entries that are hit once and never again (scans) no longer push out the
            frequently used ones. See docs/l1.md.
    """

    def __init__(
        self,
        maxsize: int,
        *,
        max_weight: int | None = None,
        weigher: Weigher | None = None,
        timer: Timer | None = None,
        on_evict: OnEvict | None = None,
        policy: str = "lru",
    ) -> None:
        for name, fn in (("weigher", weigher), ("timer", timer), ("on_evict", on_evict)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable")
        self._maxsize = _bound(maxsize, "maxsize")
        self._max_weight = None if max_weight is None else _bound(max_weight, "max_weight")
        self._weigher = weigher
        self._timer: Timer = time.monotonic if timer is None else timer
        self._on_evict = on_evict
        if not isinstance(policy, str):
            raise TypeError(f"policy must be a str, not {type(policy).__name__}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be 'lru' or 'tinylfu', got {policy!r}")
        self._policy = policy
        self._tinylfu = policy == "tinylfu"
        # tinylfu: regions as ordered key sets (LRU first) and the sketch
        self._window: OrderedDict[Hashable, None] = OrderedDict()
        self._probation: OrderedDict[Hashable, None] = OrderedDict()
        self._protected: OrderedDict[Hashable, None] = OrderedDict()
        self._window_max = max(1, self._maxsize // 100)
        self._protected_max = (self._maxsize - self._window_max) * 4 // 5
        self._sketch = FrequencySketch(self._maxsize) if self._tinylfu else None
        self._lock = threading.RLock()
        self._lru: LRUCache[Hashable, _Entry] = LRUCache(_INF, getsizeof=_entry_weight)
        self._expiry: list[tuple[float, int, Hashable]] = []  # heap, stale items skipped
        self._timed = 0  # entries with a finite deadline
        self._tags: dict[str, dict[Hashable, None]] = {}
        self._seq = 0
        self._hits = self._misses = self._evictions = 0
        self._expirations = self._invalidations = 0
        # stale-fill guard
        self._epoch = 0
        self._clear_epoch = 0
        self._pending: dict[Hashable, _Pending] = {}
        self._tag_epochs: dict[str, int] = {}
        self._tag_floor = 0

    # -- reading ----------------------------------------------------------------------

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The live value for ``key`` (marked most recently used), else ``default``."""
        with self._lock:
            entry = self._entry(key)
            if entry is None:
                self._misses += 1
                return default
            if entry.deadline == _INF or self._timer() < entry.deadline:
                self._lru[key]  # cachetools' __getitem__ is what moves it to MRU
                if self._tinylfu:
                    self._lfu_hit(key, entry)
                self._hits += 1
                return entry.value
            self._misses += 1
            notes = [self._expire_entry(key, entry)]
        self._notify(notes)
        return default

    def get_unless_due(
        self, key: Hashable, default: Any, due: dict[Any, float], clock: Callable[[], float]
    ) -> Any:
        """:meth:`get`, except that a live value whose time in ``due`` has come (``due[key]``,
        a float, ``<= clock()``) is answered with ``default`` and left as it is.

        The tiered cache's early-refresh hit: the compiled twin tells "return the value"
        from "the key is due for a refresh (or missing)" in one C call. A hit is counted
        and marked recently used whether due or not; ``clock`` is called only for keys in
        ``due``, after the L1 operation ended.
        """
        if not isinstance(due, dict):
            raise TypeError(f"due must be a dict, not {type(due).__name__}")
        value = self.get(key, _MISS)
        if value is _MISS:
            return default
        refresh_at = due.get(key)
        if refresh_at is None or clock() < refresh_at:
            return value
        return default

    def getter(self, fallback: Callable[[Hashable, Any], Any]) -> Callable[..., Any]:
        """A callable ``(key, default=None)`` answering hits like :meth:`get` and passing
        misses to ``fallback(key, default)``.

        The tiered cache binds it as its ``get``; the compiled twin makes a hit one C call.
        """
        if not callable(fallback):
            raise TypeError(f"fallback must be callable, not {type(fallback).__name__}")
        get = self.get
        miss = object()

        def lookup(key: Hashable, default: Any = None) -> Any:
            value = get(key, miss)
            if value is miss:
                return fallback(key, default)
            return value

        return lookup

    def memoized(
        self,
        make_key: Callable[[tuple[Any, ...], dict[str, Any]], Hashable],
        fallback: Callable[[Hashable, tuple[Any, ...], dict[str, Any]], Any],
        memo: dict[Hashable, Hashable] | None = None,
        skip: int = 0,
    ) -> Callable[..., Any]:
        """A function-like callable ``(*args, **kwargs)``: the L1 value under
        ``make_key(args, kwargs)``, else ``fallback(key, args, kwargs)``.

        ``memo`` (optional) is a dict that ``make_key`` keeps from arguments to keys,
        for calls without keywords whose arguments from position ``skip`` on are all of
        exact type ``str`` or ``int``: a single such argument is its own memo key, several
        are keyed by their tuple. The compiled twin looks it up first and skips
        ``make_key`` when it has the key. It is only read, so results are as if
        ``make_key`` ran every time (which is what this spec does). The callable takes
        attributes (for ``functools.wraps``) and binds like a function when it is a class
        attribute. The tiered cache makes its decorated functions with it.
        """
        if not callable(make_key):
            raise TypeError(f"make_key must be callable, not {type(make_key).__name__}")
        if not callable(fallback):
            raise TypeError(f"fallback must be callable, not {type(fallback).__name__}")
        if memo is not None and type(memo) is not dict:
            raise TypeError(f"memo must be a dict or None, not {type(memo).__name__}")
        if not isinstance(skip, int):
            raise TypeError(f"skip must be an int, not {type(skip).__name__}")
        if skip < 0:
            raise ValueError("skip must be >= 0")
        get = self.get
        miss = object()

        def call(*args: Any, **kwargs: Any) -> Any:
            key = make_key(args, kwargs)
            value = get(key, miss)
            if value is miss:
                return fallback(key, args, kwargs)
            return value

        return call

    def peek(self, key: Hashable, default: Any = None) -> Any:
        """The live value for ``key`` without touching recency or hit/miss counters."""
        notes: list[_Note] = []
        with self._lock:
            entry = self._live(key, notes)
        self._notify(notes)
        return default if entry is None else entry.value

    def __contains__(self, key: Hashable) -> bool:
        """Whether ``key`` has a live entry (no recency or counter change)."""
        notes: list[_Note] = []
        with self._lock:
            entry = self._live(key, notes)
        self._notify(notes)
        return entry is not None

    def tags_of(self, key: Hashable) -> tuple[str, ...]:
        """The tags of the live entry for ``key``; ``()`` if there is none."""
        notes: list[_Note] = []
        with self._lock:
            entry = self._live(key, notes)
        self._notify(notes)
        return () if entry is None else entry.tags

    def __len__(self) -> int:
        """Entries stored, including expired ones not dropped yet (see ``expire``)."""
        with self._lock:  # tinylfu inserts before it evicts: never show the +1 in between
            return len(self._lru)

    def keys(self) -> list[Hashable]:
        """A snapshot of the live keys (order unspecified)."""
        with self._lock:
            now = self._timer() if self._timed else -_INF
            return [k for k, e in self._items() if not e.deadline <= now]

    def keys_for_tag(self, tag: str) -> list[Hashable]:
        """A snapshot of the live keys carrying ``tag``."""
        _check_tag(tag)
        with self._lock:
            keys = self._tags.get(tag)
            if not keys:
                return []
            now = self._timer() if self._timed else -_INF
            return [k for k in keys if not self._stored(k).deadline <= now]

    # -- writing ----------------------------------------------------------------------

    def set(self, key: Hashable, value: Any, ttl: TTL = None, tags: Iterable[str] = ()) -> None:
        """Store ``value`` under ``key`` as most recently used.

        ``ttl`` is seconds (or a ``timedelta``) from now, ``None`` for no expiry; a ttl of 0
        stores nothing and drops any previous entry. ``tags`` replace the key's old tags.
        Raises ``TypeError`` (unhashable key, non-``str`` tag), ``ValueError`` (negative or
        NaN ttl, an entry heavier than ``max_weight``) before anything changes.
        """
        seconds, tagt, weight = self._prepare(key, value, ttl, tags)
        with self._lock:
            notes = self._store(key, value, seconds, tagt, weight)
        self._notify(notes)

    def delete(self, key: Hashable) -> bool:
        """Remove ``key``; whether a live entry was removed. ``on_evict`` is not called."""
        notes: list[_Note] = []
        with self._lock:
            self._bump_key(key)
            entry = self._live(key, notes)
            if entry is not None:
                self._drop(key, entry)
        self._notify(notes)
        return entry is not None

    def pop(self, key: Hashable, default: Any = MISSING) -> Any:
        """Remove ``key`` and return its value; ``default`` if absent, else ``KeyError``."""
        notes: list[_Note] = []
        with self._lock:
            self._bump_key(key)
            entry = self._live(key, notes)
            if entry is not None:
                self._drop(key, entry)
        self._notify(notes)
        if entry is not None:
            return entry.value
        if default is MISSING:
            raise KeyError(key)
        return default

    def reset(self) -> None:
        """Forget everything as a new L1 would: entries, outstanding tickets, counters.

        For a forked child (gunicorn ``--preload``, multiprocessing "fork"): the object
        stays the same, so callables bound to it (``getter``, ``memoized``) keep working,
        but nothing of the parent's remains — not even a lock a parent thread held at the
        fork, nor state it left half-changed. Tickets taken before are
        forgotten: installing or releasing one raises ``ValueError``, as for any ticket
        that is not outstanding.
        """
        epoch = self._epoch + 1  # outlives the rebuild: earlier tickets stay refused
        self.__init__(  # type: ignore[misc]
            self._maxsize,
            max_weight=self._max_weight,
            weigher=self._weigher,
            timer=self._timer,
            on_evict=self._on_evict,
            policy=self._policy,
        )
        self._epoch = self._clear_epoch = epoch

    def clear(self) -> None:
        """Remove everything; no ``on_evict`` calls and no counters change."""
        with self._lock:
            self._lru.clear()
            self._window.clear()
            self._probation.clear()
            self._protected.clear()
            self._expiry.clear()
            self._timed = 0
            self._tags.clear()
            self._epoch += 1
            self._clear_epoch = self._epoch

    def expire(self, limit: int = _DEFAULT_EXPIRE_LIMIT) -> int:
        """Drop at most ``limit`` expired entries, earliest deadline first; how many."""
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError("limit must be an int")
        if limit < 0:
            raise ValueError("limit must be >= 0")
        notes: list[_Note] = []
        with self._lock:
            if self._timed:
                now = self._timer()
                while len(notes) < limit:
                    key = self._expired_head(now)
                    if key is None:
                        break
                    notes.append(self._expire_entry(key, self._stored(key)))
        self._notify(notes)
        return len(notes)

    # -- invalidation -----------------------------------------------------------------

    def invalidate(self, key: Hashable) -> bool:
        """Remove ``key`` as an invalidation (counted, ``on_evict`` cause ``"invalidated"``)."""
        notes: list[_Note] = []
        with self._lock:
            self._bump_key(key)
            entry = self._live(key, notes)
            if entry is not None:
                self._invalidate_entry(key, entry, notes)
        self._notify(notes)
        return entry is not None

    def invalidate_tag(self, tag: str) -> int:
        """Invalidate every entry carrying ``tag``; how many live entries were removed."""
        return self.invalidate_tags((_check_tag(tag),))

    def invalidate_tags(self, tags: Iterable[str]) -> int:
        """Invalidate every entry carrying any of ``tags``; how many live entries."""
        tagt = _tag_tuple(tags)
        notes: list[_Note] = []
        with self._lock:
            now = self._timer() if self._timed else -_INF
            for tag in tagt:
                self._bump_tag(tag)
                for key in list(self._tags.get(tag, ())):
                    self._bump_key(key)
                    self._remove_for_invalidation(key, now, notes)
        self._notify(notes)
        return sum(1 for note in notes if note[2] == "invalidated")

    def invalidate_matching(self, glob: str) -> int:
        """Invalidate every ``str`` key matching ``glob`` (``fnmatch.fnmatchcase`` rules)."""
        if not isinstance(glob, str):
            raise TypeError("glob must be a str")
        match = re.compile(fnmatch.translate(glob)).match
        notes: list[_Note] = []
        with self._lock:
            # Keys being loaded right now are not stored yet, but their install must fail.
            for key in self._pending:
                if isinstance(key, str) and match(key):
                    self._bump_key(key)
            now = self._timer() if self._timed else -_INF
            for key in [k for k in self._lru if isinstance(k, str) and match(k)]:
                self._remove_for_invalidation(key, now, notes)
        self._notify(notes)
        return sum(1 for note in notes if note[2] == "invalidated")

    # -- stale-fill guard -------------------------------------------------------------

    def ticket(self, key: Hashable) -> int:
        """Take a ticket for ``key`` before loading it; return it by ``install`` or ``release``."""
        hash(key)
        with self._lock:
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = _Pending()
            pending.refcount += 1
            return self._epoch

    def tickets(self, keys: list[Any]) -> list[int]:
        """``ticket`` of each of ``keys`` (a list of hashable keys), as a list, in one
        call (``get_many`` takes one per key it reads from L2). If a key cannot be
        hashed, no ticket is taken."""
        for key in keys:
            hash(key)
        with self._lock:
            epoch = self._epoch
            pending_of = self._pending
            for key in keys:
                pending = pending_of.get(key)
                if pending is None:
                    pending = pending_of[key] = _Pending()
                pending.refcount += 1
            return [epoch] * len(keys)

    def install(
        self,
        ticket: int,
        key: Hashable,
        value: Any,
        ttl: TTL = None,
        tags: Iterable[str] = (),
    ) -> bool:
        """Store like ``set`` unless ``key``, one of ``tags``, or the whole cache was written
        or invalidated since ``ticket`` was taken; always gives the ticket back.

        Returns whether the value was stored. ``ValueError`` if no ticket for ``key`` is
        outstanding.
        """
        try:
            seconds, tagt, weight = self._prepare(key, value, ttl, tags)
        except BaseException:
            self.release(ticket, key)
            raise
        with self._lock:
            pending = self._pending_for(ticket, key)
            fresh = (
                pending.epoch <= ticket
                and self._clear_epoch <= ticket
                and (
                    not tagt
                    or (
                        self._tag_floor <= ticket
                        and all(self._tag_epochs.get(t, 0) <= ticket for t in tagt)
                    )
                )
            )
            self._release(key, pending)
            notes = self._store(key, value, seconds, tagt, weight) if fresh else []
        self._notify(notes)
        return fresh

    def release(self, ticket: int, key: Hashable) -> None:
        """Give back a ticket for ``key`` without installing (the load failed)."""
        with self._lock:
            self._release(key, self._pending_for(ticket, key))

    # -- counters and sizes -----------------------------------------------------------

    @property
    def hits(self) -> int:
        """``get`` calls that found a live entry."""
        return self._hits

    @property
    def misses(self) -> int:
        """``get`` calls that found nothing live."""
        return self._misses

    @property
    def evictions(self) -> int:
        """Live entries removed to respect ``maxsize`` / ``max_weight``."""
        return self._evictions

    @property
    def expirations(self) -> int:
        """Expired entries dropped (on access, to make room, or by ``expire``)."""
        return self._expirations

    @property
    def invalidations(self) -> int:
        """Live entries removed by ``invalidate*``."""
        return self._invalidations

    def counters(self) -> dict[str, int]:
        """All counters as a new dict."""
        with self._lock:
            return {
                "hits": self._hits,
                "misses": self._misses,
                "evictions": self._evictions,
                "expirations": self._expirations,
                "invalidations": self._invalidations,
            }

    def reset_counters(self) -> None:
        """Set every counter to zero."""
        with self._lock:
            self._hits = self._misses = self._evictions = 0
            self._expirations = self._invalidations = 0

    @property
    def weight(self) -> int:
        """Total weight of the stored entries."""
        with self._lock:
            return int(self._lru.currsize)

    @property
    def policy(self) -> str:
        """The eviction policy: ``"lru"`` or ``"tinylfu"``."""
        return self._policy

    @property
    def maxsize(self) -> int:
        """The most entries kept."""
        return self._maxsize

    @property
    def max_weight(self) -> int | None:
        """The most total weight kept, or None."""
        return self._max_weight

    def __repr__(self) -> str:
        return f"<{type(self).__name__} len={len(self)} maxsize={self._maxsize} (pure)>"

    # -- internals (lock held unless said otherwise) ------------------------------------

    def _prepare(
        self, key: Hashable, value: Any, ttl: TTL, tags: Iterable[str]
    ) -> tuple[float, tuple[str, ...], int]:
        """Validate a write and run the weigher, before the lock and before any change."""
        hash(key)
        seconds = _ttl_seconds(ttl)
        tagt = _tag_tuple(tags)
        weight = 1
        if self._weigher is not None:
            weight = self._weigher(key, value)
            if isinstance(weight, bool) or not isinstance(weight, int):
                raise TypeError(f"weigher must return an int, not {type(weight).__name__}")
            if weight < 0:
                raise ValueError(f"weigher returned a negative weight: {weight}")
        if self._max_weight is not None and weight > self._max_weight:
            raise ValueError(f"entry weight {weight} exceeds max_weight {self._max_weight}")
        return seconds, tagt, weight

    def _store(
        self, key: Hashable, value: Any, seconds: float, tags: tuple[str, ...], weight: int
    ) -> list[_Note]:
        notes: list[_Note] = []
        now = self._timer() if (seconds != _INF or self._timed) else -_INF
        if self._sketch is not None:
            self._sketch.increment(stable_hash(key))  # a write is an access
        self._bump_key(key)
        old = self._entry(key)
        if old is not None:
            if old.deadline <= now:
                notes.append(self._expire_entry(key, old))
            else:
                self._drop(key, old)  # replaced: not an eviction
        deadline = _INF if seconds == _INF else now + seconds
        if deadline <= now:  # ttl == 0: expired on arrival, never stored
            return notes
        while not self._tinylfu and (
            len(self._lru) >= self._maxsize
            or (self._max_weight is not None and self._lru.currsize + weight > self._max_weight)
        ):
            expired = self._expired_head(now)
            if expired is not None:  # an expired entry goes before any live one
                notes.append(self._expire_entry(expired, self._stored(expired)))
            else:
                victim, entry = self._lru.popitem()
                self._unindex(victim, entry)
                self._evictions += 1
                notes.append((victim, entry.value, "size"))
        self._seq += 1
        self._lru[key] = _Entry(value, deadline, tags, weight, self._seq)
        for tag in tags:
            self._tags.setdefault(tag, {})[key] = None
        if deadline != _INF:
            self._timed += 1
            heapq.heappush(self._expiry, (deadline, self._seq, key))
        if self._tinylfu:  # the new entry is in the window: make room after inserting it
            self._window[key] = None
            self._lfu_make_room(now, notes)
        return notes

    # -- tinylfu policy -----------------------------------------------------------------

    def _freq(self, key: Hashable) -> int:
        assert self._sketch is not None
        return self._sketch.frequency(stable_hash(key))

    def _lfu_hit(self, key: Hashable, entry: _Entry) -> None:
        assert self._sketch is not None
        self._sketch.increment(stable_hash(key))
        if entry.region == _WINDOW:
            self._window.move_to_end(key)
        elif entry.region == _PROBATION:
            del self._probation[key]
            self._protected[key] = None
            entry.region = _PROTECTED
            if len(self._protected) > self._protected_max:
                demoted, _ = self._protected.popitem(last=False)
                self._probation[demoted] = None
                self._stored(demoted).region = _PROBATION
        else:
            self._protected.move_to_end(key)

    def _lfu_make_room(self, now: float, notes: list[_Note]) -> None:
        """Window overflow to probation, then evict while over a bound: an expired entry
        first, else the probation LRU (victim) or the candidate (the last entry moved out
        of the window by this write), whichever the sketch says is less frequent (ties
        evict the candidate); without a candidate, the victim."""
        candidate: Hashable = _NO_KEY
        while len(self._window) > self._window_max:
            candidate, _ = self._window.popitem(last=False)
            self._probation[candidate] = None
            self._stored(candidate).region = _PROBATION
        while len(self._lru) > self._maxsize or (
            self._max_weight is not None and self._lru.currsize > self._max_weight
        ):
            expired = self._expired_head(now)
            if expired is not None:
                notes.append(self._expire_entry(expired, self._stored(expired)))
                continue
            if self._probation:
                victim = next(iter(self._probation))
                if (
                    candidate is not _NO_KEY
                    and candidate is not victim
                    and candidate in self._probation
                    and not self._freq(candidate) > self._freq(victim)
                ):
                    victim = candidate
            elif self._protected:
                victim = next(iter(self._protected))
            else:
                victim = next(iter(self._window))
            entry = self._stored(victim)
            self._drop(victim, entry)
            self._evictions += 1
            notes.append((victim, entry.value, "size"))

    def _entry(self, key: Hashable) -> _Entry | None:
        """The stored entry, expired or not, without touching recency."""
        try:
            return Cache.__getitem__(self._lru, key)  # LRUCache's own would reorder
        except KeyError:
            return None

    def _stored(self, key: Hashable) -> _Entry:
        return Cache.__getitem__(self._lru, key)

    def _items(self) -> Iterable[tuple[Hashable, _Entry]]:
        return ((k, self._stored(k)) for k in self._lru)

    def _live(self, key: Hashable, notes: list[_Note]) -> _Entry | None:
        """The live entry for ``key``; an expired one is dropped (noted) and None returned."""
        entry = self._entry(key)
        if entry is None or entry.deadline == _INF or self._timer() < entry.deadline:
            return entry
        notes.append(self._expire_entry(key, entry))
        return None

    def _expired_head(self, now: float) -> Hashable | None:
        """The key with the earliest deadline if that deadline has passed, else None."""
        heap = self._expiry
        while heap:
            deadline, seq, key = heap[0]
            entry = self._entry(key)
            if entry is None or entry.seq != seq:
                heapq.heappop(heap)  # stale: that entry was removed or replaced
                continue
            return key if deadline <= now else None
        return None

    def _expire_entry(self, key: Hashable, entry: _Entry) -> _Note:
        self._drop(key, entry)
        self._expirations += 1
        return (key, entry.value, "expired")

    def _invalidate_entry(self, key: Hashable, entry: _Entry, notes: list[_Note]) -> None:
        self._drop(key, entry)
        self._invalidations += 1
        notes.append((key, entry.value, "invalidated"))

    def _remove_for_invalidation(self, key: Hashable, now: float, notes: list[_Note]) -> None:
        entry = self._stored(key)
        if entry.deadline <= now:
            notes.append(self._expire_entry(key, entry))
        else:
            self._invalidate_entry(key, entry, notes)

    def _drop(self, key: Hashable, entry: _Entry) -> None:
        del self._lru[key]
        if self._tinylfu:
            if entry.region == _WINDOW:
                del self._window[key]
            elif entry.region == _PROBATION:
                del self._probation[key]
            else:
                del self._protected[key]
        self._unindex(key, entry)

    def _unindex(self, key: Hashable, entry: _Entry) -> None:
        """Forget a removed entry in the tag index and the expiry bookkeeping."""
        for tag in entry.tags:
            keys = self._tags[tag]
            del keys[key]
            if not keys:
                del self._tags[tag]
        if entry.deadline != _INF:
            self._timed -= 1
            if len(self._expiry) > 2 * self._timed + 64:  # too many stale heap items
                self._expiry = [
                    item
                    for item in self._expiry
                    if self._entry(item[2]) is not None and self._stored(item[2]).seq == item[1]
                ]
                heapq.heapify(self._expiry)

    def _bump_key(self, key: Hashable) -> None:
        if self._pending:
            pending = self._pending.get(key)
            if pending is not None:
                self._epoch += 1
                pending.epoch = self._epoch

    def _bump_tag(self, tag: str) -> None:
        if self._pending:
            self._epoch += 1
            self._tag_epochs[tag] = self._epoch
            if len(self._tag_epochs) > _TAG_EPOCHS_LIMIT:
                self._tag_floor = self._epoch
                self._tag_epochs.clear()

    def _pending_for(self, ticket: int, key: Hashable) -> _Pending:
        if isinstance(ticket, bool) or not isinstance(ticket, int):
            raise TypeError("ticket must be an int")
        pending = self._pending.get(key)
        if pending is None or not 0 <= ticket <= self._epoch:
            raise ValueError(f"no outstanding ticket {ticket} for key {key!r}")
        return pending

    def _release(self, key: Hashable, pending: _Pending) -> None:
        pending.refcount -= 1
        if pending.refcount == 0:
            del self._pending[key]
            if not self._pending:  # no ticket can be older than what comes next
                self._tag_epochs.clear()
                self._tag_floor = 0

    def _notify(self, notes: list[_Note]) -> None:
        """Call ``on_evict`` for each note; called with the lock released."""
        on_evict = self._on_evict
        if on_evict is None:
            return
        for key, value, cause in notes:
            try:
                on_evict(key, value, cause)
            except Exception:
                _log.exception("on_evict(%r, ..., %r) raised; ignored", key, cause)
