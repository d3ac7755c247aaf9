"""``AsyncCache``: L1 (in-process) -> Redis L2 -> loader, with single-flight and leases.

Read path (``get_or_set``):

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

Invalidation bus (``_bus.py``, ``bus.py``): every write is published on the namespace's
channel and every other instance drops the key from its L1. While the bus is unhealthy
the cache writes nothing to L1 (``_l1_open``) after emptying it, so reads go to L2 and
the loader without a check on the L1 hit path (the sync ``get`` is the L1's compiled
getter). The listener refuses L1 writes *before* it clears L1, and every L1 fill goes
through a ticket that the clear revokes, so no fill from before the flush can land after
it. A forked child resets its L1 in place and gets fresh connections and its own listener.
"""

from __future__ import annotations

import functools
import os
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from time import perf_counter
from typing import Any, TypeVar, cast

from .._breaker import CircuitBreaker
from .._bus import BusPublisherState, BusState, UnhealthyPolicy, apply_to_l1, new_source_id
from .._bus_messages import Action, BusMessage
from .._codec import Codec, Entry
from .._errors import RedisUnavailableError
from .._keys import KeyMaker, KeySpace, validate_key, validate_tag
from .._l1 import L1
from .._options import CacheSettings, Duration, to_seconds
from .._primitives import (
    AsyncRedis,
    AsyncRedisCluster,
    AsyncResultSlot,
    async_bind_fast_cached,
    async_bind_fast_get,
    async_call_loader,
    async_forget_connections,
    async_no_retry,
    async_sleep,
)
from .._sentinel import MISSING
from .._stats import CacheStats, Counters
from .bus import AsyncInvalidationBus
from .redis_tier import AsyncRedisTier

F = TypeVar("F", bound=Callable[..., Any])

_POLL_FIRST = 0.002  # first pause while another process holds the lease (seconds)
_POLL_MAX = 0.05  # longest pause between polls


class _LeaderGone(Exception):
    """The leader of a single flight stopped without an outcome (cancelled): retry."""


class AsyncCache:
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
        default_ttl: TTL of entries written without one (seconds or ``timedelta``).
        l1_max_ttl: the longest an entry lives in L1, whatever its TTL (a backstop
            against missed invalidations).
        jitter: a fraction in [0, 1): each TTL is shortened by a random part of it, so
            entries written together do not expire together.
        negative_ttl: TTL for a loader result of ``None`` ("not found"); ``None`` uses
            the normal TTL; ``0`` does not cache ``None`` results.
        fail_safe: on a loader error, serve the last known value instead, if it expired
            less than ``fail_safe_max_age`` seconds ago (counted as ``stale_served``).
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
        bus_batch_window: invalidations within this window travel as one message
            (``0``: one message per write, sent before the write returns).
        bus_unhealthy: ``"bypass_l1"`` (default): while the bus is unhealthy, L1 is kept
            empty and reads go to L2 and the loader; ``"serve_l1"``: keep serving L1
            (each entry is still bounded by ``l1_max_ttl``), availability over freshness.
    """

    def __init__(
        self,
        redis: Any = None,
        *,
        namespace: str = "stratacache",
        l1_maxsize: int = 10_000,
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
        self._l1 = L1(l1_maxsize, timer=timer)
        # Last known good values for fail-safe: a second L1 whose entries outlive their
        # TTL by the fail-safe window. Only fills write it, so the hit path pays nothing.
        self._stale = L1(l1_maxsize, timer=timer) if self.settings.fail_safe else None
        self._counters = Counters()
        self._breaker = CircuitBreaker(
            self.settings.breaker_threshold, self.settings.breaker_cooldown, timer=self._timer
        )
        self._flights: dict[str, AsyncResultSlot[Any]] = {}
        self._tier = self._make_tier(redis, cluster)
        if self.settings.bus and self._tier is None:
            raise ValueError("bus=True needs redis")
        self._bus = self._make_bus()
        _FORK_AWARE.add(self)
        # Sync only: ``get`` becomes the L1's compiled getter, so a hit runs no Python
        # frame of ours; misses continue in _get_after_l1_miss. (Same behaviour as get.)
        fast_get = async_bind_fast_get(self._l1, self._get_after_l1_miss)
        if fast_get is not None:
            setattr(self, "get", fast_get)  # noqa: B010 - an instance attribute, on purpose

    def _make_bus(self) -> AsyncInvalidationBus | None:
        if self._tier is None or not self.settings.bus:
            return None
        source = new_source_id()
        # real clocks: health and lag are about the network, not the (injectable) cache time
        state = BusState(
            source,
            self._flush_l1,
            self._apply_bus_message,
            heartbeat_timeout=self.settings.heartbeat_timeout,
            policy=self.settings.bus_unhealthy,
            timer=time.monotonic,
            clock=time.time,
        )
        return AsyncInvalidationBus(
            self._tier,
            self._keys.channel(),
            state,
            BusPublisherState(source, time.time),
            batch_window=self.settings.bus_batch_window,
            heartbeat_timeout=self.settings.heartbeat_timeout,
        )

    def _flush_l1(self) -> None:
        self._l1.clear()

    def _apply_bus_message(self, message: BusMessage) -> None:
        apply_to_l1(self._l1, message)

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
        # a lock held by one of the parent's threads at the fork would never be released
        self._breaker = CircuitBreaker(
            self.settings.breaker_threshold, self.settings.breaker_cooldown, timer=self._timer
        )
        if self._tier is not None:
            self._tier.use_breaker(self._breaker)
            async_forget_connections(self._tier.client)
        self._bus = self._make_bus()

    def _l1_open(self) -> bool:
        """Whether L1 may take new entries (False while the bus is unhealthy)."""
        return self._bus is None or self._bus.state.l1_usable

    async def _bus_started(self) -> None:
        bus = self._bus
        if bus is not None and not bus.started:
            await bus.start()

    async def _publish(self, action: Action, args: Iterable[str]) -> None:
        if self._bus is not None:
            await self._bus.publish(action, args)

    def _make_tier(self, redis: Any, cluster: bool) -> AsyncRedisTier | None:
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
                client: Any = AsyncRedisCluster.from_url(redis, **options)
            else:
                client = AsyncRedis.from_url(redis, retry=async_no_retry(), **options)
        elif isinstance(redis, (AsyncRedis, AsyncRedisCluster)):
            client = redis
        else:
            kinds = " or ".join(
                f"{c.__module__}.{c.__qualname__}" for c in (AsyncRedis, AsyncRedisCluster)
            )
            raise TypeError(f"redis must be None, a URL, or a {kinds}, not {type(redis).__name__}")
        return AsyncRedisTier(client, self._keys, self._breaker, self._counters, owns_client=owns)

    # -- reads --------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` from L1, else L2, else ``default``. Never calls a loader."""
        value = self._l1.get(key, MISSING)
        if value is not MISSING:
            return value
        return await self._get_after_l1_miss(key, default)

    async def _get_after_l1_miss(self, key: str, default: Any) -> Any:
        validate_key(key)
        if self._tier is None:
            return default
        await self._bus_started()
        ticket = self._l1.ticket(key)
        try:
            entry = await self._read_l2(key)
        except BaseException:
            self._l1.release(ticket, key)
            raise
        if entry is None or self._expired(entry):
            self._counters.l2_misses += 1
            self._l1.release(ticket, key)
            return default
        self._counters.l2_hits += 1
        self._install(ticket, key, entry.value, entry)
        return entry.value

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Values of the keys that are cached (L1, then one L2 round trip for the rest)."""
        found: dict[str, Any] = {}
        missing: list[str] = []
        l1 = self._l1
        for key in keys:
            value = l1.get(key, MISSING)
            if value is not MISSING:
                found[key] = value
            elif key not in found:
                missing.append(validate_key(key))
        if not missing or self._tier is None:
            return found
        await self._bus_started()
        missing = list(dict.fromkeys(missing))
        tickets = [l1.ticket(key) for key in missing]
        try:
            blobs = await self._tier.get_many(missing)
        except RedisUnavailableError:
            blobs = [None] * len(missing)
        except BaseException:
            for key, ticket in zip(missing, tickets):
                l1.release(ticket, key)
            raise
        # The per-key work of _read_l2/_install, inlined: this loop is most of the cost
        # of a get_many beyond the MGET itself.
        decode = self._codec.decode
        now = self._clock()
        hits = 0
        for key, ticket, blob in zip(missing, tickets, blobs):
            entry = None
            if blob is not None:
                try:
                    entry = decode(key, blob)
                except Exception:
                    self._counters.decode_errors += 1
            if entry is None:
                l1.release(ticket, key)
                continue
            expires_at = entry.expires_at
            if expires_at is None:
                remaining = self.settings.l1_max_ttl
            elif expires_at > now:
                remaining = expires_at - now
            else:
                l1.release(ticket, key)
                continue
            hits += 1
            self._install_value(ticket, key, entry.value, remaining, entry.tags)
            found[key] = entry.value
        self._counters.l2_hits += hits
        self._counters.l2_misses += len(missing) - hits
        return found

    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: Duration | None = None,
        tags: Iterable[str] = (),
    ) -> Any:
        """The cached value of ``key``, or the loader's result, cached (single-flight).

        ``loader`` is a zero-argument callable; it may return an awaitable. Its
        exceptions reach every caller waiting on it and nothing is cached.
        """
        value = self._l1.get(key, MISSING)
        if value is not MISSING:
            return value
        validate_key(key)
        tag_tuple = self._tags(tags)
        if ttl is not None:
            to_seconds(ttl, "ttl")  # a bad ttl fails before the loader runs, not after
        await self._bus_started()
        while True:
            slot: AsyncResultSlot[Any] = AsyncResultSlot()
            leader = self._flights.setdefault(key, slot)
            if leader is not slot:
                self._counters.coalesced += 1
                try:
                    return await leader.wait()
                except _LeaderGone:
                    # the leader was cancelled: a waiter that took over may have filled L1
                    value = self._l1.peek(key, MISSING)
                    if value is not MISSING:
                        return value
                    continue  # take over, or follow the waiter that did
            try:
                value = await self._fill(key, loader, ttl, tag_tuple)
            except Exception as exc:
                slot.set_exception(exc)
                raise
            except BaseException:
                slot.set_exception(_LeaderGone())
                raise
            else:
                slot.set_result(value)
                return value
            finally:
                del self._flights[key]

    async def _fill(
        self, key: str, loader: Callable[[], Any], ttl: Duration | None, tags: tuple[str, ...]
    ) -> Any:
        """The leader's work on an L1 miss: L2, lease, loader, guarded writes."""
        ticket = self._l1.ticket(key)
        ticket_open = True
        token: bytes | None = None
        stale: Entry | None = None  # a logically expired entry: fail-safe material
        try:
            entry = await self._read_l2(key)
            if entry is None or self._expired(entry):
                stale = entry
                lease_state = await self._take_lease(key)
                if not isinstance(lease_state, Entry):
                    token = lease_state
                    entry = None
                else:  # a holder elsewhere filled it while we waited
                    entry = lease_state
            if entry is not None:
                self._counters.l2_hits += 1
                ticket_open = False
                self._install(ticket, key, entry.value, entry)
                return entry.value
            self._counters.l2_misses += 1
            value, is_stale = await self._load(key, loader, stale)
            if is_stale:
                return value
            ttl_s = self._ttl_for(value, ttl)
            if ttl_s == 0:
                return value
            now = self._clock()
            blob = (
                self._codec.encode(key, value, created_at=now, expires_at=now + ttl_s, tags=tags)
                if self._tier is not None
                else b""
            )
            if token is not None:
                assert self._tier is not None
                try:
                    stored = await self._tier.write_if_lease(
                        key, token, blob, self.settings.physical_ttl(ttl_s)
                    )
                except RedisUnavailableError:
                    stored = True  # unknown outcome; nothing says the lease was revoked
                token = None
                if not stored:
                    # revoked: the key was written or invalidated while we loaded
                    self._counters.fills_refused += 1
                    return value
            ticket_open = False
            self._install_value(ticket, key, value, ttl_s, tags)
            return value
        finally:
            if ticket_open:
                self._l1.release(ticket, key)
            if token is not None:
                await self._give_back_lease(key, token)

    async def _give_back_lease(self, key: str, token: bytes) -> None:
        assert self._tier is not None
        try:
            await self._tier.release_lease(key, token)
        except RedisUnavailableError:
            pass  # the lease expires by itself after lease_ttl

    async def _take_lease(self, key: str) -> bytes | Entry | None:
        """The lease token; or the entry a holder elsewhere wrote while we waited; or None
        (no Redis, or ``lease_wait`` passed: load without writing L2)."""
        if self._tier is None:
            return None
        deadline = self._timer() + self.settings.lease_wait
        pause = _POLL_FIRST
        while True:
            try:
                blob, token = await self._tier.read_or_lease(key, self.settings.lease_ttl)
            except RedisUnavailableError:
                return None
            entry = self._decode(key, blob, count=False)
            if entry is not None and not self._expired(entry):
                if token is not None:
                    await self._give_back_lease(key, token)
                return entry
            if token is not None:
                return token
            if pause == _POLL_FIRST:
                self._counters.lease_waits += 1
            if self._timer() >= deadline:
                return None
            await async_sleep(pause)
            pause = min(pause * 2, _POLL_MAX)

    async def _load(
        self, key: str, loader: Callable[[], Any], stale: Entry | None
    ) -> tuple[Any, bool]:
        """Run the loader; with fail-safe, answer its error with the last known value."""
        self._counters.loads += 1
        start = perf_counter()
        try:
            return await async_call_loader(loader), False
        except Exception:
            fallback = self._fail_safe_value(key, stale)
            if fallback is MISSING:
                raise
            self._counters.stale_served += 1
            return fallback, True
        finally:
            self._counters.load_latency.record(perf_counter() - start)

    def _fail_safe_value(self, key: str, stale: Entry | None) -> Any:
        if self._stale is None:
            return MISSING
        value = self._stale.peek(key, MISSING)
        if value is not MISSING:
            return value
        if (
            stale is not None
            and stale.expires_at is not None
            and self._clock() - stale.expires_at <= self.settings.fail_safe_max_age
        ):
            return stale.value
        return MISSING

    # -- writes -------------------------------------------------------------------------

    async def set(
        self, key: str, value: Any, ttl: Duration | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Store ``value`` in L2 and L1 for ``ttl`` seconds (default: ``default_ttl``).

        The value is encoded first: an unsupported value raises ``SerializationError``
        (a ``TypeError``) before anything is written. A Redis fault is counted, not
        raised; L1 still holds the new value.
        """
        validate_key(key)
        tag_tuple = self._tags(tags)
        ttl_s = self._positive_ttl(ttl)
        now = self._clock()
        blob = self._codec.encode(
            key, value, created_at=now, expires_at=now + ttl_s, tags=tag_tuple
        )
        if self._tier is not None:
            await self._bus_started()
            try:
                await self._tier.write(key, blob, self.settings.physical_ttl(ttl_s))
            except RedisUnavailableError:
                pass
            await self._publish(Action.INVALIDATE_KEYS, (key,))
        self._write_l1(key, value, ttl_s, tag_tuple)

    async def set_many(
        self, mapping: Mapping[str, Any], ttl: Duration | None = None, tags: Iterable[str] = ()
    ) -> None:
        """Store several values (one pipeline); all are encoded before any is written."""
        tag_tuple = self._tags(tags)
        ttl_s = self._positive_ttl(ttl)
        now = self._clock()
        blobs = [
            (
                validate_key(key),
                self._codec.encode(
                    key, value, created_at=now, expires_at=now + ttl_s, tags=tag_tuple
                ),
            )
            for key, value in mapping.items()
        ]
        if self._tier is not None and blobs:
            await self._bus_started()
            try:
                await self._tier.write_many(blobs, self.settings.physical_ttl(ttl_s))
            except RedisUnavailableError:
                pass
            await self._publish(Action.INVALIDATE_KEYS, [key for key, _ in blobs])
        for key, value in mapping.items():
            self._write_l1(key, value, ttl_s, tag_tuple)

    def _write_l1(self, key: str, value: Any, ttl: float, tags: tuple[str, ...]) -> None:
        """A direct write's L1 side (and the fail-safe copy); nothing while the bus is down."""
        if self._l1_open():
            self._l1.set(key, value, ttl=min(ttl, self.settings.l1_max_ttl), tags=tags)
            if not self._l1_open():  # the bus went unhealthy meanwhile: keep L1 empty
                self._l1.invalidate(key)
        if self._stale is not None:
            self._stale.set(key, value, ttl=ttl + self.settings.fail_safe_max_age, tags=tags)

    async def delete(self, key: str) -> bool:
        """Remove ``key`` from L1 and L2 and revoke any lease on it; True if it existed."""
        validate_key(key)
        existed = self._l1.invalidate(key)
        if self._stale is not None:
            self._stale.invalidate(key)
        if self._tier is not None:
            await self._bus_started()
            try:
                existed = await self._tier.delete(key) or existed
            except RedisUnavailableError:
                pass
            await self._publish(Action.INVALIDATE_KEYS, (key,))
        return existed

    async def touch(self, key: str, ttl: Duration) -> bool:
        """Give ``key`` a new TTL from now (the seed's SetTTL); False if it is not cached."""
        validate_key(key)
        ttl_s = self._positive_ttl(ttl)
        if self._tier is None:
            value = self._l1.peek(key, MISSING)
            if value is MISSING:
                return False
            self._l1.set(
                key, value, ttl=min(ttl_s, self.settings.l1_max_ttl), tags=self._l1.tags_of(key)
            )
            return True
        await self._bus_started()
        try:
            blob = await self._tier.get(key)
            entry = self._decode(key, blob)
            if entry is None:
                return False
            now = self._clock()
            new = self._codec.encode(
                key,
                entry.value,
                created_at=entry.created_at,
                expires_at=now + ttl_s,
                tags=entry.tags,
            )
            assert blob is not None
            touched = await self._tier.replace_if_unchanged(
                key, blob, new, self.settings.physical_ttl(ttl_s)
            )
        except RedisUnavailableError:
            return False
        # L1 refills from L2 with the new expiry on the next read, here and everywhere
        self._l1.invalidate(key)
        if touched:
            await self._publish(Action.INVALIDATE_KEYS, (key,))
        return touched

    # -- decorator ------------------------------------------------------------------------

    def cached(
        self,
        ttl: Duration | None = None,
        tags: Iterable[str] = (),
        key: str | Callable[..., str] | None = None,
    ) -> Callable[[F], F]:
        """Decorate a function so its results are cached by its arguments.

        ``key`` is a template such as ``"user:{user_id}"`` (fields are parameter names),
        a callable taking the function's arguments and returning the key, or ``None``
        for a key built injectively from the function's name and arguments. The wrapper
        has ``.invalidate(*args, **kwargs)`` to delete the entry for those arguments.
        """
        tag_tuple = self._tags(tags)
        if ttl is not None:
            self._positive_ttl(ttl)

        def decorate(fn: F) -> F:
            make_key = KeyMaker(fn, key)

            async def load(cache_key: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                return await self.get_or_set(
                    cache_key, functools.partial(fn, *args, **kwargs), ttl, tag_tuple
                )

            # sync: the L1's memoized callable answers hits in one C call
            wrapper: Any = async_bind_fast_cached(self._l1, make_key, load)
            if wrapper is not None:
                functools.update_wrapper(wrapper, fn)
            else:

                @functools.wraps(fn)
                async def wrapper(*args: Any, **kwargs: Any) -> Any:
                    cache_key = make_key(args, kwargs)
                    value = self._l1.get(cache_key, MISSING)
                    if value is not MISSING:
                        return value
                    return await self.get_or_set(
                        cache_key, functools.partial(fn, *args, **kwargs), ttl, tag_tuple
                    )

            async def invalidate(*args: Any, **kwargs: Any) -> bool:
                return await self.delete(make_key(args, kwargs))

            wrapper.invalidate = invalidate
            wrapper.cache_key = lambda *a, **kw: make_key(a, kw)
            return cast(F, wrapper)

        return decorate

    # -- observability and lifecycle ------------------------------------------------------

    def stats(self) -> CacheStats:
        """A snapshot of the counters (see :class:`CacheStats`)."""
        c = self._counters
        bus = self._bus
        if bus is None:
            bus_fields: dict[str, Any] = {}
        else:
            state = bus.state
            bus_fields = {
                "bus_state": (
                    "starting" if not bus.started else "healthy" if state.healthy else "unhealthy"
                ),
                "bus_messages_sent": bus.outbox.sent,
                "bus_messages_received": state.received,
                "bus_messages_dropped": state.dropped,
                "bus_flushes_subscribe": state.flushes_subscribe,
                "bus_flushes_gap": state.flushes_gap,
                "bus_flushes_heartbeat": state.flushes_heartbeat,
                "bus_reconnects": bus.reconnects,
                "bus_unhealthy_seconds": state.unhealthy_seconds(),
                "bus_lag": state.lag.summary(),
            }
        return CacheStats(
            l1_hits=self._l1.hits,
            l1_misses=self._l1.misses,
            l2_hits=c.l2_hits,
            l2_misses=c.l2_misses,
            loads=c.loads,
            coalesced=c.coalesced,
            stale_served=c.stale_served,
            errors=c.errors,
            decode_errors=c.decode_errors,
            lease_waits=c.lease_waits,
            fills_refused=c.fills_refused,
            l1_size=len(self._l1),
            l1_evictions=self._l1.evictions,
            breaker_state=self._breaker.state.value,
            breaker_opened=self._breaker.opened,
            load_latency=c.load_latency.summary(),
            l2_latency=c.l2_latency.summary(),
            **bus_fields,
        )

    @property
    def l1(self) -> L1:
        """The in-process tier (for inspection; writes should go through the cache)."""
        return self._l1

    @property
    def redis(self) -> Any:
        """The Redis client of L2, or None."""
        return self._tier.client if self._tier is not None else None

    async def close(self) -> None:
        """Stop the bus's listener, and close the Redis client if the cache created it."""
        if self._bus is not None:
            await self._bus.aclose()
        if self._tier is not None:
            await self._tier.aclose()

    async def __aenter__(self) -> AsyncCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- internals ----------------------------------------------------------------------

    async def _read_l2(self, key: str) -> Entry | None:
        """The decoded L2 entry of ``key`` (fresh or not), or None."""
        if self._tier is None:
            return None
        try:
            blob = await self._tier.get(key)
        except RedisUnavailableError:
            return None
        return self._decode(key, blob)

    def _decode(self, key: str, blob: bytes | None, *, count: bool = True) -> Entry | None:
        """The entry in ``blob``, or None; undecodable bytes are a miss (and counted once
        per operation: re-reads of the same bytes pass ``count=False``)."""
        if blob is None:
            return None
        try:
            return self._codec.decode(key, blob)
        except Exception:  # CorruptEntryError, or a user decoder's bug: a miss either way
            if count:
                self._counters.decode_errors += 1
            return None

    def _expired(self, entry: Entry) -> bool:
        return entry.expires_at is not None and entry.expires_at <= self._clock()

    def _install(self, ticket: int, key: str, value: Any, entry: Entry) -> None:
        """Put an L2 entry into L1 for what remains of its L2 life (at most l1_max_ttl)."""
        remaining = (
            self.settings.l1_max_ttl
            if entry.expires_at is None
            else entry.expires_at - self._clock()
        )
        if remaining <= 0:
            self._l1.release(ticket, key)
            return
        self._install_value(ticket, key, value, remaining, entry.tags)

    def _install_value(
        self, ticket: int, key: str, value: Any, ttl: float, tags: tuple[str, ...]
    ) -> None:
        """Install through the L1 guard (and the fail-safe store if the guard allows)."""
        if not self._l1_open():
            self._l1.release(ticket, key)
            return
        if self._l1.install(ticket, key, value, ttl=min(ttl, self.settings.l1_max_ttl), tags=tags):
            if self._stale is not None:
                self._stale.set(key, value, ttl=ttl + self.settings.fail_safe_max_age, tags=tags)
        else:
            self._counters.fills_refused += 1

    def _ttl_for(self, value: Any, ttl: Duration | None) -> float:
        if value is None and self.settings.negative_ttl is not None:
            return self.settings.negative_ttl
        return self.settings.entry_ttl(ttl)

    def _positive_ttl(self, ttl: Duration | None) -> float:
        if ttl is not None:
            to_seconds(ttl, "ttl", allow_zero=False)
        return self.settings.entry_ttl(ttl)

    @staticmethod
    def _tags(tags: Iterable[str]) -> tuple[str, ...]:
        if isinstance(tags, str):
            raise TypeError("tags must be an iterable of str, not a single str")
        return tuple(validate_tag(tag) for tag in tags)


# Caches that must reset themselves in a forked child (gunicorn --preload, multiprocessing
# "fork"): one hook for the module, a weak set so that it keeps no cache alive.
_FORK_AWARE: weakref.WeakSet[AsyncCache] = weakref.WeakSet()


def _reset_after_fork() -> None:  # pragma: no cover - runs in forked children
    for cache in list(_FORK_AWARE):
        cache._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
