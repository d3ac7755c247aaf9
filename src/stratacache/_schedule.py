"""Scheduled invalidation, the parts without I/O: schedule definitions, cron arithmetic
(croniter), the Redis records and the Lua scripts that make each tick fire once in the
whole fleet (``_async/schedule.py`` runs them).

Policy (docs/scheduling.md):

- Every instance may register the same schedule; the *tick* of a schedule is the most
  recent cron time at or before now (UTC). A tick fires in the instance whose atomic
  claim succeeds: the claim compares the tick with the schedule's *last-fired record*
  and takes the tick id (``SET NX PX``); a tick at or before the last fired one is never
  claimed again.
- A schedule registered for the first time records the most recent tick as its baseline
  (not fired): registering never fires a past tick.
- Ticks missed while every instance was down: the first instance that runs again fires
  the most recent missed tick once (catch-up), never the older ones.
- Redis down at tick time: the claim is retried every poll until Redis answers; if a
  newer tick comes due meanwhile, only the newer one fires (the same one-catch-up rule).
- A lost last-fired record (Redis flushed) makes the most recent tick fire once more: an
  extra invalidation rather than a missed one.

Redis layout (all in the namespace's meta slot, ``KeySpace.meta_key``)::

    ns:v1:m:{ns}:schedules            sorted set of schedule names (score: registered, ms)
    ns:v1:m:{ns}:sched.NAME           definition (msgpack), written by each registration
    ns:v1:m:{ns}:sched.NAME.last      "TICK|FIRED_AT|INSTANCE" (TICK, FIRED_AT: epoch
                                      seconds; FIRED_AT and INSTANCE empty: a baseline)
    ns:v1:m:{ns}:sched.NAME.tick.T    the tick id of tick T (SET NX, expires after two
                                      periods and at least an hour)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import msgpack  # type: ignore[import-untyped]

from ._keys import KeySpace, validate_key, validate_tag

__all__ = [
    "CLAIM",
    "REGISTER",
    "ScheduleInfo",
    "ScheduleSpec",
    "decode_definition",
    "decode_last",
    "latest_tick",
    "next_tick",
]

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,100}\Z")
_RECORD_VERSION = 1

Targets = Union[str, Sequence[str], None]


def _croniter() -> Any:
    """The croniter class, or an ImportError saying how to get it."""
    try:
        from croniter import croniter
    except ImportError:  # pragma: no cover - croniter is a dependency
        raise ImportError(
            "scheduled invalidation needs croniter: pip install 'croniter>=2'"
        ) from None
    return croniter


def validate_cron(cron: object) -> str:
    """``cron`` if croniter takes it (five fields, or six with seconds)."""
    if not isinstance(cron, str):
        raise TypeError(f"cron must be a str such as '0 3 * * *', not {type(cron).__name__}")
    if not _croniter().is_valid(cron):
        raise ValueError(f"cron {cron!r} is not a valid cron expression (e.g. '0 3 * * *')")
    return cron


def latest_tick(cron: str, now: float) -> float:
    """The most recent time at or before ``now`` (epoch seconds, UTC) that ``cron`` names."""
    return float(_croniter()(cron, math.floor(now) + 1).get_prev(float))


def next_tick(cron: str, now: float) -> float:
    """The first time after ``now`` that ``cron`` names."""
    return float(_croniter()(cron, now).get_next(float))


def tick_key_ms(cron: str, tick: float) -> int:
    """How long a tick id is kept: two periods, at least an hour (milliseconds)."""
    period = next_tick(cron, tick) - tick
    return int(max(2 * period, 3600.0) * 1000)


def _targets(value: Targets, what: str, check: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (check(value),)
    if not isinstance(value, Iterable):
        raise TypeError(f"{what} must be a str or a sequence of str, not {type(value).__name__}")
    return tuple(check(v) for v in value)


@dataclass(frozen=True)
class ScheduleSpec:
    """One schedule as registered: its name, cron expression and what it invalidates."""

    name: str
    cron: str
    tags: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    everything: bool = False
    reason: Optional[str] = None

    @classmethod
    def build(
        cls,
        *,
        name: object,
        cron: object,
        tag: Targets = None,
        key: Targets = None,
        pattern: Targets = None,
        everything: bool = False,
        reason: Optional[str] = None,
    ) -> ScheduleSpec:
        """Validate a schedule; ``TypeError``/``ValueError`` naming what is wrong."""
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(
                f"schedule name {name!r} must be 1-100 characters from A-Z a-z 0-9 _ -"
            )
        spec = cls(
            name=name,
            cron=validate_cron(cron),
            tags=_targets(tag, "tag", validate_tag),
            keys=_targets(key, "key", validate_key),
            patterns=_targets(pattern, "pattern", validate_key),
            everything=bool(everything),
            reason=reason,
        )
        if not (spec.tags or spec.keys or spec.patterns or spec.everything):
            raise ValueError("a schedule needs something to invalidate: tag=, key=, pattern=")
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"reason must be a str or None, not {type(reason).__name__}")
        return spec

    def describe(self) -> str:
        """What a firing invalidates, in one line."""
        parts = [f"tag {t!r}" for t in self.tags]
        parts += [f"key {k!r}" for k in self.keys]
        parts += [f"pattern {p!r}" for p in self.patterns]
        if self.everything:
            parts.append("everything")
        return ", ".join(parts)

    def encode(self, instance: str, registered_at: float) -> bytes:
        """The definition record (msgpack) that ``stratacache schedules`` reads."""
        return msgpack.packb(  # type: ignore[no-any-return]
            {
                "v": _RECORD_VERSION,
                "name": self.name,
                "cron": self.cron,
                "tags": list(self.tags),
                "keys": list(self.keys),
                "patterns": list(self.patterns),
                "everything": self.everything,
                "instance": instance,
                "registered_at": registered_at,
            },
            use_bin_type=True,
        )


def decode_definition(raw: Optional[bytes]) -> Optional[dict[str, Any]]:
    """A definition record as a dict; ``None`` if absent or not one (foreign bytes)."""
    if not raw:
        return None
    try:
        data = msgpack.unpackb(raw, raw=False)
    except Exception:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("cron"), str):
        return None
    return data


@dataclass(frozen=True)
class LastFired:
    """A schedule's last-fired record: the tick, when it fired and where (a baseline
    written at the first registration has neither)."""

    tick: float
    fired_at: Optional[float] = None
    instance: Optional[str] = None

    def encode(self) -> str:
        """``TICK|FIRED_AT|INSTANCE`` (what the claim script writes too)."""
        at = "" if self.fired_at is None else repr(self.fired_at)
        return f"{self.tick!r}|{at}|{self.instance or ''}"


def decode_last(raw: Union[bytes, str, None]) -> Optional[LastFired]:
    """A last-fired record; ``None`` if absent or unreadable."""
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    tick, _, rest = text.partition("|")
    at, _, instance = rest.partition("|")
    try:
        tick_f = float(tick)
        at_f = float(at) if at else None
    except ValueError:
        return None
    if not math.isfinite(tick_f) or (at_f is not None and not math.isfinite(at_f)):
        return None
    return LastFired(tick_f, at_f, instance or None)


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as this instance sees it (``stats().schedules``).

    ``next_fire``: the next tick (epoch seconds, UTC). ``last_tick`` / ``last_fired_at``
    / ``last_fired_by``: the last tick fired in the fleet, when and by which instance, as
    last read from Redis (``None``: never fired). ``fired_here``: firings by this
    instance. ``pending``: a due tick this instance could not claim yet (Redis did not
    answer); it keeps trying.
    """

    name: str
    cron: str
    targets: str
    next_fire: float
    last_tick: Optional[float] = None
    last_fired_at: Optional[float] = None
    last_fired_by: Optional[str] = None
    fired_here: int = 0
    pending: bool = False


@dataclass
class ScheduleState:
    """What the scheduler of one cache keeps about one schedule."""

    spec: ScheduleSpec
    registered: bool = False
    handled: float = -math.inf  # the newest tick known fired (here or elsewhere)
    last: Optional[LastFired] = None
    fired_here: int = 0
    pending: bool = False
    errors: list[str] = field(default_factory=list)

    def info(self, now: float) -> ScheduleInfo:
        """This schedule's :class:`ScheduleInfo` at ``now``."""
        last = self.last if self.last is not None and self.last.instance else None
        return ScheduleInfo(
            name=self.spec.name,
            cron=self.spec.cron,
            targets=self.spec.describe(),
            next_fire=next_tick(self.spec.cron, now),
            last_tick=None if last is None else last.tick,
            last_fired_at=None if last is None else last.fired_at,
            last_fired_by=None if last is None else last.instance,
            fired_here=self.fired_here,
            pending=self.pending,
        )


def schedule_keys(keys: KeySpace, name: str) -> tuple[str, str]:
    """The definition and last-fired keys of schedule ``name``."""
    return keys.meta_key(f"sched.{name}"), keys.meta_key(f"sched.{name}.last")


def tick_key(keys: KeySpace, name: str, tick: float) -> str:
    """The tick id of ``tick`` of schedule ``name``."""
    return keys.meta_key(f"sched.{name}.tick.{int(tick)}")


def index_key(keys: KeySpace) -> str:
    """The sorted set of schedule names of a namespace."""
    return keys.meta_key("schedules")


# KEYS: definition, last-fired, index. ARGV: definition blob, name, baseline record, now
# (ms). Writes the definition, the baseline if the schedule never had a record, lists
# the name; returns the last-fired record.
REGISTER = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[3], 'NX')
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
return redis.call('GET', KEYS[2])
"""

# KEYS: last-fired, tick id. ARGV: tick, fired at, claimer, tick id px. Claims the tick
# for this claimer unless a tick at or after it was fired (or claimed) already; returns
# {1 if claimed, the last-fired record}. A tick id that already holds this claimer's
# token is its own earlier claim, which Redis ran although the claimer never heard the
# answer (a timeout, a paused server): claimed, so the tick fires once, not never.
CLAIM = """
local last = redis.call('GET', KEYS[1])
if redis.call('GET', KEYS[2]) == ARGV[3] then
  return {1, last or false}
end
local fired = nil
if last then fired = tonumber(string.match(last, '^([^|]*)')) end
if fired and tonumber(ARGV[1]) <= fired then
  return {0, last}
end
if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then
  return {0, last or false}
end
local record = ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3]
redis.call('SET', KEYS[1], record)
return {1, record}
"""
