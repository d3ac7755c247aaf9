"""The Redis tier (L2): entries as msgpack blobs, leases, and the breaker around every call.

Every call is made under the circuit breaker: while it is open the call is not made at all
and :class:`RedisUnavailableError` is raised at once; a Redis error or timeout counts as a
failure and also surfaces as :class:`RedisUnavailableError`, which the cache turns into a
fall-back (L1, loader). Time budgets come from the client's ``socket_timeout`` (clients the
cache builds from a URL get ``redis_timeout``) and no call is retried in a loop.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from time import perf_counter
from typing import Any

from redis.exceptions import RedisError

from .._breaker import CircuitBreaker
from .._errors import RedisUnavailableError
from .._keys import KeySpace
from .._primitives import AsyncRedisCluster, async_close_client
from .._scripts import (
    DELETE,
    READ_OR_LEASE,
    RELEASE_LEASE,
    REPLACE_IF_UNCHANGED,
    WRITE,
    WRITE_IF_LEASE,
)
from .._stats import Counters

# OSError covers socket errors redis-py lets through; TimeoutError is an OSError on 3.11+
_REDIS_FAILURES = (RedisError, OSError)


def _px(seconds: float) -> int:
    """Seconds as a Redis ``PX`` argument (at least 1 ms)."""
    return max(1, int(seconds * 1000))


class AsyncRedisTier:
    """L2 operations on one namespace of one Redis (standalone or cluster)."""

    def __init__(
        self,
        client: Any,
        keys: KeySpace,
        breaker: CircuitBreaker,
        counters: Counters,
        *,
        owns_client: bool,
    ) -> None:
        self.client = client
        self._keys = keys
        self._breaker = breaker
        self._counters = counters
        self._owns_client = owns_client
        self._cluster = isinstance(client, AsyncRedisCluster)
        self.cluster = self._cluster
        self._write = client.register_script(WRITE)
        self._write_if_lease = client.register_script(WRITE_IF_LEASE)
        self._delete = client.register_script(DELETE)
        self._replace = client.register_script(REPLACE_IF_UNCHANGED)
        self._release = client.register_script(RELEASE_LEASE)
        self._read_or_lease = client.register_script(READ_OR_LEASE)

    def use_breaker(self, breaker: CircuitBreaker) -> None:
        """Replace the breaker (a forked child starts with a fresh one)."""
        self._breaker = breaker

    async def _call(self, fn: Any, *args: Any, _timed: bool = True, **kwargs: Any) -> Any:
        """Run one Redis call under the breaker; every failure is a RedisUnavailableError.

        ``_timed=False`` keeps the call out of ``l2_latency`` (bus traffic is not L2 work).
        """
        if not self._breaker.allow():
            raise RedisUnavailableError("Redis circuit breaker is open")
        start = perf_counter()
        try:
            result = await fn(*args, **kwargs)
        except _REDIS_FAILURES as exc:
            self._breaker.record_failure()
            self._counters.errors += 1
            raise RedisUnavailableError(f"Redis call failed: {exc!r}") from exc
        except BaseException:
            # cancelled (async) or interrupted: no verdict on Redis, but a probe must end
            self._breaker.abandon()
            raise
        self._breaker.record_success()
        if _timed:
            self._counters.l2_latency.record(perf_counter() - start)
        return result

    async def get(self, key: str) -> bytes | None:
        """The raw blob of ``key``, or None."""
        return await self._call(self.client.get, self._keys.data_key(key))  # type: ignore[no-any-return]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Raw blobs of ``keys`` in order: one MGET (per cluster node on a cluster)."""
        data_keys = [self._keys.data_key(k) for k in keys]
        if self._cluster:
            return await self._call(self.client.mget_nonatomic, data_keys)  # type: ignore[no-any-return]
        return await self._call(self.client.mget, data_keys)  # type: ignore[no-any-return]

    async def write(self, key: str, blob: bytes, ttl: float) -> None:
        """Store ``blob`` for ``ttl`` seconds and revoke any lease on ``key``."""
        keys = [self._keys.data_key(key), self._keys.lease_key(key)]
        await self._call(self._write, keys=keys, args=[blob, _px(ttl)])

    async def write_many(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        """Store several blobs in one pipeline, each revoking its key's lease first."""
        pipe = self.client.pipeline(transaction=False)
        px = _px(ttl)
        for key, blob in items:
            # revoke first: a lease holder's fill can then no longer land after our write
            pipe.delete(self._keys.lease_key(key))
            pipe.set(self._keys.data_key(key), blob, px=px)
        await self._call(pipe.execute)

    async def delete(self, key: str) -> bool:
        """Delete the entry and revoke its lease; True if an entry existed."""
        keys = [self._keys.data_key(key), self._keys.lease_key(key)]
        return bool(await self._call(self._delete, keys=keys))

    async def replace_if_unchanged(self, key: str, old: bytes, new: bytes, ttl: float) -> bool:
        """Compare-and-set of an entry's blob (used by touch)."""
        keys = [self._keys.data_key(key)]
        return bool(await self._call(self._replace, keys=keys, args=[old, new, _px(ttl)]))

    async def read_or_lease(self, key: str, ttl: float) -> tuple[bytes | None, bytes | None]:
        """One atomic step: the entry's blob (or None), and the lease token if we took the
        lease for ``ttl`` seconds (None if another holder has it)."""
        token = os.urandom(12)
        keys = [self._keys.data_key(key), self._keys.lease_key(key)]
        blob, taken = await self._call(self._read_or_lease, keys=keys, args=[token, _px(ttl)])
        return (blob or None), (token if taken else None)

    async def write_if_lease(self, key: str, token: bytes, blob: bytes, ttl: float) -> bool:
        """The lease holder's fill: stored only if the lease is still ``token``."""
        keys = [self._keys.data_key(key), self._keys.lease_key(key)]
        return bool(await self._call(self._write_if_lease, keys=keys, args=[token, blob, _px(ttl)]))

    async def release_lease(self, key: str, token: bytes) -> None:
        """Give back a lease that will not be used."""
        await self._call(self._release, keys=[self._keys.lease_key(key)], args=[token])

    async def publish(self, channel: str, payload: bytes, *, guarded: bool = True) -> None:
        """Publish one bus message (``SPUBLISH`` on a cluster: the channel's shard only).

        ``guarded=False`` (heartbeats) bypasses the breaker: a background heartbeat must
        neither take the probe call that the cache's own traffic is owed nor be refused
        by an open breaker, since hearing it again is how the bus learns Redis is back.
        """
        send = self.client.spublish if self._cluster else self.client.publish
        if guarded:
            await self._call(send, channel, payload, _timed=False)
            return
        try:
            await send(channel, payload)
        except _REDIS_FAILURES as exc:
            raise RedisUnavailableError(f"Redis call failed: {exc!r}") from exc

    async def aclose(self) -> None:
        """Close the client if the cache created it."""
        if self._owns_client:
            await async_close_client(self.client)
