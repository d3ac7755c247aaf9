"""Validation of durations and of the cache's settings (plain values, no I/O)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, Union

Duration = Union[float, int, timedelta]
"""Seconds as a number, or a :class:`datetime.timedelta`."""


def to_seconds(value: object, name: str, *, allow_zero: bool = True) -> float:
    """Return ``value`` as float seconds; ``TypeError``/``ValueError`` for anything else."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{name} must be seconds (int/float) or a timedelta, not {value!r}")
    if math.isnan(seconds) or seconds < 0 or math.isinf(seconds):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    if not allow_zero and seconds == 0:
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
    return seconds


@dataclass(frozen=True)
class CacheSettings:
    """Everything a cache decides by, validated once at construction."""

    namespace: str
    l1_maxsize: int
    default_ttl: float
    l1_max_ttl: float
    jitter: float
    negative_ttl: float | None
    fail_safe: bool
    fail_safe_max_age: float
    redis_timeout: float
    lease_ttl: float
    lease_wait: float
    breaker_threshold: int
    breaker_cooldown: float
    bus: bool = False
    heartbeat_timeout: float = 1.0
    bus_batch_window: float = 0.001
    bus_unhealthy: Literal["bypass_l1", "serve_l1"] = "bypass_l1"

    @classmethod
    def build(
        cls,
        *,
        namespace: str,
        l1_maxsize: int,
        default_ttl: Duration,
        l1_max_ttl: Duration,
        jitter: float,
        negative_ttl: Duration | None,
        fail_safe: bool,
        fail_safe_max_age: Duration,
        redis_timeout: Duration,
        lease_ttl: Duration,
        lease_wait: Duration,
        breaker_threshold: int,
        breaker_cooldown: Duration,
        bus: bool = False,
        heartbeat_timeout: Duration = 1.0,
        bus_batch_window: Duration = 0.001,
        bus_unhealthy: str = "bypass_l1",
    ) -> CacheSettings:
        """Validate every option; raise ``TypeError``/``ValueError`` naming the bad one."""
        if not isinstance(l1_maxsize, int) or isinstance(l1_maxsize, bool) or l1_maxsize < 1:
            raise ValueError(f"l1_maxsize must be an int >= 1, got {l1_maxsize!r}")
        if not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
            raise ValueError(f"jitter must be a fraction in [0, 1), got {jitter!r}")
        if not isinstance(breaker_threshold, int) or breaker_threshold < 1:
            raise ValueError(f"breaker_threshold must be an int >= 1, got {breaker_threshold!r}")
        if bus_unhealthy not in ("bypass_l1", "serve_l1"):
            raise ValueError(
                f"bus_unhealthy must be 'bypass_l1' or 'serve_l1', got {bus_unhealthy!r}"
            )
        return cls(
            namespace=namespace,
            l1_maxsize=l1_maxsize,
            default_ttl=to_seconds(default_ttl, "default_ttl", allow_zero=False),
            l1_max_ttl=to_seconds(l1_max_ttl, "l1_max_ttl", allow_zero=False),
            jitter=float(jitter),
            negative_ttl=(
                None if negative_ttl is None else to_seconds(negative_ttl, "negative_ttl")
            ),
            fail_safe=bool(fail_safe),
            fail_safe_max_age=to_seconds(fail_safe_max_age, "fail_safe_max_age"),
            redis_timeout=to_seconds(redis_timeout, "redis_timeout", allow_zero=False),
            lease_ttl=to_seconds(lease_ttl, "lease_ttl", allow_zero=False),
            lease_wait=to_seconds(lease_wait, "lease_wait"),
            breaker_threshold=breaker_threshold,
            breaker_cooldown=to_seconds(breaker_cooldown, "breaker_cooldown", allow_zero=False),
            bus=bool(bus),
            heartbeat_timeout=to_seconds(heartbeat_timeout, "heartbeat_timeout", allow_zero=False),
            bus_batch_window=to_seconds(bus_batch_window, "bus_batch_window"),
            bus_unhealthy="serve_l1" if bus_unhealthy == "serve_l1" else "bypass_l1",
        )

    def entry_ttl(self, ttl: Duration | None) -> float:
        """The TTL of a new entry: the caller's or the default, shortened by jitter."""
        seconds = self.default_ttl if ttl is None else to_seconds(ttl, "ttl")
        if self.jitter and seconds:
            # only ever shorten: a jittered entry must not outlive what the caller asked for
            seconds *= 1.0 - random.random() * self.jitter
        return seconds

    def physical_ttl(self, ttl: float) -> float:
        """How long Redis keeps an entry: its TTL, plus the fail-safe window when enabled."""
        return ttl + self.fail_safe_max_age if self.fail_safe else ttl
