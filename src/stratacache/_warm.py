"""Cache warming, the parts without I/O: batching, the rate limit, the resume checkpoint
and the report (``_async/warm.py`` does the writes).

A warm run cuts its items into numbered batches (0, 1, 2, ... in the order the iterable
yields them). Batches are written concurrently, so they complete out of order; the
*checkpoint* is the number of batches from the start that have all completed (the
contiguous prefix), which is what a resumed run may skip. A batch that failed for good
stops the prefix: a re-run redoes it and everything after it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = [
    "Checkpoint",
    "RateLimiter",
    "WarmReport",
    "batches",
    "validate_warm_options",
]


@dataclass(frozen=True)
class WarmReport:
    """What a :meth:`Cache.warm` run did.

    ``written``: entries stored in Redis. ``skipped``: items not written because a resumed
    run had done their batch already (``resumed_batches`` of them), or because
    ``loader_many`` returned no value for the key. ``failed``: items not written — their
    batch still failed after ``retry_for`` seconds of retries (Redis down; the keys are
    deleted in Redis as soon as it answers again, so no older value survives), the loader
    raised for their batch, or their value could not be encoded. ``errors`` holds one line
    per failure (the first 20). ``seconds``: the run's wall time.
    """

    written: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    batches: int = 0
    resumed_batches: int = 0
    checkpoint: Optional[int] = None
    """The batches completed from the start, as stored under ``resume_key``: where a
    re-run starts. ``None`` without a ``resume_key``, and when every batch was done (the
    record is then deleted; items refused for bad input do not keep it)."""
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether nothing failed."""
        return self.failed == 0

    @property
    def rate(self) -> float:
        """Entries written per second."""
        return self.written / self.seconds if self.seconds > 0 else 0.0


@dataclass
class WarmTally:
    """The mutable counts of a run (one event loop or guarded by the caller's lock)."""

    written: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def error(self, line: str) -> None:
        """Keep the first 20 failure lines."""
        if len(self.errors) < 20:
            self.errors.append(line)

    @property
    def done(self) -> int:
        """Items handled so far, whatever their outcome."""
        return self.written + self.skipped + self.failed


def validate_warm_options(
    batch_size: object, max_concurrency: object, rate: object, resume_key: object
) -> Optional[float]:
    """Check the warm options; return ``rate`` as a float (``None``: unlimited)."""
    for name, value in (("batch_size", batch_size), ("max_concurrency", max_concurrency)):
        if type(value) is not int or value < 1:  # type: ignore[operator]
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if resume_key is not None and (not isinstance(resume_key, str) or not resume_key):
        raise ValueError(f"resume_key must be a non-empty str, got {resume_key!r}")
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"rate must be items per second (a number) or None, not {rate!r}")
    if math.isnan(rate) or rate <= 0 or math.isinf(rate):
        raise ValueError(f"rate must be a finite number of items per second > 0, got {rate!r}")
    return float(rate)


def batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size`` (the last one shorter); a ``Mapping`` gives its
    ``(key, value)`` pairs. Lazy: a generator is read one batch ahead at most."""
    source: Iterable[Any] = items.items() if isinstance(items, Mapping) else items
    iterator = iter(source)
    while True:
        batch = list(itertools.islice(iterator, size))
        if not batch:
            return
        yield batch


def total_of(items: Iterable[Any]) -> Optional[int]:
    """How many items there are, if the iterable says without being consumed."""
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


class RateLimiter:
    """A token bucket of ``rate`` items per second with one second's burst: :meth:`delay`
    says how long to wait before ``n`` more items may go (the time is taken then)."""

    def __init__(self, rate: Optional[float], timer: Callable[[], float] = time.monotonic):
        self._rate = rate
        self._timer = timer
        self._next = timer()  # when the next item may go

    def delay(self, n: int) -> float:
        """Reserve ``n`` items; the seconds to wait before sending them (0: now)."""
        if self._rate is None:
            return 0.0
        now = self._timer()
        # at most one second of unused budget is kept (the burst)
        start = max(self._next, now - 1.0)
        self._next = start + n / self._rate
        return max(0.0, start - now)


class Checkpoint:
    """The contiguous prefix of completed batches (see the module notes)."""

    def __init__(self, start: int = 0) -> None:
        self.value = start
        self._completed: set[int] = set()
        self._failed: Optional[int] = None  # the first batch that failed for good

    def complete(self, index: int) -> bool:
        """Batch ``index`` is done; True if the prefix grew."""
        self._completed.add(index)
        grew = False
        while self.value in self._completed and (self._failed is None or self.value < self._failed):
            self._completed.discard(self.value)
            self.value += 1
            grew = True
        return grew

    def fail(self, index: int) -> None:
        """Batch ``index`` failed for good: the prefix will not pass it in this run."""
        if self._failed is None or index < self._failed:
            self._failed = index


def encode_checkpoint(value: int) -> bytes:
    """The stored form of a checkpoint (a decimal count of batches)."""
    return str(value).encode()


def decode_checkpoint(raw: Any) -> int:
    """A stored checkpoint; 0 for anything that is not one (a foreign value)."""
    if raw is None:
        return 0
    try:
        value = int(raw)
    except (TypeError, ValueError):
        return 0
    return max(0, value)
