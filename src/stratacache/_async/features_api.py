"""``AsyncCache``'s feature entry points: Bloom filters, cache warming, scheduled
invalidation and distributed locks.

Each feature lives in its own module (``bloom.py``, ``warm.py``, ``schedule.py``,
``lock.py``); the methods here check the options, refuse what needs a Redis the cache does
not have, and hand the cache to the feature. Nothing here is on the read path: a Bloom
filter joins a read only when passed to ``get_or_set`` or ``cached``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from .._options import Duration
from .._schedule import ScheduleInfo, ScheduleSpec, Targets
from .._warm import WarmReport
from .bloom import AsyncBloomFilter, bloom_params, check_name, refresh_seconds
from .cache_base import AsyncCacheBase
from .lock import AsyncDistributedLock
from .warm import AsyncWarmer, Progress

if TYPE_CHECKING:
    from .cache import AsyncCache


class AsyncCacheFeatures(AsyncCacheBase):
    """The Bloom filter, warming, scheduling and lock members of ``AsyncCache``."""

    def _whole_cache(self) -> AsyncCache:
        """The cache this mixin is part of: a Bloom filter and a warmer take all of it."""
        return cast("AsyncCache", self)

    def bloom(
        self,
        name: str,
        capacity: int,
        error_rate: float = 0.01,
        *,
        shards: int | None = None,
        local: bool = False,
        refresh_interval: Duration = 5.0,
    ) -> AsyncBloomFilter:
        """The Bloom filter ``name`` of this namespace, kept in Redis and shared by every
        instance (see ``docs/bloom.md``): sized for ``capacity`` items at a
        false-positive rate of ``error_rate``, split into ``shards`` bit arrays (default:
        one per 2^26 bits). Every instance must use the same three values (a mismatch
        raises :class:`BloomFilterMismatch` at the first call); bad values raise
        :class:`InvalidBloomParameters`. ``local=True`` keeps a copy in the process,
        refreshed every ``refresh_interval`` seconds, that answers present items without
        Redis. The same name gives the same object.

        Use it to guard :meth:`get_or_set` and :meth:`cached` (``bloom=``). It answers
        "maybe" for everything until its first ``rebuild()``.
        """
        name = check_name(name)
        params = bloom_params(capacity, error_rate, shards)
        interval = refresh_seconds(refresh_interval)
        if self._tier is None:
            raise ValueError("Bloom filters live in Redis: this cache has none")
        existing = self._blooms.get(name)
        if existing is not None:
            if existing.params != params:
                raise ValueError(
                    f"Bloom filter {name!r} is already open here with other parameters "
                    f"({existing!r})"
                )
            return existing
        made = self._blooms[name] = AsyncBloomFilter(
            self._whole_cache(), name, params, local=local, refresh_interval=interval
        )
        return made

    async def warm(
        self,
        items: Iterable[Any],
        *,
        loader_many: Callable[[list[str]], Any] | None = None,
        ttl: Duration | None = None,
        tags: Iterable[str] = (),
        batch_size: int = 500,
        max_concurrency: int = 4,
        rate: float | None = None,
        progress: Progress = None,
        resume_key: str | None = None,
        resume_ttl: Duration = 86400.0,
        retry_for: Duration = 10.0,
        fill_l1: bool = False,
    ) -> WarmReport:
        """Write many entries ahead of the traffic (cache warming); see docs/warming.md.

        ``items``: ``(key, value)`` pairs (or a mapping), or keys when ``loader_many`` is
        given: a callable (may be async) taking a list of keys and returning a mapping of
        key to value (keys it leaves out are skipped). Items go in batches of
        ``batch_size``, each written as :meth:`set_many` writes (one pipeline, leases
        revoked, tags registered, keys published on the bus), with at most
        ``max_concurrency`` batches in flight and at most ``rate`` items per second.
        ``progress``: a callable ``(done, total)`` called after each batch (``total`` is
        ``None`` for an iterable without ``len``); default: a tqdm bar when stderr is a
        terminal and tqdm is installed; ``False``: none. ``resume_key``: keep a checkpoint
        in Redis (for ``resume_ttl``) so that a run started again with the same key and
        the same items skips the batches already done; it is deleted when a run has done
        every batch. A batch whose write fails is retried for ``retry_for`` seconds;
        one still failing is counted in the report's ``failed`` and its keys are deleted
        in Redis as soon as it answers (never left holding an older value).
        ``fill_l1``: also put the values in this process's L1. Returns a
        :class:`WarmReport`.
        """
        return await AsyncWarmer(self._whole_cache()).run(
            items,
            loader_many=loader_many,
            ttl=ttl,
            tags=tags,
            batch_size=batch_size,
            max_concurrency=max_concurrency,
            rate=rate,
            progress=progress,
            resume_key=resume_key,
            resume_ttl=resume_ttl,
            retry_for=retry_for,
            fill_l1=fill_l1,
        )

    # -- scheduled invalidation (see schedule.py) ----------------------------------------

    async def schedule_invalidation(
        self,
        cron: str,
        *,
        name: str,
        tag: Targets = None,
        key: Targets = None,
        pattern: Targets = None,
        everything: bool = False,
        reason: str | None = None,
    ) -> ScheduleInfo:
        """Invalidate on a cron schedule (UTC), once per tick in the whole fleet; see
        docs/scheduling.md.

        ``cron``: a cron expression (``"0 3 * * *"``: 03:00 every day). ``name``
        identifies the schedule across instances (``A-Z a-z 0-9 _ -``): every instance
        may register the same one, and each tick fires in exactly one of them. What it
        invalidates: ``tag`` (one or a sequence), ``key``, ``pattern`` (globs), and/or
        ``everything`` (:meth:`invalidate_all`). A tick missed while every instance was
        down fires once when one runs again (the most recent missed tick only). Needs
        croniter. Registering again under the same name replaces the schedule here.
        """
        spec = ScheduleSpec.build(
            name=name,
            cron=cron,
            tag=tag,
            key=key,
            pattern=pattern,
            everything=everything,
            reason=self._reason(reason),
        )
        return await self._scheduler.add(spec)

    async def unschedule(self, name: str, *, forget: bool = False) -> bool:
        """Stop running schedule ``name`` in this instance; True if it ran here.
        ``forget=True`` also deletes its records in Redis (``stratacache schedules``
        stops listing it, and its last-fired record is gone)."""
        return await self._scheduler.remove(name, forget)

    async def run_schedules(self) -> list[str]:
        """Fire the schedules due now by the cache's clock (the background worker does
        this by itself; tests with an injected clock call it to step); returns the names
        of those fired by this instance."""
        self._scheduler.ensure_running()
        return await self._scheduler.run_due()

    def lock(
        self,
        name: str,
        ttl: Duration = 10.0,
        auto_extend: bool = True,
        blocking_timeout: Duration | None = None,
    ) -> AsyncDistributedLock:
        """A distributed lock in this cache's Redis (use it with ``async with`` / ``with``).

        Acquiring gives a fencing token (``lock.token``) that increases with every
        acquisition; pass it to ``set(..., fence=lock.token)`` so that a holder that was
        paused past its lease cannot overwrite a newer holder's write. With
        ``auto_extend`` the lease is renewed every ``ttl / 3``; a holder whose renewal
        fails gets :class:`LockLost` (from ``lock.check()`` and when the block ends).
        ``blocking_timeout``: how long to wait for the lock (``None``: forever) before
        :class:`LockTimeout`.
        """
        if self._tier is None:
            raise ValueError("locks live in Redis: this cache has none")
        return AsyncDistributedLock(
            self._tier.client,
            self._keys,
            name,
            ttl=ttl,
            auto_extend=auto_extend,
            blocking_timeout=blocking_timeout,
        )

