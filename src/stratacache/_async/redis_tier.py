"""The Redis tier (L2): entries as msgpack blobs, leases, and the breaker around every call.

Every call is made under the circuit breaker: while it is open the call is not made at all
and :class:`RedisUnavailableError` is raised at once; a Redis error or timeout counts as a
failure and also surfaces as :class:`RedisUnavailableError`, which the cache turns into a
fall-back (L1, loader). Time budgets come from the client's ``socket_timeout`` (clients the
cache builds from a URL get ``redis_timeout``) and no call is retried in a loop.

An error reply that trying again cannot cure (``NOPERM``, ``WRONGTYPE``, a script error)
is raised as :class:`RedisCommandError` and does not count against the breaker: Redis
answered. The outbox's worker uses :meth:`AsyncRedisTier.around_breaker`, a view whose
calls are never refused by the breaker and close it when they succeed.

On a Redis Cluster the breaker is a :class:`NodeBreakers`: each call names the Redis
keys it touches (``_route``), and a call whose keys all live on one master runs under
that master's breaker alone, so a paused master fails its own keys fast while the others
keep serving theirs. A call spanning masters runs under the breakers of each of them
(any open one refuses it) and of the whole cluster; its failure counts against the
master redis-py names in the error, else against the whole cluster's breaker only.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from time import perf_counter
from typing import Any, Optional

from redis.exceptions import RedisClusterException, RedisError

from .._acl import PROBE_SCRIPT, nopermission
from .._breaker import BreakerState, CircuitBreaker, NodeBreakers
from .._errors import RedisCommandError, RedisUnavailableError
from .._keys import KeySpace
from .._lock_scripts import WRITE_FENCED
from .._logging import LogLimiter
from .._outbox import is_transient
from .._primitives import (
    AsyncRedisCluster,
    async_close_client,
    async_redis_call,
    async_shard_client,
)
from .._scripts import (
    BUMP_TAG,
    BUMP_VERSION,
    COMPARE_AND_SET,
    DELETE,
    DEPENDENT_ADD,
    DEPENDENT_REMOVE,
    INVALIDATE_KEY,
    READ_ELSE_LEASE,
    READ_ELSE_LEASE_VERSIONS,
    READ_OR_LEASE,
    RECLAIM,
    RECLAIM_SCAN,
    RELEASE_LEASE,
    REPLACE_IF_UNCHANGED,
    TAG_ADD,
    WRITE,
    WRITE_IF_LEASE,
    WRITE_IF_LEASE_TAGGED,
    WRITE_TAGGED,
)
from .._stats import Counters
from .direct import FALLBACK, AsyncDirect, Script

# OSError covers socket errors redis-py lets through; TimeoutError is an OSError on 3.11+
# RedisClusterException is no RedisError: a cluster client raises it when no startup node
# can be reached (down, or a refused TLS certificate) while it learns the slots
_REDIS_FAILURES = (RedisError, RedisClusterException, OSError)


logger = logging.getLogger("stratacache.redis")

_MEMBERS_PER_CALL = 1000  # keys per TAG_ADD call (Lua's unpack has a stack limit)
AuditFields = Mapping[str, Any]


def _describe(exc: BaseException) -> str:
    """``Type: message`` (redis-py 8's repr of its errors hides the message)."""
    return f"{type(exc).__name__}: {exc}"


def tls_failure(exc: BaseException) -> str | None:
    """The TLS handshake failure behind a redis-py error (an untrusted or mismatched
    certificate, a server that does not speak TLS), or None if it is something else."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLError):
            return str(cause)
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    text = str(exc)
    # a cluster client reports a failed first connection as text only
    return text if "[SSL" in text else None


def _failed_node(exc: BaseException) -> str | None:
    """The ``host:port`` of the cluster node a redis-py error came from, if it says."""
    where = getattr(exc, "connection", None)  # a Connection or a ClusterNode
    host, port = getattr(where, "host", None), getattr(where, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    name = getattr(exc, "last_failed_node_name", None)
    return name if isinstance(name, str) else None


def _px(seconds: float) -> int:
    """Seconds as a Redis ``PX`` argument (at least 1 ms)."""
    return max(1, int(seconds * 1000))


def _versions(names: Sequence[Optional[str]], raw: Sequence[Any]) -> dict[Optional[str], int]:
    """Versions read from Redis by name; 0 for one never raised (no key)."""
    return {name: int(value) if value else 0 for name, value in zip(names, raw)}


class AsyncRedisTier:
    """L2 operations on one namespace of one Redis (standalone or cluster)."""

    def __init__(
        self,
        client: Any,
        keys: KeySpace,
        breaker: CircuitBreaker | NodeBreakers,
        counters: Counters,
        *,
        owns_client: bool,
    ) -> None:
        self.client = client
        self._keys = keys
        self._breaker = breaker
        self._counters = counters
        self._owns_client = owns_client
        self._main = self  # views (around_breaker) read the breaker of the tier they copy
        self.tls_error: str | None = None  # the last call's TLS handshake failure, if any
        # a refused certificate does not heal by itself: say so now and then, not per call
        self._tls_log = LogLimiter(logger, 60.0)
        self._enforce = True  # False in around_breaker views
        self._told_noperm = False  # the first NOPERM is logged, once per tier
        self._cluster = isinstance(client, AsyncRedisCluster)
        self.cluster = self._cluster
        # read_else_lease_versions: its version keys are in other slots than the entry's
        self.versions_with_lease = not self._cluster
        self._write = client.register_script(WRITE)
        self._write_if_lease = client.register_script(WRITE_IF_LEASE)
        self._write_tagged = client.register_script(WRITE_TAGGED)
        self._write_if_lease_tagged = client.register_script(WRITE_IF_LEASE_TAGGED)
        self._delete = client.register_script(DELETE)
        self._replace = client.register_script(REPLACE_IF_UNCHANGED)
        self._compare_and_set = client.register_script(COMPARE_AND_SET)
        self._release = client.register_script(RELEASE_LEASE)
        self._read_or_lease = client.register_script(READ_OR_LEASE)
        self._read_else_lease = client.register_script(READ_ELSE_LEASE)
        self._read_else_lease_versions = client.register_script(READ_ELSE_LEASE_VERSIONS)
        self._reclaim_scan = client.register_script(RECLAIM_SCAN)
        self._reclaim = client.register_script(RECLAIM)
        # the hot calls (GET, MGET, the entry scripts): see direct.py
        self._direct = AsyncDirect(client, self._cluster)
        self._fast = self._direct.enabled
        self._s_write = Script(WRITE)
        self._s_write_if_lease = Script(WRITE_IF_LEASE)
        self._s_read_or_lease = Script(READ_OR_LEASE)
        self._s_read_else_lease = Script(READ_ELSE_LEASE)
        self._s_read_else_lease_versions = Script(READ_ELSE_LEASE_VERSIONS)
        self._s_write_tagged = Script(WRITE_TAGGED)
        self._s_write_if_lease_tagged = Script(WRITE_IF_LEASE_TAGGED)
        self.audit_maxlen = 0  # set by the cache: 0 = no audit stream

    def use_breaker(self, breaker: CircuitBreaker | NodeBreakers) -> None:
        """Replace the breaker (a forked child starts with a fresh one)."""
        self._breaker = breaker

    def around_breaker(self) -> AsyncRedisTier:
        """This tier (same client and scripts) for background work: its calls are never
        refused by the breaker and their failures do not count, but a success closes it."""
        view = copy.copy(self)
        view._enforce = False
        return view

    async def ping(self) -> bool:
        """Whether Redis answers now: on a cluster, every master, each PINGed under its
        own breaker (redis-py sends a plain PING to one node only).

        A PING of a cluster master that fails (not one refused by the breaker) opens
        that master's breaker at once
        (:meth:`CircuitBreaker.trip`): the bus's prober PINGs every 50 ms, so callers
        fail fast within one interval of an outage instead of each waiting for
        ``breaker_threshold`` timeouts, and no caller's call is spent as a half-open
        probe while the PINGs keep failing; the PING that succeeds closes it."""
        masters = self.client.get_primaries() if self._cluster else []
        if not masters:  # standalone, or an asyncio cluster client not connected yet
            return await self._ping_one(self.client.ping)
        answered = True
        for node in masters:
            if not await self._ping_one(self.client.ping, target_nodes=node, _node=node.name):
                answered = False
        breaker = self._main._breaker
        if answered and isinstance(breaker, NodeBreakers):
            breaker.whole.record_success()  # every master answers: so does the cluster
        return answered

    async def _ping_one(self, ping: Any, _node: str | None = None, **kwargs: Any) -> bool:
        try:
            await self._call(ping, _timed=False, _node=_node, **kwargs)
        except RedisUnavailableError as exc:
            # it failed (not refused); a cluster master only: on a standalone server the
            # callers' own failures open the breaker as before (an open breaker there
            # changes what the outbox holds at recovery; see test_bus)
            if exc.transient and exc.__cause__ is not None and _node is not None:
                for breaker in self._breakers_for((), _node):
                    breaker.trip(f"a PING failed ({_describe(exc.__cause__)})")
            return False
        return True

    def _breakers_for(self, route: Sequence[Any], node: str | None) -> tuple[CircuitBreaker, ...]:
        """The breakers a call touching the Redis keys ``route`` (or the node ``node``)
        runs under: see the module notes."""
        breaker = self._main._breaker
        if not isinstance(breaker, NodeBreakers):
            return (breaker,)
        if node is not None:
            return (breaker.node(node),)
        names: set[str] = set()
        for key in route:
            try:
                owner = self.client.get_node_from_key(key)
            except Exception:  # slots not known yet (or not covered): no node to blame
                return (breaker.whole,)
            if owner is None:
                return (breaker.whole,)
            names.add(owner.name)
        if len(names) == 1:
            return (breaker.node(names.pop()),)
        return (breaker.whole, *(breaker.node(name) for name in sorted(names)))

    async def _call(
        self,
        fn: Any,
        *args: Any,
        _timed: bool = True,
        _route: Sequence[Any] = (),
        _node: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run one Redis call under the breaker; every failure is a RedisUnavailableError.

        ``_route``: the Redis keys the call touches, ``_node``: the cluster node it is
        sent to (both pick the breakers on a cluster; see the module notes).
        ``_timed=False`` keeps the call out of ``l2_latency`` (bus traffic is not L2 work).
        """
        breakers = self._breakers_for(_route, _node)
        if self._enforce:
            for index, breaker in enumerate(breakers):
                if not breaker.allow():
                    for allowed in breakers[:index]:
                        allowed.abandon()
                    raise RedisUnavailableError("Redis circuit breaker is open")
        start = perf_counter()
        try:
            result = await async_redis_call(fn, *args, **kwargs)
        except _REDIS_FAILURES as exc:
            self._counters.errors += 1
            if not is_transient(exc):
                for breaker in breakers:  # it answered: the breaker is about reach
                    breaker.record_success()
                if not self._main._told_noperm and nopermission(exc):
                    # reads turn it into a miss, writes into a dead letter: say it once
                    self._main._told_noperm = True
                    logger.error(
                        "the Redis user lacks a permission this cache needs (%s); call "
                        "check_permissions() at startup, `stratacache acl` prints the rules",
                        _describe(exc),
                    )
                raise RedisCommandError(f"Redis refused the command: {_describe(exc)}") from exc
            if self._enforce:
                self._record_failure(exc, breakers)
            self._note_tls_failure(exc)
            raise RedisUnavailableError(f"Redis call failed: {_describe(exc)}") from exc
        except BaseException:
            # cancelled (async) or interrupted: no verdict on Redis, but a probe must end
            if self._enforce:
                for breaker in breakers:
                    breaker.abandon()
            raise
        for breaker in breakers:
            breaker.record_success()
        if self._main.tls_error is not None:
            self._main.tls_error = None
        if _timed:
            self._counters.l2_latency.record(perf_counter() - start)
        return result

    def _note_tls_failure(self, exc: BaseException) -> None:
        """Keep (for ``health()``) and log a TLS handshake failure: unlike a network fault
        it is a configuration error (a wrong CA, an expired or mismatched certificate)
        that no retry fixes."""
        reason = tls_failure(exc)
        if reason is None:
            return
        self._main.tls_error = reason
        self._main._tls_log.warning(
            "the TLS handshake with Redis failed: %s. Check the CA the client trusts "
            "(ssl_ca_certs) against the server's certificate and its host name; every "
            "call to this Redis fails until that is fixed (reads go to the loader)",
            reason,
        )

    def _record_failure(self, exc: BaseException, breakers: tuple[CircuitBreaker, ...]) -> None:
        """Count a failed call against the master that failed (a call spanning masters:
        the one named in the error, else the whole cluster's breaker, ``breakers[0]``)."""
        if len(breakers) == 1:
            breakers[0].record_failure()
            return
        failed = breakers[0]
        name = _failed_node(exc)
        main = self._main._breaker
        if name is not None and isinstance(main, NodeBreakers):
            failed = main.node(name)
        failed.record_failure()
        for breaker in breakers:
            if breaker is not failed:
                breaker.abandon()

    async def get(self, key: str) -> bytes | None:
        """The raw blob of ``key``, or None."""
        data_key = self._keys.data_key(key)
        route = (data_key,)
        if self._fast:
            blob = await self._call(self._direct.execute, data_key, "GET", data_key, _route=route)
            if blob is not FALLBACK:
                return blob  # type: ignore[no-any-return]
        return await self._call(self.client.get, data_key, _route=route)  # type: ignore[no-any-return]

    async def _script(
        self, script: Script, registered: Any, keys: list[str], args: list[Any]
    ) -> Any:
        """Run an entry script (``EVALSHA``) on the direct path, else through the client
        (``registered``: the client's ``Script`` object)."""
        if self._fast:
            result = await self._call(self._direct.evalsha, script, keys, args, _route=keys)
            if result is not FALLBACK:
                return result
        return await self._call(registered, keys=keys, args=args, _route=keys)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Raw blobs of ``keys`` in order: one MGET (per cluster node on a cluster)."""
        data_keys = self._keys.data_keys(keys)
        if self._cluster:
            return await self._call(self.client.mget_nonatomic, data_keys, _route=data_keys)  # type: ignore[no-any-return]
        if self._fast and data_keys:
            blobs = await self._call(self._direct.execute, "", "MGET", *data_keys)
            if blobs is not FALLBACK:
                return blobs  # type: ignore[no-any-return]
        return await self._call(self.client.mget, data_keys)  # type: ignore[no-any-return]

    async def write(self, key: str, blob: bytes, ttl: float, tags: Sequence[str] = ()) -> None:
        """Store ``blob`` for ``ttl`` seconds, revoke any lease on ``key``, and register the
        key under each of ``tags`` (for the tags' background reclaim)."""
        keys = [self._keys.data_key(key), self._keys.lease_key(key)]
        if not tags:
            await self._script(self._s_write, self._write, keys, [blob, _px(ttl)])
            return
        if not self._cluster:  # one script (a cluster keeps each tag's set in its slot)
            tagged = [*keys, *self._members_keys(tags)]
            args = [blob, _px(ttl), self._keys.tag_member(key)]
            await self._script(self._s_write_tagged, self._write_tagged, tagged, args)
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.execute_command("EVAL", WRITE, 2, *keys, blob, _px(ttl))
        self._add_members(pipe, tags, [key], ttl)
        await self._call(pipe.execute, _route=[*keys, *self._members_keys(tags)])

    async def write_fenced(
        self, key: str, blob: bytes, ttl: float, token: int, tags: Sequence[str] = ()
    ) -> bool:
        """Store ``blob`` only if no write to ``key`` carried a fencing token above
        ``token``; False if refused (a newer lock holder wrote already)."""
        ks = self._keys
        pipe = self.client.pipeline(transaction=False)
        keys = [ks.data_key(key), ks.lease_key(key), ks.fence_key(key)]
        pipe.execute_command("EVAL", WRITE_FENCED, 3, *keys, token, blob, _px(ttl))
        self._add_members(pipe, tags, [key], ttl)
        results = await self._call(pipe.execute, _route=[*keys, *self._members_keys(tags)])
        return bool(results[0])

    async def write_many(
        self, items: Sequence[tuple[str, bytes]], ttl: float, tags: Sequence[str] = ()
    ) -> None:
        """Store several blobs in one pipeline, each revoking its key's lease first."""
        pipe = self.client.pipeline(transaction=False)
        px = _px(ttl)
        for key, blob in items:
            # revoke first: a lease holder's fill can then no longer land after our write
            pipe.delete(self._keys.lease_key(key))
            pipe.set(self._keys.data_key(key), blob, px=px)
        self._add_members(pipe, tags, [key for key, _ in items], ttl)
        route = [self._keys.data_key(key) for key, _ in items]
        await self._call(pipe.execute, _route=[*route, *self._members_keys(tags)])

    def _members_keys(self, tags: Sequence[str]) -> list[str]:
        return [self._keys.tag_members_key(tag) for tag in tags]

    def _add_members(self, pipe: Any, tags: Sequence[str], keys: list[str], ttl: float) -> None:
        """Register ``keys`` under each of ``tags`` until their entries expire (``ttl``)."""
        if not tags:
            return
        # Scored by the expiry of the entry this write makes: a member is trimmed (or its
        # whole set expires) once that entry is gone. If this step is lost (a pipeline cut
        # short, Redis restarted between the write and it), the entry is only missing from
        # the index: invalidating the tag still makes it a miss (its stamp is then out of
        # date), and the reclaim leaves its bytes to its own expiry.
        px = _px(ttl)
        names = [self._keys.tag_member(key) for key in keys]
        for tag in tags:
            members = self._keys.tag_members_key(tag)
            for start in range(0, len(names), _MEMBERS_PER_CALL):
                chunk = names[start : start + _MEMBERS_PER_CALL]
                pipe.execute_command("EVAL", TAG_ADD, 1, members, px, *chunk)

    async def delete(self, key: str) -> bool:
        """Delete the entry and revoke its lease; True if an entry existed."""
        keys = [self._keys.data_key(key), self._keys.lease_key(key)]
        return bool(await self._call(self._delete, keys=keys, _route=keys))

    async def replace_if_unchanged(self, key: str, old: bytes, new: bytes, ttl: float) -> bool:
        """Compare-and-set of an entry's blob (used by touch)."""
        keys = [self._keys.data_key(key)]
        return bool(
            await self._call(self._replace, keys=keys, args=[old, new, _px(ttl)], _route=keys)
        )

    async def compare_and_set(
        self, key: str, old: bytes | None, new: bytes, ttl: float, tags: Sequence[str] = ()
    ) -> bool:
        """Store ``new`` only if the entry's blob is still ``old`` (``None``: no entry),
        revoking any lease on ``key``; False if another write came first (add, incr)."""
        keys = [self._keys.data_key(key), self._keys.lease_key(key)]
        args = [old or b"", new, _px(ttl)]
        if not tags:
            return bool(await self._call(self._compare_and_set, keys=keys, args=args, _route=keys))
        pipe = self.client.pipeline(transaction=False)
        pipe.execute_command("EVAL", COMPARE_AND_SET, 2, *keys, *args)
        self._add_members(pipe, tags, [key], ttl)
        results = await self._call(pipe.execute, _route=[*keys, *self._members_keys(tags)])
        return bool(results[0])

    async def read_or_lease(self, key: str, token: bytes, ttl: float) -> tuple[bytes | None, bool]:
        """One atomic step: the entry's blob (or None), and whether we took the lease for
        ``ttl`` seconds under ``token`` (False if another holder has it). The caller
        makes the token, so that it can release a lease whose command timed out."""
        keys = [self._keys.data_key(key), self._keys.lease_key(key)]
        blob, taken = await self._script(
            self._s_read_or_lease, self._read_or_lease, keys, [token, _px(ttl)]
        )
        return (blob or None), bool(taken)

    async def read_else_lease(
        self, key: str, token: bytes, ttl: float
    ) -> tuple[bytes | None, bool]:
        """One atomic step: the entry's blob if there is one (no lease taken); else
        whether we took the lease for ``ttl`` seconds under ``token`` (False if another
        holder has it). A miss's read and lease in one round trip."""
        keys = [self._keys.data_key(key), self._keys.lease_key(key)]
        reply = await self._script(
            self._s_read_else_lease, self._read_else_lease, keys, [token, _px(ttl)]
        )
        if type(reply) is int:
            return None, bool(reply)
        return (reply or None), False

    async def read_else_lease_versions(
        self, key: str, token: bytes, ttl: float, names: Sequence[Optional[str]]
    ) -> tuple[bytes | None, bool, dict[Optional[str], int]]:
        """:meth:`read_else_lease` and, in the same atomic step, the versions of ``names``
        (as :meth:`fetch_versions`). Standalone servers only (see ``versions_with_lease``)."""
        keys = [self._keys.data_key(key), self._keys.lease_key(key), *self._version_keys(names)]
        blob, taken, raw = await self._script(
            self._s_read_else_lease_versions,
            self._read_else_lease_versions,
            keys,
            [token, _px(ttl)],
        )
        return (blob or None), bool(taken), _versions(names, raw)

    async def write_if_lease(
        self, key: str, token: bytes, blob: bytes, ttl: float, tags: Sequence[str] = ()
    ) -> bool:
        """The lease holder's fill: stored only if the lease is still ``token``."""
        keys = [self._keys.data_key(key), self._keys.lease_key(key)]
        if not tags:
            return bool(
                await self._script(
                    self._s_write_if_lease, self._write_if_lease, keys, [token, blob, _px(ttl)]
                )
            )
        if not self._cluster:  # one script (a cluster keeps each tag's set in its slot)
            tagged = [*keys, *self._members_keys(tags)]
            args = [token, blob, _px(ttl), self._keys.tag_member(key)]
            return bool(
                await self._script(
                    self._s_write_if_lease_tagged, self._write_if_lease_tagged, tagged, args
                )
            )
        # a refused fill registers the key under its tags too: harmless (a reclaim of a
        # key that is not there deletes nothing)
        pipe = self.client.pipeline(transaction=False)
        pipe.execute_command("EVAL", WRITE_IF_LEASE, 2, *keys, token, blob, _px(ttl))
        self._add_members(pipe, tags, [key], ttl)
        results = await self._call(pipe.execute, _route=[*keys, *self._members_keys(tags)])
        return bool(results[0])

    async def release_lease(self, key: str, token: bytes) -> None:
        """Give back a lease that will not be used."""
        keys = [self._keys.lease_key(key)]
        await self._call(self._release, keys=keys, args=[token], _route=keys)

    # -- invalidation (see _invalidation.py and invalidator.py) ---------------------------

    async def fetch_versions(self, names: Sequence[Optional[str]]) -> dict[Optional[str], int]:
        """Current versions of tags (``None``: the namespace epoch); 0 if never raised."""
        redis_keys = self._version_keys(names)
        if self._cluster:
            raw = await self._call(self.client.mget_nonatomic, redis_keys, _route=redis_keys)
        else:
            raw = FALLBACK
            if self._fast:  # a miss stamps its entry with these: on the hot path
                raw = await self._call(self._direct.execute, "", "MGET", *redis_keys)
            if raw is FALLBACK:
                raw = await self._call(self.client.mget, redis_keys)
        return _versions(names, raw)

    def _version_keys(self, names: Sequence[Optional[str]]) -> list[str]:
        return [
            self._keys.meta_key("epoch") if name is None else self._keys.tag_key(name)
            for name in names
        ]

    async def invalidate_keys(
        self, keys: Sequence[str], audit: Iterable[AuditFields] = ()
    ) -> list[tuple[bool, list[str]]]:
        """Delete entries and revoke their leases, in one pipeline; for each key, whether
        a value existed and the keys that depend on it."""
        pipe = self.client.pipeline(transaction=False)
        ks = self._keys
        for key in keys:
            pipe.execute_command(
                "EVAL",
                INVALIDATE_KEY,
                3,
                ks.data_key(key),
                ks.lease_key(key),
                ks.dependents_key(key),
            )
        self._add_audit(pipe, audit)
        route = [ks.data_key(key) for key in keys]
        results = await self._call(pipe.execute, _route=[*route, *self._audit_route(audit)])
        return [
            (bool(existed), [m.decode("utf-8", "surrogatepass") for m in members])
            for existed, members in results[: len(keys)]
        ]

    async def bump_tags(
        self, tags: Sequence[str], audit: Iterable[AuditFields] = ()
    ) -> list[tuple[int, int, str]]:
        """Invalidate tags in O(1) each (one pipeline): for each, its new version, the
        number of keys registered under it, and where those keys wait to be reclaimed."""
        pipe = self.client.pipeline(transaction=False)
        ks = self._keys
        reclaim_keys = []
        for tag in tags:
            reclaim = ks.tag_reclaim_key(tag, os.urandom(6).hex())
            reclaim_keys.append(reclaim)
            pipe.execute_command(
                "EVAL", BUMP_TAG, 3, ks.tag_key(tag), ks.tag_members_key(tag), reclaim
            )
        self._add_audit(pipe, audit)
        route = [ks.tag_key(tag) for tag in tags]
        results = await self._call(pipe.execute, _route=[*route, *self._audit_route(audit)])
        return [
            (int(version), int(count), reclaim)
            for (version, count), reclaim in zip(results[: len(tags)], reclaim_keys)
        ]

    async def bump_epoch(self, audit: Iterable[AuditFields] = ()) -> int:
        """Raise the namespace epoch: every entry written before it becomes a miss."""
        pipe = self.client.pipeline(transaction=False)
        epoch = self._keys.meta_key("epoch")
        pipe.execute_command("EVAL", BUMP_VERSION, 1, epoch)
        self._add_audit(pipe, audit)
        results = await self._call(pipe.execute, _route=[epoch, *self._audit_route(audit)])
        return int(results[0])

    async def scan_step(
        self, pattern: str, cursors: dict[str, int] | None
    ) -> tuple[dict[str, int], list[bytes]]:
        """One bounded SCAN step over every master: ``cursors`` (``None`` to start) maps
        node names to their cursors; returns the remaining cursors and the keys seen."""
        count = 1000
        if not self._cluster:
            cursor = 0 if cursors is None else cursors[""]
            cursor, found = await self._call(self.client.scan, cursor, match=pattern, count=count)
            return ({"": int(cursor)} if int(cursor) else {}), list(found)
        if cursors is None:
            by_node, found = await self._call(self.client.scan, match=pattern, count=count)
            return {name: c for name, c in by_node.items() if c}, list(found)
        keys: list[bytes] = []
        left: dict[str, int] = {}
        for name, cursor in cursors.items():
            node = self.client.get_node(node_name=name)
            by_node, found = await self._call(
                self.client.scan,
                cursor=cursor,
                match=pattern,
                count=count,
                target_nodes=node,
                _node=name,
            )
            keys.extend(found)
            if by_node[name]:
                left[name] = by_node[name]
        return left, keys

    async def unlink(self, redis_keys: Sequence[Any]) -> int:
        """UNLINK raw Redis keys (split by slot on a cluster); how many existed."""
        if not redis_keys:
            return 0
        return int(await self._call(self.client.unlink, *redis_keys, _route=redis_keys))

    async def reclaim_step(
        self, tag: str, reclaim_key: str, cursor: int, count: int
    ) -> tuple[int, int]:
        """One step of deleting an invalidated tag's keys: about ``count`` of them from
        ``cursor`` on (ZRANGE by rank + UNLINK; keys written with the tag again since are kept).
        Returns (next cursor, keys scanned); a next cursor of 0 ends the walk, and the
        moved-aside member set is deleted with it."""
        ks = self._keys
        keys = [reclaim_key, ks.tag_members_key(tag)]
        args = [cursor, count, ks.data_key_prefix()]
        if not self._cluster:
            following, scanned = await self._call(self._reclaim, keys=keys, args=args, _route=keys)
            return int(following), int(scanned)
        following, scanned, doomed = await self._call(
            self._reclaim_scan, keys=keys, args=args, _route=keys
        )
        # if this fails the step is retried from the same cursor; after the last step the
        # set is gone already, and these keys are left to their ttl (misses already)
        await self.unlink([ks.member_data_key(member) for member in doomed])
        return int(following), int(scanned)

    async def tag_members(self, tag: str) -> list[str]:
        """The keys registered under ``tag`` since its last invalidation whose entries had
        not expired by this machine's clock (keys stored hashed, see ``KeySpace``, cannot
        be listed)."""
        live = f"({int(time.time() * 1000)}"
        members_key = self._keys.tag_members_key(tag)
        members = await self._call(
            self.client.zrangebyscore, members_key, live, "+inf", _route=(members_key,)
        )
        keys = (self._keys.user_key(self._keys.member_data_key(m)) for m in members)
        return sorted(key for key in keys if key is not None)

    async def add_dependents(self, depends_on: Sequence[str], key: str, ttl: float) -> None:
        """Record that ``key`` depends on each of ``depends_on``, for as long as the entry
        of ``key`` now in Redis lives, and at least ``ttl`` seconds (the life of an entry
        written from now on). An edge declared again keeps the later expiry."""
        # the entry is in another slot than the dependents sets: its remaining life is read
        # first (a cluster refuses keys of two slots in one script)
        data_key = self._keys.data_key(key)
        remaining = await self._call(self.client.pttl, data_key, _route=(data_key,))
        px = max(_px(ttl), int(remaining))
        pipe = self.client.pipeline(transaction=False)
        route = [self._keys.dependents_key(parent) for parent in depends_on]
        for dependents in route:
            pipe.execute_command("EVAL", DEPENDENT_ADD, 1, dependents, px, key)
        await self._call(pipe.execute, _route=route)

    async def remove_dependents(self, depends_on: Sequence[str], key: str) -> None:
        """Forget that ``key`` depends on each of ``depends_on``."""
        pipe = self.client.pipeline(transaction=False)
        route = [self._keys.dependents_key(parent) for parent in depends_on]
        for edges in route:
            pipe.execute_command("EVAL", DEPENDENT_REMOVE, 1, edges, key)
        await self._call(pipe.execute, _route=route)

    def _audit_route(self, records: Iterable[AuditFields]) -> list[str]:
        return [self._keys.meta_key("audit")] if self.audit_maxlen else []

    def _add_audit(self, pipe: Any, records: Iterable[AuditFields]) -> None:
        if self.audit_maxlen:
            stream = self._keys.meta_key("audit")
            for fields in records:
                pipe.xadd(stream, dict(fields), maxlen=self.audit_maxlen, approximate=True)

    async def audit(self, records: Iterable[AuditFields]) -> None:
        """Append records to the audit stream (length-bounded, ``MAXLEN ~``)."""
        pipe = self.client.pipeline(transaction=False)
        self._add_audit(pipe, records)
        if len(pipe):
            await self._call(pipe.execute, _route=self._audit_route(()))

    async def audit_log(self, count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The newest ``count`` audit records, newest first."""
        stream = self._keys.meta_key("audit")
        return await self._call(  # type: ignore[no-any-return]
            self.client.xrevrange, stream, count=count, _route=(stream,)
        )

    async def put_instance(
        self, key: str, index: str, member: str, blob: bytes, ttl_ms: int, expires_ms: int
    ) -> None:
        """Write a heartbeat record (``_instances.py``) and list it in the index, pruning
        members whose record expired more than a TTL ago (one slot: one pipeline)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(key, blob, px=ttl_ms)
        pipe.zadd(index, {member: expires_ms})
        pipe.zremrangebyscore(index, "-inf", expires_ms - 2 * ttl_ms)
        # the index outlives every record that it lists (whatever their TTLs)
        pipe.pexpire(index, max(3 * ttl_ms, 60_000))
        await self._call(pipe.execute, _timed=False, _route=(key, index))

    async def remove_instance(self, key: str, index: str, member: str) -> None:
        """Delete a heartbeat record and its index entry."""
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(key)
        pipe.zrem(index, member)
        await self._call(pipe.execute, _timed=False, _route=(key, index))

    async def publish(self, channel: str, payload: bytes, *, guarded: bool = True) -> None:
        """Publish one bus message (``SPUBLISH`` on a cluster: the channel's shard only).

        A publish never counts for or against the breaker: the bus's own health check
        (hearing its heartbeats) is its judge. ``guarded=True`` only skips the publish
        while the breaker is open (Redis is known to be down, do not wait for a timeout);
        ``guarded=False`` (heartbeats) is sent regardless, since hearing it again is how
        the bus learns Redis is back.
        """
        send = self.client.spublish if self._cluster else self.client.publish
        if guarded and any(
            b.state is BreakerState.OPEN for b in self._breakers_for((channel,), None)
        ):
            raise RedisUnavailableError("Redis circuit breaker is open")
        try:
            await async_redis_call(send, channel, payload)
        except _REDIS_FAILURES as exc:
            raise RedisUnavailableError(f"Redis call failed: {_describe(exc)}") from exc

    async def missing_permissions(self) -> list[str]:
        """Every operation of the cache that this client's Redis user may not run: each
        command (and each one the scripts call) tried once on probe keys in the
        namespace's meta slot, and the bus channel subscribed to. One line per refusal,
        empty if none. Not under the breaker; a failure other than ``NOPERM`` that is
        transient raises :class:`RedisUnavailableError` (the answer would be a guess)."""
        ks = self._keys
        probe, other = ks.meta_key("acl-probe"), ks.meta_key("acl-probe-2")
        zset, stream = ks.meta_key("acl-probe-z"), ks.meta_key("acl-probe-x")
        client = self.client
        missing: list[str] = []

        async def attempt(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return await async_redis_call(fn, *args, **kwargs)
            except RedisError as exc:
                if nopermission(exc):
                    missing.append(f"{what}: {exc}")
                elif is_transient(exc):
                    raise RedisUnavailableError(f"Redis call failed: {_describe(exc)}") from exc
                return None  # refused for another reason: the command itself is allowed

        await attempt("PING", client.ping)
        await attempt("SET", client.set, probe, b"1", px=10_000)
        await attempt("GET", client.get, probe)
        await attempt("MGET", client.mget, [probe])
        await attempt("EXISTS", client.exists, probe)
        await attempt("PTTL", client.pttl, probe)
        await attempt("PEXPIRE", client.pexpire, probe, 10_000)
        await attempt("UNLINK", client.unlink, probe)
        await attempt("DEL", client.delete, probe)
        await attempt("ZADD", client.zadd, zset, {"probe": 1})
        await attempt("ZRANGE", client.zrange, zset, 0, -1)
        await attempt("ZRANGEBYSCORE", client.zrangebyscore, zset, "-inf", "+inf")
        await attempt("ZREMRANGEBYSCORE", client.zremrangebyscore, zset, "-inf", "-inf")
        await attempt("ZREM", client.zrem, zset, "probe")
        await attempt("DEL", client.delete, zset)
        if self._cluster:
            await attempt("SCAN", client.scan, match=probe, count=10)
        else:
            await attempt("SCAN", client.scan, 0, match=probe, count=10)
        inner = await attempt("EVAL", client.eval, PROBE_SCRIPT, 3, probe, other, zset)
        missing.extend(line.decode() if isinstance(line, bytes) else line for line in inner or ())
        sha = hashlib.sha1(PROBE_SCRIPT.encode()).hexdigest()
        await attempt("SCRIPT LOAD", client.script_load, PROBE_SCRIPT)
        await attempt("SCRIPT EXISTS", client.script_exists, sha)
        await attempt("EVALSHA", client.evalsha, sha, 3, probe, other, zset)
        await attempt("XADD", client.xadd, stream, {"probe": "1"}, maxlen=1, approximate=True)
        await attempt("XREVRANGE", client.xrevrange, stream, count=1)
        await attempt("XREAD", client.xread, {stream: "0-0"}, count=1)
        await attempt("DEL", client.delete, stream)
        await self._probe_channel(attempt, missing)
        return list(dict.fromkeys(missing))

    async def _probe_channel(self, attempt: Any, missing: list[str]) -> None:
        """PUBLISH (to a channel of its own: a refusal for the channel, not the command,
        means the command is allowed) and SUBSCRIBE to the bus channel, then leave."""
        channel = self._keys.channel()
        name = "SPUBLISH" if self._cluster else "PUBLISH"
        send = self.client.spublish if self._cluster else self.client.publish
        try:
            await async_redis_call(send, channel + ":acl-probe", b"")
        except RedisError as exc:
            if nopermission(exc) and "channel" not in str(exc):
                missing.append(f"{name}: {exc}")
            elif not nopermission(exc) and is_transient(exc):
                raise RedisUnavailableError(f"Redis call failed: {_describe(exc)}") from exc
        shard = None
        if self._cluster:
            shard = await async_shard_client(self.client, channel)
        pubsub = (shard or self.client).pubsub()
        name = "SSUBSCRIBE" if self._cluster else "SUBSCRIBE"
        try:
            subscribe = pubsub.ssubscribe if self._cluster else pubsub.subscribe
            if (
                await attempt(name, subscribe, channel) is None
                and missing
                and (missing[-1].startswith(name))
            ):
                return
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                message = await attempt(name, pubsub.get_message, timeout=0.5)
                if missing and missing[-1].startswith(name):
                    return
                if message is not None and message["type"] in ("subscribe", "ssubscribe"):
                    return
            raise RedisUnavailableError(f"no answer to {name} {channel}")
        finally:
            try:
                await pubsub.aclose()
            finally:
                if shard is not None:
                    await shard.aclose()

    async def aclose(self) -> None:
        """Give back the connections borrowed for the direct path; close the client if
        the cache created it."""
        await self._direct.give_back()
        if self._owns_client:
            await async_close_client(self.client)
