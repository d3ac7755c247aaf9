"""``AdaptiveTTL``: a TTL that follows how often each key is read in this process (no I/O).

Pass it wherever a TTL for a value is accepted (``get_or_set``, ``cached``; ``set`` and
``set_many`` take it too, as a fill with no read history). Keys read often then live
longer and keys rarely read expire sooner, without a TTL per key to tune by hand.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable
from datetime import timedelta
from typing import Any

from ._options import Duration, to_seconds

__all__ = ["AdaptiveTTL", "check_ttl_option", "is_dynamic_ttl", "resolve_ttl"]


class AdaptiveTTL:
    """A TTL between ``min`` and ``max`` chosen per key from its recent reads.

    The rule, exactly. For each key it keeps, in this process, when its current entry
    was filled (``filled_at``, by ``timer``), the TTL it got (``ttl``) and ``reads``: the
    cache hits on that entry through a call that passed this ``AdaptiveTTL`` (L1 hits of
    ``get_or_set`` and of ``cached`` functions; plain ``get`` does not count). At the
    next fill of the key, at ``now``::

        gap     = max(ttl, now - filled_at) / (reads + 1)   # 1 / read rate
        new_ttl = max(min, sqrt(gap**2 + max**2) - gap)

    and ``reads`` starts again from 0 (the ``+ 1`` counts the read that found the entry
    expired and fills it). A key filled for the first time (or forgotten, see
    ``max_keys``) gets ``min``. ``new_ttl`` grows with the read rate ``1 / gap``: about
    ``max**2 / (2 * gap)`` for a rarely read key (never below ``min``), close to ``max``
    for a key read many times per ``max`` seconds, never above it. This is,
    approximately, the TTL that minimises loader calls for a given stale key-time (each
    key weighing the same, sources changing out of band; see docs/read-path.md), with its
    constant set by ``max``. The ``max(ttl, ...)`` term spreads the reads over the whole
    time since the last fill, so a key that was hot an hour ago and cold since does not
    come back with a long TTL.

    ``max_keys`` bounds the history (oldest fills forgotten first). Counting is
    approximate under threads (a racing increment may be lost: it only shortens a TTL
    a little). The history is per process: every process adapts to its own reads.

    ``timer`` is a monotonic clock (tests pass a fake one).
    """

    __slots__ = ("_history", "_lock", "_max", "_max_keys", "_min", "_timer")

    def __init__(
        self,
        min: Duration,
        max: Duration,
        *,
        max_keys: int = 100_000,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        low = to_seconds(min, "min", allow_zero=False)
        high = to_seconds(max, "max", allow_zero=False)
        if high < low:
            raise ValueError(f"max ({high}) must be >= min ({low})")
        if type(max_keys) is not int or max_keys < 1:
            raise ValueError(f"max_keys must be an int >= 1, got {max_keys!r}")
        if not callable(timer):
            raise TypeError("timer must be callable")
        self._min = low
        self._max = high
        self._max_keys = max_keys
        self._timer = timer
        # key -> [filled_at, ttl, reads]
        self._history: dict[Hashable, list[Any]] = {}
        self._lock = threading.Lock()

    @property
    def min(self) -> float:
        """The shortest TTL given (seconds)."""
        return self._min

    @property
    def max(self) -> float:
        """The longest TTL given (seconds)."""
        return self._max

    def ttl_for(self, key: Hashable) -> float:
        """The TTL of a new entry of ``key`` filled now (see the rule); starts counting
        the reads of that entry."""
        now = self._timer()
        with self._lock:
            history = self._history
            record = history.pop(key, None)
            if record is None:
                ttl = self._min
                if len(history) >= self._max_keys:
                    del history[next(iter(history))]
            else:
                filled_at, last_ttl, reads = record
                # gap = 1 / rate: time since the fill per read in it (+1: this fill's)
                gap = max(last_ttl, now - filled_at) / (reads + 1)
                high = self._max
                # sqrt(gap^2 + max^2) - gap, written without the cancellation
                ttl = max(self._min, high * high / (gap + math.sqrt(gap * gap + high * high)))
            history[key] = [now, ttl, 0]
        return ttl

    def hit(self, key: Hashable) -> None:
        """Count one read of ``key``'s current entry (nothing if no fill is known)."""
        record = self._history.get(key)
        if record is not None:
            record[2] += 1

    def reads(self, key: Hashable) -> int:
        """The reads counted for ``key``'s current entry (0 if unknown)."""
        record = self._history.get(key)
        return 0 if record is None else int(record[2])

    def forget(self, key: Hashable) -> None:
        """Drop ``key``'s history (its next fill gets ``min``)."""
        with self._lock:
            self._history.pop(key, None)

    def __repr__(self) -> str:
        return f"AdaptiveTTL(min={self._min:g}, max={self._max:g})"


TTLOption = Any
"""What a ``ttl=`` for a value accepts: seconds, a ``timedelta``, ``None`` (the default
TTL), a callable of the value returning one of those, or an :class:`AdaptiveTTL`."""


def is_dynamic_ttl(ttl: object) -> bool:
    """Whether ``ttl`` is decided per value or per key (a callable or an AdaptiveTTL)."""
    return ttl is not None and not isinstance(ttl, (int, float, timedelta))


def check_ttl_option(ttl: object, *, allow_zero: bool = True) -> None:
    """Refuse a bad ``ttl=`` before anything runs: a fixed one is checked now, a callable
    when it has a value to judge."""
    if ttl is None or isinstance(ttl, AdaptiveTTL):
        return
    if isinstance(ttl, (int, float, timedelta)):
        to_seconds(ttl, "ttl", allow_zero=allow_zero)
        return
    if not callable(ttl):
        raise TypeError(
            "ttl must be seconds, a timedelta, None, a callable of the value or an "
            f"AdaptiveTTL, not {ttl!r}"
        )


def resolve_ttl(ttl: TTLOption, key: Hashable, value: Any) -> Duration | None:
    """The fixed TTL (or None: the default) that ``ttl`` gives ``value`` of ``key``
    filled now; a callable's result is checked like a fixed ``ttl``."""
    if ttl is None or isinstance(ttl, (int, float, timedelta)):
        return ttl  # type: ignore[no-any-return]
    if isinstance(ttl, AdaptiveTTL):
        return ttl.ttl_for(key)
    result = ttl(value)
    if result is not None:
        to_seconds(result, "ttl (returned by the ttl callable)")
    return result  # type: ignore[no-any-return]
