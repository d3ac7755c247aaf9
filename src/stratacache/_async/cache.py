"""``AsyncCache``: L1 (in-process) -> Redis L2 -> loader, with single-flight and leases.

Read path (``get_or_set``; step 1 here, steps 2-5 in ``read_path.py``):

1. L1 lookup: live objects, no decoding, no Redis.
2. L1 miss: single-flight on the key inside the process — one caller (the leader) goes
   on, the others wait for its outcome (value or exception).
3. The leader takes an L1 *ticket*, then reads L2. A fresh entry is installed in L1
   through the ticket (refused if the key or a tag was invalidated meanwhile).
4. L2 miss: the leader takes a *lease* in Redis (``SET NX PX``, Facebook memcache
   leases). Only the holder runs the loader; other processes poll L2 for up to
   ``lease_wait`` and then run the loader themselves without writing L2.
5. The holder writes L2 only if its lease survived — every ``set``/``delete`` of the key
   revokes the lease — and L1 only through its ticket. A fill that lost either race is
   returned to the caller but not cached: this closes cache-aside's stale-set race.

Redis faults never reach callers of reads: every call goes through a circuit breaker
with a time budget, and reads fall back to L1 and the loader. With ``fail_safe`` a
loader error is answered with the last known value (within ``fail_safe_max_age``).

This module is the facade: it builds the pieces, keeps the L1 hit path of reads and
the write entry points; the other members live in mixins, one concern a module
(``cache_base.py`` lists them). Writes (``write_path.py``) never lose what they accepted:
a Redis step that fails leaves a pending operation in the outbox, applied when Redis
answers again, and this instance does not serve the keys concerned from L2 meanwhile.
How every instance's L1 is kept true — the invalidation bus, and which L2 entries are
suspect after Redis trouble — is ``coherence.py``'s.
"""

from __future__ import annotations

import os
import random
import socket
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from .._adaptive import AdaptiveTTL, resolve_ttl
from .._breaker import CircuitBreaker, NodeBreakers
from .._bus import UnhealthyPolicy
from .._bus_messages import bus_keys
from .._codec import Codec, normalize_secrets
from .._copying import copy_option, make_copier
from .._invalidation import InvalidationSettings
from .._keys import KeySpace, validate_key, validate_tag
from .._l1 import L1
from .._loader import LoaderBreakerSettings, LoaderLimits, limits_for
from .._options import CacheSettings, Duration, to_seconds
from .._primitives import (
    AsyncRedis,
    AsyncRedisCluster,
    AsyncResultSlot,
    async_bind_fast_get,
    async_cluster_no_retry,
    async_forget_connections,
    async_reconnect_once,
)
from .._read_many import l1_pass
from .._sentinel import MISSING, MissingType
from .._stats import Counters
from .._tags import TagVersions, expand_tags
from .bloom import AsyncBloomFilter
from .coherence import AsyncCacheCoherence
from .conditional import AsyncConditionalWrites
from .decorator import AsyncCacheDecorator
from .features_api import AsyncCacheFeatures
from .invalidation_api import AsyncCacheInvalidation
from .loader_call import AsyncLoads
from .observability import AsyncCacheObservability
from .read_path import AsyncReadPath
from .redis_tier import AsyncRedisTier
from .refresh import AsyncEarlyRefresh
from .schedule import AsyncScheduler
from .write_path import AsyncWritePath


class AsyncCache(
    AsyncCacheDecorator,
    AsyncCacheInvalidation,
    AsyncCacheFeatures,
    AsyncCacheObservability,
    AsyncCacheCoherence,
):
    """A two-tier cache: in-process L1 in front of Redis, with a loader behind both.

    Parameters:
        redis: ``None`` (L1 only), a URL, or a client — ``redis.asyncio.Redis`` or
            ``redis.asyncio.RedisCluster`` (``Cache``: ``redis.Redis`` or
            ``redis.cluster.RedisCluster``). A client built from a URL gets
            ``redis_timeout`` as its socket timeouts and no retries, and is closed by
            :meth:`close`; a client you pass keeps its own settings and stays open.
        namespace: prefix of every Redis key; caches in different namespaces never see
            each other's entries.
        l1_maxsize: most entries kept in the process.
        l1_policy: the L1's eviction policy: ``"lru"`` (default) or ``"tinylfu"``
            (W-TinyLFU admission: frequent keys survive scans; see docs/l1.md).
        default_ttl: TTL of entries written without one (seconds or ``timedelta``).
        l1_max_ttl: the longest an entry lives in L1, whatever its TTL (a backstop
            against missed invalidations).
        jitter: a fraction in [0, 1): each TTL is shortened by a random part of it, so
            entries written together do not expire together.
        negative_ttl: TTL for a loader result of ``None`` ("not found"); ``None`` uses
            the normal TTL; ``0`` does not cache ``None`` results.
        fail_safe: on a loader error, serve the last known value instead, if it expired
            less than ``fail_safe_max_age`` seconds ago (counted as ``stale_served``).
        fail_safe_max_age: with ``fail_safe``, how long after its expiry a value may still
            be served when the loader fails; Redis keeps entries this much longer.
        redis_timeout: time budget of each Redis call, for clients built from a URL.
        lease_ttl: how long a lease lives (longer than your slowest loader).
        lease_wait: how long a process waits for another one's lease before it runs
            the loader itself.
        breaker_threshold: consecutive Redis failures that open the circuit breaker.
        breaker_cooldown: seconds the breaker stays open before one probe call.
        cluster: build a Redis Cluster client when ``redis`` is a URL.
        codec: the :class:`Codec` for L2 values (default: msgpack with default limits).
        timer: monotonic clock for L1 expiry and the breaker (tests pass a fake one).
        clock: wall clock for entry timestamps shared through Redis.
        bus: publish every write on the namespace's pub/sub channel and drop the keys
            other instances write from this L1 (default: on when ``redis`` is given).
        heartbeat_timeout: the bus is unhealthy when this instance has not heard its own
            heartbeat for this long; heartbeats go out four times as often.
        bus_batch_window: above ``0`` (default), batching: a write's invalidation is sent
            at once by the publisher when no publish is in flight, and those that arrive
            while one is travel together as one message (``0``: one message per write,
            sent before the write returns).
        bus_unhealthy: ``"bypass_l1"`` (default): while the bus is unhealthy, L1 is kept
            empty and reads go to L2 and the loader; ``"serve_l1"``: keep serving L1
            (each entry is still bounded by ``l1_max_ttl``), availability over freshness.
        failover: a second Redis (URL or client, same kinds as ``redis``) that every
            invalidation also goes to, with its own breaker, retry queue and bus; either
            Redis failing alone is tolerated and counted.
        on_write_error: ``"queue"`` (default): a write or invalidation whose Redis step
            fails is kept in the outbox and applied when Redis answers again, and the
            call returns normally; ``"raise"``: it is queued all the same *and*
            :class:`RedisUnavailableError` is raised, for code that prefers to fail the
            request.
        retry_backoff: pause before a pending operation is tried again while Redis
            answers but refuses it for a while (``BUSY``, ``TRYAGAIN``...); it doubles up
            to ``retry_backoff_max``. While Redis does not answer at all it is probed
            every 50 ms, and everything pending is applied as soon as it answers.
        retry_backoff_max: the longest pause between two tries of a pending operation.
        outbox_size: operations waiting in the outbox, per Redis; past it, an epoch bump
            (every entry a miss, every L1 flushed) covers what could not be kept.
        dead_letter_size: dead letters kept, per Redis; past it, an epoch bump as well.
        close_timeout: how long :meth:`close` tries to apply what is still pending.
        recovery_grace: after the bus was deaf (Redis down, subscription lost, messages
            lost), L2 entries written before it heard again are reloaded rather than
            served for this long: another instance may still be applying writes it
            queued during the outage (``0``: off).
        audit_maxlen: approximate length bound of the audit stream in Redis (``0``: off).
        reclaim_chunk: keys deleted per step when an invalidated tag's keys are reclaimed
            (at most 5000; each step holds Redis for about 2-3 us per key).
        instance: this instance's name in the audit stream and its heartbeat record
            (default: host:pid).
        instance_ttl: with the bus on, the cache publishes a heartbeat record of itself
            in Redis (``stratacache.instances()`` lists them; the bus's prober refreshes
            it every ``min(1, instance_ttl / 3)`` seconds), which expires this long after
            the last refresh and is deleted by :meth:`close` (``0``: no record).
        bus_secret: sign bus messages (heartbeats included) with HMAC-SHA256 and drop
            every message that does not verify, counted in ``bus_messages_forged``. One
            secret or a sequence (the first signs, all verify: key rotation). Default:
            the codec's secrets, so ``Codec(secret=...)`` signs the bus too; ``False``:
            an unsigned bus even with a signed codec. Every instance on the channel
            needs the same setting: a signed and an unsigned instance do not hear each
            other.
        soft_timeout: with a fail-safe value at hand, a caller waits this long for the
            loader, then gets that value while the load goes on in the background (its
            result is cached when it arrives); without one it waits on, up to
            ``hard_timeout`` (``None``: off). See ``docs/loader.md``.
        hard_timeout: no caller waits longer for a load: it gets the fail-safe value if
            there is one, else :class:`LoaderTimeout`; an async loader is cancelled, a
            sync one finishes in its worker thread and is still cached (``None``: off).
        loader_breaker_threshold: loader failures (errors and hard timeouts) within
            ``loader_breaker_window`` seconds that open the loader's circuit breaker:
            for ``loader_breaker_cooldown`` seconds callers get the fail-safe value or
            :class:`LoaderUnavailable` at once, then one probe call at a time is let
            through (``None``, the default: no breaker).
        loader_breaker_window: see ``loader_breaker_threshold``.
        loader_breaker_cooldown: see ``loader_breaker_threshold``.
        schedule_poll: the longest the scheduler of :meth:`schedule_invalidation` waits
            between two looks at the clock (it wakes at the next tick if that is sooner;
            also the retry interval of a tick Redis did not answer).
        early_refresh: the default of ``get_or_set``'s and ``cached``'s
            ``early_refresh`` (``False``: off; ``True`` or a float ``beta``: recompute a
            hot value in the background shortly before it expires, XFetch; see
            ``docs/read-path.md``).
        copy_on_read: hand out a deep copy of each value read instead of the live object
            L1 holds (default ``False``: every reader of a key shares one object, so a
            caller that mutates a value changes it for everyone in the process).
        rand: uniform [0, 1) source of early refresh's XFetch test (tests pass a fixed
            one; default ``random.random``).
    """

    def __init__(
        self,
        redis: Any = None,
        *,
        namespace: str = "stratacache",
        l1_maxsize: int = 10_000,
        l1_policy: Literal["lru", "tinylfu"] = "lru",
        default_ttl: Duration = 300.0,
        l1_max_ttl: Duration = 60.0,
        jitter: float = 0.0,
        negative_ttl: Duration | None = None,
        fail_safe: bool = False,
        fail_safe_max_age: Duration = 3600.0,
        redis_timeout: Duration = 0.1,
        lease_ttl: Duration = 10.0,
        lease_wait: Duration = 1.0,
        breaker_threshold: int = 5,
        breaker_cooldown: Duration = 1.0,
        cluster: bool = False,
        codec: Codec | None = None,
        timer: Callable[[], float] | None = None,
        clock: Callable[[], float] | None = None,
        bus: bool | None = None,
        heartbeat_timeout: Duration = 1.0,
        bus_batch_window: Duration = 0.001,
        bus_unhealthy: UnhealthyPolicy = "bypass_l1",
        failover: Any = None,
        on_write_error: Literal["queue", "raise"] = "queue",
        retry_backoff: Duration = 0.05,
        retry_backoff_max: Duration = 2.0,
        outbox_size: int = 10_000,
        dead_letter_size: int = 10_000,
        close_timeout: Duration = 2.0,
        recovery_grace: Duration = 0.5,
        audit_maxlen: int = 10_000,
        reclaim_chunk: int = 1000,
        instance: str | None = None,
        instance_ttl: Duration = 5.0,
        bus_secret: bytes | Sequence[bytes] | Literal[False] | None = None,
        soft_timeout: Duration | None = None,
        hard_timeout: Duration | None = None,
        loader_breaker_threshold: int | None = None,
        loader_breaker_window: Duration = 10.0,
        loader_breaker_cooldown: Duration = 5.0,
        schedule_poll: Duration = 1.0,
        early_refresh: bool | float = False,
        copy_on_read: bool = False,
        rand: Callable[[], float] | None = None,
    ) -> None:
        self._keys = KeySpace(namespace)
        self.settings = CacheSettings.build(
            namespace=namespace,
            l1_maxsize=l1_maxsize,
            default_ttl=default_ttl,
            l1_max_ttl=l1_max_ttl,
            jitter=jitter,
            negative_ttl=negative_ttl,
            fail_safe=fail_safe,
            fail_safe_max_age=fail_safe_max_age,
            redis_timeout=redis_timeout,
            lease_ttl=lease_ttl,
            lease_wait=lease_wait,
            breaker_threshold=breaker_threshold,
            breaker_cooldown=breaker_cooldown,
            bus=redis is not None if bus is None else bus,
            heartbeat_timeout=heartbeat_timeout,
            bus_batch_window=bus_batch_window,
            bus_unhealthy=bus_unhealthy,
        )
        self._timer = timer or time.monotonic
        self._clock = clock or time.time
        self._codec = codec or Codec()
        if bus_secret is False:
            bus_secrets: tuple[bytes, ...] = ()
        elif bus_secret is None:
            bus_secrets = self._codec.secrets
        else:
            bus_secrets = normalize_secrets(bus_secret)
        # per-channel keys: a message signed for another namespace does not verify here
        self._bus_keys = bus_keys(bus_secrets, self._keys.channel())
        self._l1 = L1(l1_maxsize, timer=timer, policy=l1_policy)
        # Last known good values for fail-safe: a second L1 whose entries outlive their
        # TTL by the fail-safe window. Only fills write it, so the hit path pays nothing.
        self._stale = L1(l1_maxsize, timer=timer) if self.settings.fail_safe else None
        self._counters = Counters()
        # a cluster gets a breaker per master: one paused master must not cut off the rest
        self._per_node_breakers = cluster or isinstance(redis, AsyncRedisCluster)
        self._breaker = self._new_breaker("primary Redis")
        self._flights: dict[str, AsyncResultSlot[Any]] = {}
        # the loader's time limits and breaker (loader_call.py, docs/loader.md)
        self._loader_limits = LoaderLimits.build(soft_timeout, hard_timeout)
        self._loader_breaker_settings = LoaderBreakerSettings.build(
            loader_breaker_threshold, loader_breaker_window, loader_breaker_cooldown
        )
        self._loader_breaker = self._new_loader_breaker()
        self._loads = AsyncLoads(self)
        self._invalidation_settings = InvalidationSettings(
            retry_backoff=retry_backoff,  # type: ignore[arg-type]
            retry_backoff_max=retry_backoff_max,  # type: ignore[arg-type]
            outbox_size=outbox_size,
            dead_letter_size=dead_letter_size,
            close_timeout=close_timeout,  # type: ignore[arg-type]
            audit_maxlen=audit_maxlen,
            reclaim_chunk=reclaim_chunk,
            batch_window=self.settings.bus_batch_window,
        )
        if instance is not None and (not isinstance(instance, str) or not instance):
            raise ValueError("instance must be a non-empty str")
        if on_write_error not in ("queue", "raise"):
            raise ValueError(f"on_write_error must be 'queue' or 'raise', got {on_write_error!r}")
        self._raise_on_write_error = on_write_error == "raise"
        self._recovery_grace = to_seconds(recovery_grace, "recovery_grace")
        # L2 entries created (wall clock) before _suspect_before are not served while the
        # bus is unhealthy or until _suspect_until (monotonic); see coherence.py.
        # _answered_at / _silent_at: when the primary Redis last answered after failing /
        # last failed to answer the prober or the bus lost track (wall clock)
        self._suspect_before = 0.0
        self._suspect_until = 0.0
        self._answered_at = 0.0
        self._silent_at = 0.0
        self._instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self._instance_ttl = to_seconds(instance_ttl, "instance_ttl")
        self._versions = TagVersions()
        self._tier = self._make_tier(redis, cluster)
        if self.settings.bus and self._tier is None:
            raise ValueError("bus=True needs redis")
        if failover is not None and self._tier is None:
            raise ValueError("failover needs redis")
        # the failover Redis has a breaker of its own: its outage must not open the primary's
        self._failover_breaker = self._new_breaker("failover Redis", primary=False)
        self._failover = (
            None
            if failover is None
            else self._make_tier(failover, cluster, breaker=self._failover_breaker)
        )
        self._bus = self._make_bus()
        self._invalidator = self._make_invalidator()
        self._reads = AsyncReadPath(self)
        self._writes = AsyncWritePath(self)
        self._conditional = AsyncConditionalWrites(self)
        self._blooms: dict[str, AsyncBloomFilter] = {}
        self._schedule_poll = to_seconds(schedule_poll, "schedule_poll", allow_zero=False)
        self._scheduler = AsyncScheduler(self, self._schedule_poll)
        self._refresher = AsyncEarlyRefresh(self, early_refresh, rand or random.random)
        self._refresh_due = self._refresher.due  # same dict: the hit path reads it
        self._copy_on_read = copy_option(copy_on_read)
        self._copy = make_copier(self._codec)
        # False once an L1 hit may have more to do than return the value (early refresh
        # or copy on read by default, reads counted for an AdaptiveTTL): get_or_set is
        # then _get_or_set_checked (see _check_hits), so a plain cache tests nothing
        self._plain_hits = True
        if self._copy_on_read or self._refresher.default_beta is not None:
            self._check_hits()
        _FORK_AWARE.add(self)
        # Sync only: ``get`` becomes the L1's compiled getter, so a hit runs no Python
        # frame of ours; misses continue in the read path. (Same behaviour as get.)
        fast_get = async_bind_fast_get(self._l1, self._reads._get_after_l1_miss)
        if fast_get is not None and not self._copy_on_read:
            setattr(self, "get", fast_get)  # noqa: B010 - an instance attribute, on purpose

    def _new_breaker(self, name: str, primary: bool = True) -> CircuitBreaker | NodeBreakers:
        kind = NodeBreakers if self._per_node_breakers else CircuitBreaker
        return kind(
            self.settings.breaker_threshold,
            self.settings.breaker_cooldown,
            timer=self._timer,
            name=name,
            on_close=self._redis_answers if primary else self._nudge_outbox,
        )

    def _new_loader_breaker(self) -> CircuitBreaker | None:
        settings = self._loader_breaker_settings
        if settings is None:
            return None
        return CircuitBreaker(
            settings.threshold,
            settings.cooldown,
            timer=self._timer,
            name=f"loader of namespace {self._keys.namespace!r}",
            window=settings.window,
            effect=(
                "calls do not reach the loader (callers get the fail-safe value, else "
                "LoaderUnavailable at once)"
            ),
        )

    def _after_fork_in_child(self) -> None:
        """A fresh L1, fresh connections and a bus of its own: no thread, task or socket
        of the parent's is used (sync redis-py pools notice the new pid by themselves).

        The L1s are reset in place, not replaced: the sync ``get`` and decorated
        functions are bound to this L1 object (compiled getter / memoized callables).
        """
        self._l1.reset()
        if self._stale is not None:
            self._stale.reset()
        self._flights = {}
        self._loads = AsyncLoads(self)  # the parent's load tasks and threads are not ours
        self._loader_breaker = self._new_loader_breaker()
        self._refresher.reset()
        # a lock held by one of the parent's threads at the fork would never be released
        self._breaker = self._new_breaker("primary Redis")
        self._failover_breaker = self._new_breaker("failover Redis", primary=False)
        if self._tier is not None:
            self._tier.use_breaker(self._breaker)
            async_forget_connections(self._tier.client)
        if self._failover is not None:
            self._failover.use_breaker(self._failover_breaker)
            async_forget_connections(self._failover.client)
        # not clear(): its lock may be held by the parent's listener thread at the fork
        self._versions.reset_after_fork()
        self._bus = self._make_bus()
        self._invalidator = self._make_invalidator()
        # the parent's scheduler worker does not run here: a child registers its own
        self._scheduler = AsyncScheduler(self, self._schedule_poll)
        self._suspect_before = self._suspect_until = self._answered_at = self._silent_at = 0.0
        for bloom in self._blooms.values():
            bloom._after_fork_in_child()

    def _make_tier(
        self, redis: Any, cluster: bool, breaker: CircuitBreaker | NodeBreakers | None = None
    ) -> AsyncRedisTier | None:
        if redis is None:
            return None
        owns = isinstance(redis, str)
        if owns:
            timeout = self.settings.redis_timeout
            options: dict[str, Any] = {
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
            }
            if cluster:
                client: Any = AsyncRedisCluster.from_url(
                    redis, retry=async_cluster_no_retry(), **options
                )
            else:
                client = AsyncRedis.from_url(redis, retry=async_reconnect_once(), **options)
        elif isinstance(redis, (AsyncRedis, AsyncRedisCluster)):
            client = redis
        else:
            kinds = " or ".join(
                f"{c.__module__}.{c.__qualname__}" for c in (AsyncRedis, AsyncRedisCluster)
            )
            raise TypeError(f"redis must be None, a URL, or a {kinds}, not {type(redis).__name__}")
        return AsyncRedisTier(
            client, self._keys, breaker or self._breaker, self._counters, owns_client=owns
        )

    # -- reads --------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` from L1, else L2, else ``default``. Never calls a loader.

        The value is the live object L1 holds (shared by every reader in the process)
        unless the cache was built with ``copy_on_read=True``."""
        value = self._l1.get(key, MISSING)
        if value is not MISSING:
            return self._copy(value) if self._copy_on_read else value
        if not self._copy_on_read:
            return await self._reads._get_after_l1_miss(key, default)
        value = await self._reads._get_after_l1_miss(key, MISSING)
        return default if value is MISSING else self._copy(value)

    async def get_many(
        self, keys: Iterable[str], *, copy_on_read: bool | None = None
    ) -> dict[str, Any]:
        """Values of the keys that are cached (L1, then one L2 round trip for the rest).

        ``copy_on_read``: return copies rather than the live objects L1 holds (default:
        the cache's setting)."""
        if self._copy_on_read if copy_on_read is None else copy_option(copy_on_read):
            copy = self._copy
            return {k: copy(v) for k, v in (await self._get_many(keys)).items()}
        return await self._get_many(keys)

    async def _get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        missing = l1_pass(self._l1, keys, found)  # compiled beside the L1 (_read_many.py)
        if not missing or self._tier is None:
            return found
        return await self._reads.get_many_after_l1(found, missing)

    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: Any = None,
        tags: Iterable[str] = (),
        # (not keyword-only: CPython fills missing keyword-only defaults from a dict, which
        # made every plain hit ~25% slower; pass them by keyword all the same)
        early_refresh: bool | float | None = None,
        copy_on_read: bool | None = None,
        soft_timeout: Duration | MissingType | None = MISSING,
        hard_timeout: Duration | MissingType | None = MISSING,
        bloom: AsyncBloomFilter | None = None,
        bloom_item: Any = MISSING,
        bloom_default: Any = None,
    ) -> Any:
        """The cached value of ``key``, or the loader's result, cached (single-flight).

        ``loader`` is a zero-argument callable; it may return an awaitable. Its
        exceptions reach every caller waiting on it and nothing is cached.

        ``ttl``: seconds, a ``timedelta``, ``None`` (the default TTL), a callable of the
        value returning one of those (``ttl=lambda user: 60 if user.active else 3600``),
        or an :class:`AdaptiveTTL`. ``early_refresh``: ``True`` or a float ``beta``
        recomputes the value in the background shortly before it expires (XFetch;
        callers keep getting the current value meanwhile), ``False`` never; ``None``:
        the cache's default. ``copy_on_read``: return a copy rather than the live object
        L1 holds (``None``: the cache's default).
        ``soft_timeout`` / ``hard_timeout`` override the cache's for this call
        (``None``: off; default: the cache's); see ``docs/loader.md``.
        ``bloom``: a filter (:meth:`bloom`) of the ids that exist. After an L1 miss, an
        id the filter has definitely never seen (``bloom_item``, default: ``key``) gets
        ``bloom_default`` at once — no L2 read, no loader call — and counts in
        ``stats().bloom_rejected``; a "maybe" goes on as usual.
        """
        if early_refresh is True and copy_on_read is None and not isinstance(ttl, AdaptiveTTL):
            # The early-refresh hit (beta 1) in one C call: the value unless the entry's
            # refresh time has come. Due (or a miss): peek, which counts no second hit,
            # and the refresh path below takes the key out of ``due`` (one reader enters).
            value = self._l1.get_unless_due(key, MISSING, self._refresh_due, self._clock)
            if value is not MISSING:
                return value
            value = self._l1.peek(key, MISSING)
        else:
            value = self._l1.get(key, MISSING)
        if value is not MISSING:
            if copy_on_read is None and early_refresh is None:
                return value
            return self._hit_with_options(
                key, value, loader, ttl, tags, early_refresh, copy_on_read
            )
        return await self._get_or_set_miss(
            key,
            loader,
            ttl,
            tags,
            early_refresh,
            copy_on_read,
            soft_timeout,
            hard_timeout,
            bloom,
            bloom_item,
            bloom_default,
        )

    async def _get_or_set_checked(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: Any = None,
        tags: Iterable[str] = (),
        early_refresh: bool | float | None = None,
        copy_on_read: bool | None = None,
        soft_timeout: Duration | MissingType | None = MISSING,
        hard_timeout: Duration | MissingType | None = MISSING,
        bloom: AsyncBloomFilter | None = None,
        bloom_item: Any = MISSING,
        bloom_default: Any = None,
    ) -> Any:
        """:meth:`get_or_set` of a cache whose every hit may have more to do than return
        the value (early refresh or copy on read by default, hits counted for an
        AdaptiveTTL): set over ``get_or_set`` on the instance by :meth:`_check_hits`, so
        that the plain method tests nothing of the cache's on a hit."""
        value = self._l1.get(key, MISSING)
        if value is not MISSING:
            return self._hit_with_options(
                key, value, loader, ttl, tags, early_refresh, copy_on_read
            )
        return await self._get_or_set_miss(
            key,
            loader,
            ttl,
            tags,
            early_refresh,
            copy_on_read,
            soft_timeout,
            hard_timeout,
            bloom,
            bloom_item,
            bloom_default,
        )

    def _check_hits(self) -> None:
        """From now on, every ``get_or_set`` hit goes through :meth:`_hit_with_options`."""
        if self._plain_hits:
            self._plain_hits = False
            setattr(self, "get_or_set", self._get_or_set_checked)  # noqa: B010

    async def _get_or_set_miss(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: Any,
        tags: Iterable[str],
        early_refresh: bool | float | None,
        copy_on_read: bool | None,
        soft_timeout: Duration | MissingType | None = MISSING,
        hard_timeout: Duration | MissingType | None = MISSING,
        bloom: AsyncBloomFilter | None = None,
        bloom_item: Any = MISSING,
        bloom_default: Any = None,
    ) -> Any:
        if bloom is not None:
            validate_key(key)
            if not await bloom.might_contain(key if bloom_item is MISSING else bloom_item):
                self._counters.bloom_rejected += 1
                return bloom_default
        limits = self._loader_limits
        if soft_timeout is not MISSING or hard_timeout is not MISSING:
            limits = limits_for(limits, soft_timeout, hard_timeout)
        beta = self._refresher.beta(early_refresh)
        value = await self._reads.get_or_set_after_l1(key, loader, ttl, tags, limits, beta)
        if self._copy_on_read if copy_on_read is None else copy_option(copy_on_read):
            return self._copy(value)
        return value

    def _hit_with_options(
        self,
        key: str,
        value: Any,
        loader: Callable[[], Any],
        ttl: Any,
        tags: Iterable[str],
        early_refresh: bool | float | None,
        copy_on_read: bool | None,
    ) -> Any:
        """An L1 hit of ``get_or_set`` with more to do than return the value."""
        if isinstance(ttl, AdaptiveTTL):
            ttl.hit(key)
        beta = 1.0 if early_refresh is True else self._refresher.beta(early_refresh)
        if beta is not None:
            self._refresher.on_l1_hit(key, loader, ttl, tags, beta)
        if self._copy_on_read if copy_on_read is None else copy_option(copy_on_read):
            return self._copy(value)
        return value

    # -- writes -------------------------------------------------------------------------

    async def set(
        self,
        key: str,
        value: Any,
        ttl: Any = None,
        tags: Iterable[str] = (),
        *,
        fence: int | None = None,
    ) -> None:
        """Store ``value`` in L2 and L1 for ``ttl`` seconds (default: ``default_ttl``;
        also a callable of the value, or an :class:`AdaptiveTTL`).

        The value is encoded first: an unsupported value raises ``SerializationError``
        (a ``TypeError``) before anything is written. If Redis cannot take the write, the
        key is deleted there as soon as it answers again (the outbox) and, until then,
        not read from L2 by this instance; L1 holds the new value. The call returns
        normally unless ``on_write_error="raise"``.

        ``fence``: the fencing token of a :meth:`lock` held while computing ``value``.
        The write is refused with :class:`FencingTokenRejected` if a write to ``key``
        already carried a higher token (a newer holder), and a Redis fault is raised as
        :class:`RedisUnavailableError`: a fenced write either lands or says why not.
        """
        await self._writes.set(key, value, ttl, tags, fence)

    async def set_many(
        self, mapping: Mapping[str, Any], ttl: Any = None, tags: Iterable[str] = ()
    ) -> None:
        """Store several values (one pipeline); all are encoded before any is written.
        Redis faults are handled as for :meth:`set`. A callable ``ttl`` (or an
        :class:`AdaptiveTTL`) gives each value its own TTL: one pipeline per distinct
        TTL."""
        await self._writes.set_many(mapping, ttl, tags)

    async def add(
        self, key: str, value: Any, ttl: Duration | None = None, tags: Iterable[str] = ()
    ) -> bool:
        """Store ``value`` only if ``key`` has no live entry; True if it was stored.

        Atomic across processes (a compare-and-set in Redis): of concurrent ``add`` calls
        on one key, one wins. An expired entry, or one whose tag or namespace was
        invalidated, counts as absent. Needs Redis to answer: raises
        :class:`RedisUnavailableError` otherwise, having written nothing. Liveness is what
        Redis holds now: after a deaf spell of the bus, :meth:`get` may withhold an older
        entry for a while, but ``add`` and :meth:`incr` still see it.
        """
        return await self._conditional.add(key, value, ttl, tags)

    async def incr(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` to the int cached under ``key`` and return the new value.

        Atomic across processes (compare-and-set in Redis: no increment is lost); the entry
        keeps its expiry and tags. ``KeyError`` if ``key`` has no live entry, ``TypeError``
        if its value is not an ``int``; :class:`RedisUnavailableError` if Redis does not
        answer (nothing changed then).
        """
        return await self._conditional.incr(key, delta)

    async def delete(self, key: str) -> bool:
        """Remove ``key`` from L1 and L2 and revoke any lease on it; True if it existed.

        If Redis cannot take it, the delete waits in the outbox and is applied as soon as
        Redis answers again; meanwhile this instance does not read ``key`` from L2."""
        return await self._writes.delete(key)

    async def touch(self, key: str, ttl: Duration) -> bool:
        """Give a live ``key`` a new TTL from now (the seed's SetTTL); False if it is not
        cached, has expired (even if fail-safe still keeps it), or Redis cannot say."""
        return await self._writes.touch(key, ttl)

    # -- lifecycle ----------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the background work (delayed invalidations run now; retries still waiting
        become dead letters), stop the bus, and close the Redis clients the cache created.

        Loads still running in the background (soft timeouts) get up to ``close_timeout``
        to end and be cached; then async ones are cancelled (giving their lease back)
        and threads are left to end by themselves. Early refreshes still running are
        cancelled (``Cache``: waited for, up to ``close_timeout``) and give their leases
        back."""
        await self._scheduler.aclose()
        await self._refresher.aclose(self._invalidation_settings.close_timeout)
        for bloom in list(self._blooms.values()):
            await bloom.aclose()
        await self._loads.aclose(self._invalidation_settings.close_timeout)
        await self._invalidator.aclose()
        if self._bus is not None:
            await self._bus.aclose()
        if self._tier is not None:
            await self._tier.aclose()
        if self._failover is not None:
            await self._failover.aclose()

    async def __aenter__(self) -> AsyncCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- what the read and write paths share (read_path, write_path, refresh, warm...) ---

    def _encode_new(
        self,
        key: str,
        value: Any,
        ttl: float,
        tags: tuple[str, ...],
        stamps: tuple[tuple[int, ...], int] | None,
        now: float,
        load_time: float = 0.0,
    ) -> bytes:
        """The L2 blob of a new entry written at ``now`` for ``ttl`` seconds, stamped with
        its tags' versions and the epoch (``None``: Redis could not say; the blob is then
        only encoded, to refuse a bad value before anything is written)."""
        return self._codec.encode(
            key,
            value,
            created_at=now,
            expires_at=now + ttl,
            tags=tags,
            stamps=None if stamps is None else stamps[0],
            epoch=0 if stamps is None else stamps[1],
            load_time=load_time,
        )

    def _ttl_for(self, value: Any, ttl: Any, key: str) -> float:
        """The TTL of a loader's ``value`` for ``key`` (``ttl`` as get_or_set takes it)."""
        if value is None and self.settings.negative_ttl is not None:
            return self.settings.negative_ttl
        if isinstance(ttl, AdaptiveTTL):
            self._check_hits()  # its hits are counted from now on
        return self.settings.entry_ttl(resolve_ttl(ttl, key, value))

    def _positive_ttl(self, ttl: Any, key: str | None = None, value: Any = MISSING) -> float:
        """The TTL (> 0) of a written ``value`` of ``key`` (without one, ``ttl`` must be
        fixed: ``touch``)."""
        fixed = ttl if value is MISSING else resolve_ttl(ttl, key, value)
        if fixed is not None:
            to_seconds(fixed, "ttl", allow_zero=False)
        return self.settings.entry_ttl(fixed)

    @staticmethod
    def _tags(tags: Iterable[str]) -> tuple[str, ...]:
        """Validated tags with their ancestors (``a:b`` also carries ``a``)."""
        if type(tags) is tuple and not tags:  # the default, on every miss
            return ()
        if isinstance(tags, str):
            raise TypeError("tags must be an iterable of str, not a single str")
        return expand_tags(validate_tag(tag) for tag in tags)


# Caches that must reset themselves in a forked child (gunicorn --preload, multiprocessing
# "fork"): one hook for the module, a weak set so that it keeps no cache alive.
_FORK_AWARE: weakref.WeakSet[AsyncCache] = weakref.WeakSet()


def _reset_after_fork() -> None:  # pragma: no cover - runs in forked children
    for cache in list(_FORK_AWARE):
        cache._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
