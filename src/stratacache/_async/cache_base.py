"""What the mixins of ``AsyncCache`` read of the cache, declared for the type checker.

``AsyncCache`` is one public class assembled from parts a person can hold, one concern a
module (``docs/development.md``, "Where AsyncCache lives"):

- ``cache.py``: the facade — construction, the L1 hit path of reads, writes, close;
- ``decorator.py``: ``cached``;
- ``invalidation_api.py``: invalidation by key, tag, pattern, dependency and rule, and
  what it leaves behind (dead letters, the audit stream);
- ``features_api.py``: Bloom filters, warming, scheduled invalidation, locks;
- ``observability.py``: stats, health, the heartbeat record's fields, permissions;
- ``coherence.py``: the bus and the tag versions that keep every instance's L1 true.

A mixin keeps no state of its own: everything it reads is built by ``AsyncCache.__init__``
(or is a method of another part). ``AsyncCacheBase`` declares those names under
``TYPE_CHECKING`` only, so that mypy checks each mixin on its own — a mixin that reads a
name not declared here fails the type check — while at run time the base is an empty
class: no slot, no descriptor, nothing added to the hit path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from .._breaker import CircuitBreaker, NodeBreakers
    from .._invalidation import InvalidationSettings
    from .._keys import KeySpace
    from .._l1 import L1
    from .._loader import LoaderLimits
    from .._options import CacheSettings, Duration
    from .._primitives import AsyncResultSlot
    from .._sentinel import MissingType
    from .._stats import Counters
    from .._tags import TagVersions
    from .bloom import AsyncBloomFilter
    from .bus import AsyncInvalidationBus
    from .invalidator import AsyncInvalidator
    from .loader_call import AsyncLoads
    from .redis_tier import AsyncRedisTier
    from .refresh import AsyncEarlyRefresh
    from .schedule import AsyncScheduler


class AsyncCacheBase:
    """The names the mixins of ``AsyncCache`` share (declarations only; see the module)."""

    if TYPE_CHECKING:
        # built by AsyncCache.__init__ (cache.py)
        settings: CacheSettings
        _keys: KeySpace
        _clock: Callable[[], float]
        _l1: L1
        _stale: L1 | None
        _counters: Counters
        _breaker: CircuitBreaker | NodeBreakers
        _failover_breaker: CircuitBreaker | NodeBreakers
        _tier: AsyncRedisTier | None
        _failover: AsyncRedisTier | None
        _flights: dict[str, AsyncResultSlot[Any]]
        _loads: AsyncLoads
        _loader_limits: LoaderLimits | None
        _loader_breaker: CircuitBreaker | None
        _invalidation_settings: InvalidationSettings
        _raise_on_write_error: bool
        _instance: str
        _instance_ttl: float
        _bus_keys: tuple[bytes, ...]
        _bus: AsyncInvalidationBus | None
        _invalidator: AsyncInvalidator
        _versions: TagVersions
        _recovery_grace: float
        _suspect_before: float
        _suspect_until: float
        _answered_at: float
        _silent_at: float
        _blooms: dict[str, AsyncBloomFilter]
        _scheduler: AsyncScheduler
        _refresher: AsyncEarlyRefresh
        _plain_hits: bool

        # reads and writes (cache.py; mypy checks that the methods there still fit these)
        async def get_or_set(
            self,
            key: str,
            loader: Callable[[], Any],
            ttl: Any = None,
            tags: Iterable[str] = (),
            early_refresh: bool | float | None = None,
            copy_on_read: bool | None = None,
            soft_timeout: Duration | MissingType | None = ...,
            hard_timeout: Duration | MissingType | None = ...,
            bloom: AsyncBloomFilter | None = None,
            bloom_item: Any = ...,
            bloom_default: Any = None,
        ) -> Any: ...

        async def delete(self, key: str) -> bool: ...

        @staticmethod
        def _tags(tags: Iterable[str]) -> tuple[str, ...]: ...

        # invalidation_api.py
        @staticmethod
        def _reason(reason: str | None) -> str | None: ...

        # coherence.py
        async def _bus_started(self) -> None: ...

        # observability.py (the bus's instance record reads it)
        def _instance_fields(self) -> dict[str, Any]: ...
