"""Heartbeat records: every cache with Redis says who it is and how it is doing (no I/O).

Each cache publishes a small record of itself (:class:`InstanceInfo`) under
``KeySpace.instance_key(id)`` with a short TTL, and lists its id in the sorted set
``KeySpace.instance_index_key()`` scored by the record's expiry. Both live in the slot of
the namespace's hash tag, so one ``ZRANGE`` and one ``MGET`` read every record, on a
standalone server or a cluster, without a ``SCAN`` over the data keys. A record that is
not refreshed expires by itself (a killed process disappears within its TTL); ``close()``
deletes it at once. Index members whose record expired are pruned by the next writer.

The bus's prober writes the record (at most once a second, ``ttl / 3`` for shorter TTLs)
after a PING was answered: a background worker that already exists, never the request
path. Records are msgpack maps (never pickle) with a format version; decoding is strict
about types and ignores fields it does not know, so old and new instances can be listed
together.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import msgpack  # type: ignore[import-untyped]

from ._keys import KeySpace

__all__ = ["RECORD_VERSION", "InstanceInfo", "InstanceRecorder", "decode_record"]

RECORD_VERSION = 1
MAX_RECORD_BYTES = 16 * 1024
"""Records longer than this are ignored by readers (they are about 600 bytes)."""
RECENT_DEAD_LETTERS = 5
"""Dead letters (newest) described in a record: the rest are only counted."""
_MAX_TEXT = 200  # longest text kept in a dead-letter summary
_MAX_INTERVAL = 1.0  # a record is written at most once a second (default TTL)


@dataclass(frozen=True)
class InstanceInfo:
    """What one cache instance last said about itself (see ``stratacache.instances``).

    Counters are totals since the instance started; ``updated_at`` says how fresh the
    record is (records are refreshed about once a second and expire after ``ttl``).
    """

    id: str
    """``instance/source``: the cache's ``instance`` name (default ``host:pid``) and the
    first 12 hex digits of its bus source id (two caches of one process differ)."""
    namespace: str
    instance: str
    """The cache's ``instance`` name (as in the audit stream)."""
    source: str
    """The bus source id (hex) that this instance's bus messages carry."""
    host: str
    pid: int
    version: str
    """stratacache version."""
    started_at: float
    """Wall-clock time the cache was created."""
    updated_at: float
    """Wall-clock time of this record."""
    ttl: float
    """Seconds the record lives unless refreshed."""
    bus_state: str
    """``healthy``, ``unhealthy``, ``starting`` or ``off``."""
    bus_lag_p99: float
    """p99 of the delay between another instance sending a bus message and this one
    applying it (seconds; recent messages)."""
    hit_ratio: float
    """Reads served by L1 or L2 over all reads (``CacheStats.hit_rate``)."""
    outbox_size: int
    """Writes and invalidations accepted but not yet applied to Redis."""
    dead_letters: int
    """Operations Redis refused for good, kept in the instance's memory."""
    breaker_state: str
    """The primary Redis circuit breaker: ``closed``, ``open`` or ``half_open``."""
    l1_size: int = 0
    l1_hits: int = 0
    l1_misses: int = 0
    l2_hits: int = 0
    l2_misses: int = 0
    loads: int = 0
    errors: int = 0
    stale_served: int = 0
    invalidations: int = 0
    """Invalidation calls of every type (``InvalidationStats.invalidations`` summed)."""
    bus_messages_sent: int = 0
    bus_messages_received: int = 0
    recent_dead_letters: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)
    """The newest dead letters (at most 5): ``kind``, ``target``, ``redis``,
    ``attempts``, ``first_failed_at``, ``last_error``."""

    @property
    def uptime(self) -> float:
        """Seconds between the cache's creation and this record."""
        return max(0.0, self.updated_at - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for JSON), with ``uptime``."""
        data = asdict(self)
        data["recent_dead_letters"] = [dict(d) for d in self.recent_dead_letters]
        data["uptime"] = self.uptime
        return data


# field name -> accepted types (decoding); int fields accept no bool, floats accept ints
_TEXT = (str,)
_INT = (int,)
_FLOAT = (float, int)
_FIELDS: dict[str, tuple[type, ...]] = {
    "id": _TEXT,
    "namespace": _TEXT,
    "instance": _TEXT,
    "source": _TEXT,
    "host": _TEXT,
    "pid": _INT,
    "version": _TEXT,
    "started_at": _FLOAT,
    "updated_at": _FLOAT,
    "ttl": _FLOAT,
    "bus_state": _TEXT,
    "bus_lag_p99": _FLOAT,
    "hit_ratio": _FLOAT,
    "outbox_size": _INT,
    "dead_letters": _INT,
    "breaker_state": _TEXT,
    "l1_size": _INT,
    "l1_hits": _INT,
    "l1_misses": _INT,
    "l2_hits": _INT,
    "l2_misses": _INT,
    "loads": _INT,
    "errors": _INT,
    "stale_served": _INT,
    "invalidations": _INT,
    "bus_messages_sent": _INT,
    "bus_messages_received": _INT,
}
_REQUIRED = frozenset(list(_FIELDS)[:16])  # up to breaker_state; the counters may be absent
_LETTER_FIELDS = ("kind", "target", "redis", "attempts", "first_failed_at", "last_error")


def decode_record(data: object) -> Optional[InstanceInfo]:
    """The record in ``data``, or ``None`` if it is not a well-formed record of a known
    version (Redis is shared: the bytes are untrusted, so this never raises)."""
    if not isinstance(data, bytes) or len(data) > MAX_RECORD_BYTES:
        return None
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, max_ext_len=0, max_bin_len=0)
    except Exception:  # msgpack raises several kinds on hostile input; all mean "skip"
        return None
    if not isinstance(raw, dict) or raw.get("v") != RECORD_VERSION:
        return None
    values: dict[str, Any] = {}
    for name, kinds in _FIELDS.items():
        value = raw.get(name)
        if value is None:
            if name in _REQUIRED:
                return None
            continue
        if type(value) not in kinds:
            return None
        values[name] = float(value) if kinds is _FLOAT else value
    letters = raw.get("recent_dead_letters", [])
    if not isinstance(letters, list):
        return None
    summaries = []
    for letter in letters[:RECENT_DEAD_LETTERS]:
        if not isinstance(letter, dict):
            return None
        summaries.append({k: letter[k] for k in _LETTER_FIELDS if k in letter})
    values["recent_dead_letters"] = tuple(summaries)
    return InstanceInfo(**values)


def _clip(text: object) -> str:
    text = str(text)
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def summarize_dead_letters(letters: Iterable[Any]) -> list[dict[str, Any]]:
    """The newest :data:`RECENT_DEAD_LETTERS` of ``letters`` (``DeadLetter`` objects,
    oldest first) as small plain dicts for a record."""
    out = []
    for letter in list(letters)[-RECENT_DEAD_LETTERS:]:
        out.append(
            {
                "kind": letter.kind,
                "target": _clip(letter.target),
                "redis": letter.redis,
                "attempts": letter.attempts,
                "first_failed_at": letter.first_failed_at,
                "last_error": _clip(letter.last_error),
            }
        )
    return out


class InstanceRecorder:
    """Builds one cache's heartbeat record and says when it is due (used by the bus's
    prober, which writes it; see the module notes).

    ``describe`` returns the live fields (bus state, counters...); the identity fields
    (id, host, pid, version, times) are added here.
    """

    def __init__(
        self,
        keys: KeySpace,
        instance: str,
        source: bytes,
        ttl: float,
        describe: Callable[[], dict[str, Any]],
        *,
        timer: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl <= 0:
            raise ValueError("the record's ttl must be > 0")
        self._keys = keys
        self.id = f"{instance}/{source.hex()[:12]}"
        self.key = keys.instance_key(self.id)
        self.index = keys.instance_index_key()
        self.ttl = ttl
        self.interval = min(_MAX_INTERVAL, ttl / 3)
        self._describe = describe
        self._timer = timer
        self._clock = clock
        self._next = 0.0
        self.written = 0
        """Records written (by the prober) since the start."""
        self._identity = {
            "v": RECORD_VERSION,
            "id": self.id,
            "namespace": keys.namespace,
            "instance": instance,
            "source": source.hex(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": _version(),
            "started_at": clock(),
            "ttl": float(ttl),
        }

    def due(self) -> bool:
        """Whether a record should be written now."""
        return self._timer() >= self._next

    def record(self) -> tuple[bytes, int, int]:
        """The record to write now, its TTL (ms) and its expiry (wall clock, ms); the next
        one is due in ``interval``."""
        self._next = self._timer() + self.interval
        now = self._clock()
        fields = dict(self._identity)
        fields.update(self._describe())
        fields["updated_at"] = now
        blob = msgpack.packb(fields, use_bin_type=True)
        ttl_ms = max(1, int(self.ttl * 1000))
        return blob, ttl_ms, int(now * 1000) + ttl_ms


def _version() -> str:
    from . import __version__  # the package is imported by the time a cache exists

    return __version__
