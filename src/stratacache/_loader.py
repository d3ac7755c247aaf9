"""The loader's time limits and breaker options (plain values, no I/O); see ``docs/loader.md``.

``soft_timeout``: a caller that has a fail-safe value at hand gets it once the load has
taken this long; the load goes on in the background and its result is cached when it
arrives. ``hard_timeout``: no caller waits longer; it gets the fail-safe value if there is
one, else :class:`~stratacache.LoaderTimeout`. Both are set per cache and may be
overridden per call (``get_or_set``) or per decorated function (``cached``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._options import to_seconds
from ._sentinel import MISSING


@dataclass(frozen=True)
class LoaderLimits:
    """The soft and hard timeouts of one load (``None``: no limit)."""

    soft: float | None = None
    hard: float | None = None

    @classmethod
    def build(cls, soft: Any, hard: Any) -> LoaderLimits | None:
        """Validated limits, or ``None`` when neither is set (the path without timers)."""
        soft_s = None if soft is None else to_seconds(soft, "soft_timeout")
        hard_s = None if hard is None else to_seconds(hard, "hard_timeout", allow_zero=False)
        if soft_s is None and hard_s is None:
            return None
        if soft_s is not None and hard_s is not None and soft_s >= hard_s:
            raise ValueError(
                f"soft_timeout ({soft_s} s) must be shorter than hard_timeout ({hard_s} s)"
            )
        return cls(soft_s, hard_s)


_NONE = LoaderLimits()


def limits_for(cache: LoaderLimits | None, soft: Any, hard: Any) -> LoaderLimits | None:
    """The limits of one call: ``soft``/``hard`` replace the cache's ones where they are
    not :data:`~stratacache.MISSING` (``None`` turns one off for the call)."""
    if soft is MISSING and hard is MISSING:
        return cache
    base = cache or _NONE
    return LoaderLimits.build(
        base.soft if soft is MISSING else soft, base.hard if hard is MISSING else hard
    )


@dataclass(frozen=True)
class LoaderBreakerSettings:
    """When the loader's breaker opens and for how long (``threshold`` failures within
    ``window`` seconds open it for ``cooldown`` seconds)."""

    threshold: int
    window: float
    cooldown: float

    @classmethod
    def build(cls, threshold: Any, window: Any, cooldown: Any) -> LoaderBreakerSettings | None:
        """Validated settings, or ``None`` (no breaker) when ``threshold`` is ``None``."""
        if threshold is None:
            return None
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
            raise ValueError(f"loader_breaker_threshold must be an int >= 1, got {threshold!r}")
        return cls(
            threshold,
            to_seconds(window, "loader_breaker_window", allow_zero=False),
            to_seconds(cooldown, "loader_breaker_cooldown", allow_zero=False),
        )


def describe_failure(exc: BaseException) -> str:
    """A short cause for a log line: the exception's type and message."""
    text = str(exc)
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class LoaderCounters:
    """What the loader's timeouts and breaker did (reported by ``stats()``)."""

    __slots__ = ("background_completed", "hard_timeouts", "rejected", "soft_timeouts")

    def __init__(self) -> None:
        self.soft_timeouts = 0
        self.hard_timeouts = 0
        self.rejected = 0
        self.background_completed = 0
