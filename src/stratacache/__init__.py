"""stratacache: a multi-tier cache — compiled in-process L1, Redis L2, single-flight.

``Cache`` (sync) and ``AsyncCache`` put an in-process LRU of live objects in front of
Redis, coalesce misses (single-flight in the process, a lease in Redis across processes)
and never let a late fill write stale data. See docs/index.md for a tour.
"""

from __future__ import annotations

from ._acl import acl_rules
from ._adaptive import AdaptiveTTL
from ._async.bloom import AsyncBloomFilter, BloomStats
from ._async.cache import AsyncCache
from ._async.instances import instances as ainstances
from ._async.lock import AsyncDistributedLock
from ._bloom import BloomParams
from ._breaker import BreakerState, CircuitBreaker
from ._codec import Codec, Entry, TypeRegistry, register_dataclass, register_type
from ._errors import (
    BloomFilterMismatch,
    BloomRebuildConflict,
    CorruptEntryError,
    FencingTokenRejected,
    InvalidBloomParameters,
    InvalidKeyError,
    LoaderTimeout,
    LoaderUnavailable,
    LockError,
    LockLost,
    LockTimeout,
    RedisCommandError,
    RedisPermissionError,
    RedisUnavailableError,
    SerializationError,
    StratacacheError,
    ValueTooLargeError,
)
from ._health import Health
from ._instances import InstanceInfo
from ._invalidation import AuditRecord, InvalidationRule, InvalidationStats
from ._keys import KeySpace, make_key
from ._l1 import L1
from ._outbox import DeadLetter
from ._schedule import ScheduleInfo
from ._sentinel import MISSING
from ._stats import CacheStats, Histogram, LatencySummary
from ._sync.bloom import BloomFilter
from ._sync.cache import Cache
from ._sync.instances import instances
from ._sync.lock import DistributedLock
from ._warm import WarmReport

__version__ = "0.1.0"

__all__ = [
    "L1",
    "MISSING",
    "AdaptiveTTL",
    "AsyncBloomFilter",
    "AsyncCache",
    "AsyncDistributedLock",
    "AuditRecord",
    "BloomFilter",
    "BloomFilterMismatch",
    "BloomParams",
    "BloomRebuildConflict",
    "BloomStats",
    "BreakerState",
    "Cache",
    "CacheStats",
    "CircuitBreaker",
    "Codec",
    "CorruptEntryError",
    "DeadLetter",
    "DistributedLock",
    "Entry",
    "FencingTokenRejected",
    "Health",
    "Histogram",
    "InstanceInfo",
    "InvalidBloomParameters",
    "InvalidKeyError",
    "InvalidationRule",
    "InvalidationStats",
    "KeySpace",
    "LatencySummary",
    "LoaderTimeout",
    "LoaderUnavailable",
    "LockError",
    "LockLost",
    "LockTimeout",
    "RedisCommandError",
    "RedisPermissionError",
    "RedisUnavailableError",
    "ScheduleInfo",
    "SerializationError",
    "StratacacheError",
    "TypeRegistry",
    "ValueTooLargeError",
    "WarmReport",
    "__version__",
    "acl_rules",
    "ainstances",
    "instances",
    "make_key",
    "register_dataclass",
    "register_type",
]
