"""A distributed lock in Redis with a fencing token per acquisition (the extension worker
is a task here and a thread in the generated sync twin).

Design notes
------------
* **Acquire** is one script (``ACQUIRE``): ``SET lock value NX PX ttl`` and, only if that
  took the lock, ``INCR`` of the lock's counter, whose value is the fencing token. Lock and
  counter share the lock name's hash tag, so the script runs on one Cluster slot; a token
  is never handed out without the lock and never reused (the counter has no expiry).
  ``value`` is 128 random bits per acquisition, so a compare on it proves that the key has
  been ours without a break since we set it (an expired key cannot come back with it).
* **Blocking**: retries with a jittered backoff (2 ms doubling to 50 ms) until
  ``blocking_timeout``; there is no wake-up on release (no pub/sub), which keeps a
  waiter's cost at one small script per retry.
* **The local lease clock**: each successful acquire or extend sets
  ``deadline = t0 + px - drift``, where ``t0`` is read *before* the command is sent, so
  the server's expiry (counted from when it received the command) is never earlier; the
  drift margin (1 % of the lease + 2 ms, as in Redlock) covers clocks running at slightly
  different rates. :meth:`check` raises once the deadline has passed even if the worker
  reported nothing: a worker stuck in a call without a socket timeout, or a whole process
  paused (GC, SIGSTOP, a stopped VM), cannot report anything.
* **Extension**: every ``ttl / 3`` the worker runs ``EXTEND`` (compare-and-``PEXPIRE``).
  A failed compare marks the acquisition lost at once; Redis errors are retried at the
  same pace until the deadline passes, then the acquisition is marked lost. The worker
  never lets an exception out and stops on release. Its calls are bounded only by the
  client's ``socket_timeout``; the local clock above does not depend on them.
* **Lost is sticky**: once an acquisition was found lost (by the worker, by
  :meth:`check`, or by a release whose compare failed), it stays lost, and leaving the
  ``with`` block raises :class:`LockLost`.
* **Errors**: acquire and release wrap ``RedisError`` / ``OSError`` in
  :class:`RedisUnavailableError`. An acquire that timed out or was cancelled may still
  have taken the lock on the server: it then expires after ``ttl`` (its token is burnt).
* **Limits**: the lock is as safe as one Redis master (per slot). Replication is
  asynchronous, so a failover can lose a lock key *and* its counter; fencing tokens guard
  writes against paused or slow holders, not against a failover that forgets the counter.
  See Kleppmann, "How to do distributed locking" (2016), for why the token is needed at all.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Optional

from redis.exceptions import RedisClusterException, RedisError

from .._errors import LockLost, LockTimeout, RedisUnavailableError
from .._keys import KeySpace, validate_lock_name
from .._lock_scripts import ACQUIRE, EXTEND, RELEASE
from .._options import Duration, to_seconds
from .._primitives import (
    AsyncEvent,
    AsyncRedis,
    AsyncRedisCluster,
    AsyncWorker,
    async_sleep,
    async_wait_event,
)

__all__ = ["AsyncDistributedLock"]

# OSError covers socket errors redis-py lets through; TimeoutError is an OSError on 3.11+
# RedisClusterException is no RedisError: a cluster client raises it when no startup node
# can be reached (down, or a refused TLS certificate) while it learns the slots
_REDIS_FAILURES = (RedisError, RedisClusterException, OSError)
_CLIENT_TYPES = (AsyncRedis, AsyncRedisCluster)
_BACKOFF_FIRST = 0.002  # first pause between attempts of a blocking acquire (seconds)
_BACKOFF_MAX = 0.05
_DRIFT_FACTOR = 0.01  # share of the lease not trusted to the local clock
_DRIFT_FIXED = 0.002  # seconds, on top of it
_MIN_INTERVAL = 0.001  # the extension worker never spins faster than this
_STOP_TIMEOUT_MAX = 5.0


class _Lease:
    """One acquisition: its random value, token, local deadline, flags and worker."""

    __slots__ = ("deadline", "lost", "reason", "released", "stop", "token", "value", "worker")

    def __init__(self, value: str, token: int, deadline: float) -> None:
        self.value = value
        self.token = token
        self.deadline = deadline  # local monotonic time by which the lease may run out
        self.lost = False
        self.reason = ""
        self.released = False
        self.stop = AsyncEvent()
        self.worker: Optional[AsyncWorker] = None

    def mark_lost(self, reason: str) -> None:
        """Record (once) that ownership can no longer be proven, and why."""
        if not self.lost:
            self.lost = True
            self.reason = reason


class AsyncDistributedLock:
    """A lock in Redis held by one holder at a time, with a fencing token per acquisition.

    Use it as a context manager (or call :meth:`acquire` / :meth:`release`)::

        async with AsyncDistributedLock(client, KeySpace("app"), "nightly-report") as lock:
            report = await build_report()
            lock.check()  # LockLost if the lock is, or may be, lost by now
            await write_fenced(report, token=lock.token)

    Leaving the block releases the lock and raises :class:`LockLost` if it was lost on
    the way: work done under it may have overlapped another holder's. When the block
    itself raised, that exception propagates and a failed release is not reported on
    top of it. An instance is one holder: do not share it between tasks or threads;
    it may be acquired again after it was released (with a new token).

    :param client: a ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``
        (``redis.Redis`` / ``redis.cluster.RedisCluster`` for ``DistributedLock``). Its
        ``socket_timeout`` bounds every call, the extension's included.
    :param keyspace: the namespace whose ``lock_key`` / ``fence_counter_key`` are used.
    :param name: the lock's name (any valid cache key; it decides the Cluster slot).
    :param ttl: lease length in seconds (or a ``timedelta``), > 0: how long the lock
        outlives a holder that died without releasing it.
    :param auto_extend: renew the lease every ``ttl / 3`` in the background while held.
        Without it the lease simply runs out after ``ttl``.
    :param blocking_timeout: how long :meth:`acquire` waits for a held lock, in seconds:
        ``None`` waits forever, ``0`` tries once.
    :param timer: the monotonic clock of the local lease deadline (tests inject one).
    :raises TypeError, ValueError: bad arguments, before any I/O.
    """

    def __init__(
        self,
        client: Any,
        keyspace: KeySpace,
        name: str,
        *,
        ttl: Duration = 10.0,
        auto_extend: bool = True,
        blocking_timeout: Optional[Duration] = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(client, _CLIENT_TYPES):
            expected = " or ".join(f"{c.__module__}.{c.__qualname__}" for c in _CLIENT_TYPES)
            raise TypeError(f"client must be a {expected}, not {type(client).__name__}")
        if not isinstance(keyspace, KeySpace):
            raise TypeError(f"keyspace must be a KeySpace, not {type(keyspace).__name__}")
        self._name = validate_lock_name(name)
        self._ttl = to_seconds(ttl, "ttl", allow_zero=False)
        if not isinstance(auto_extend, bool):
            raise TypeError(f"auto_extend must be a bool, not {type(auto_extend).__name__}")
        self._blocking_timeout = (
            None if blocking_timeout is None else to_seconds(blocking_timeout, "blocking_timeout")
        )
        if not callable(timer):
            raise TypeError("timer must be a callable returning seconds")
        self._auto_extend = auto_extend
        self._timer = timer
        self._px = max(1, int(self._ttl * 1000))
        lease_seconds = self._px / 1000
        self._validity = lease_seconds - (lease_seconds * _DRIFT_FACTOR + _DRIFT_FIXED)
        self._interval = max(_MIN_INTERVAL, self._ttl / 3)
        self._stop_timeout = min(self._ttl, _STOP_TIMEOUT_MAX)
        self._lock_key = keyspace.lock_key(self._name)
        self._counter_key = keyspace.fence_counter_key(self._name)
        # register_script does no I/O: it only hashes the script (EVALSHA, loaded on demand)
        self._acquire_script = client.register_script(ACQUIRE)
        self._extend_script = client.register_script(EXTEND)
        self._release_script = client.register_script(RELEASE)
        self._lease: Optional[_Lease] = None

    def __repr__(self) -> str:
        lease = self._lease
        if lease is None:
            state = "unlocked"
        elif lease.released:
            state = f"released token={lease.token}"
        else:
            state = f"{'lost' if self.lost else 'held'} token={lease.token}"
        return f"<{type(self).__name__} {self._name!r} {state}>"

    # -- state ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The lock's name."""
        return self._name

    @property
    def token(self) -> int:
        """The fencing token of the current (after release: the last) acquisition.

        Tokens of one lock name strictly increase with every acquisition, by anyone.
        ``RuntimeError`` before the first acquisition.
        """
        if self._lease is None:
            raise RuntimeError(f"lock {self._name!r} has not been acquired")
        return self._lease.token

    @property
    def held(self) -> bool:
        """True while acquired, not released and not (possibly) lost; no I/O."""
        lease = self._lease
        return lease is not None and not lease.released and not self._expired(lease)

    @property
    def lost(self) -> bool:
        """True if the current (after release: the last) acquisition is, or may be, lost."""
        lease = self._lease
        if lease is None:
            return False
        return lease.lost or (not lease.released and self._expired(lease))

    def _expired(self, lease: _Lease) -> bool:
        return lease.lost or self._timer() >= lease.deadline

    def check(self) -> None:
        """Raise :class:`LockLost` if the lock is, or may be, lost; no I/O.

        Lost means: an extension found another holder or an expired lease, Redis did not
        confirm an extension before the lease ran out, or ``ttl`` has passed on the local
        clock since the last confirmed acquire or extend. ``RuntimeError`` if not acquired.
        """
        lease = self._lease
        if lease is None or lease.released:
            raise RuntimeError(f"lock {self._name!r} is not acquired")
        if not lease.lost and self._timer() >= lease.deadline:
            lease.mark_lost(f"no confirmed extension for {self._ttl} s: the lease may have run out")
        if lease.lost:
            raise LockLost(f"lock {self._name!r} was lost: {lease.reason}")

    # -- acquire and release -----------------------------------------------------------------

    async def acquire(self) -> int:
        """Take the lock, waiting up to ``blocking_timeout``; return the fencing token.

        Raises :class:`LockTimeout` if another holder kept it that long,
        :class:`RedisUnavailableError` if Redis failed, ``RuntimeError`` if this instance
        already holds it.
        """
        if self._lease is not None and not self._lease.released:
            raise RuntimeError(f"lock {self._name!r} is already acquired; release it first")
        timeout = self._blocking_timeout
        give_up = None if timeout is None else self._timer() + timeout
        pause = _BACKOFF_FIRST
        value = secrets.token_hex(16)
        while True:
            started = self._timer()
            try:
                token = int(
                    await self._acquire_script(
                        keys=[self._lock_key, self._counter_key], args=[value, self._px]
                    )
                )
            except _REDIS_FAILURES as exc:
                raise RedisUnavailableError(
                    f"could not acquire lock {self._name!r}: {exc!r}"
                ) from exc
            if token:
                break
            now = self._timer()
            if give_up is not None and now >= give_up:
                raise LockTimeout(f"lock {self._name!r} was not acquired within {timeout} s")
            wait = random.uniform(pause / 2, pause)  # jitter: contenders do not retry in step
            await async_sleep(wait if give_up is None else min(wait, give_up - now))
            pause = min(pause * 2, _BACKOFF_MAX)
        lease = _Lease(value, token, started + self._validity)
        self._lease = lease
        if self._auto_extend:
            lease.worker = AsyncWorker(
                lambda: self._keep_extending(lease), "stratacache-lock-extender"
            )
        return token

    async def release(self) -> None:
        """Give the lock back: compare-and-delete, so another holder's lock is never touched.

        Raises :class:`LockLost` if the lock was lost before (its lease ran out or another
        holder took it), :class:`RedisUnavailableError` if Redis failed (the lock then
        runs out after at most ``ttl``), ``RuntimeError`` if not acquired.
        """
        lease = self._lease
        if lease is None or lease.released:
            raise RuntimeError(f"lock {self._name!r} is not acquired")
        lease.released = True
        lease.stop.set()  # before the delete: the worker must not mistake it for a loss
        try:
            try:
                deleted = await self._release_script(keys=[self._lock_key], args=[lease.value])
            finally:
                if lease.worker is not None:
                    await lease.worker.stop(self._stop_timeout)
        except _REDIS_FAILURES as exc:
            if self._expired(lease):
                lease.mark_lost(f"the lease ran out and the release failed: {exc!r}")
                raise LockLost(f"lock {self._name!r} was lost: {lease.reason}") from exc
            raise RedisUnavailableError(f"could not release lock {self._name!r}: {exc!r}") from exc
        if not deleted:
            lease.mark_lost("at release it had run out or was held by another holder")
        if lease.lost:
            raise LockLost(f"lock {self._name!r} was lost: {lease.reason}")

    async def __aenter__(self) -> AsyncDistributedLock:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc_type is None:
            await self.release()
            return
        try:
            await self.release()
        except (LockLost, RedisUnavailableError):
            pass  # the block's own exception propagates; it says more than this one

    # -- extension ------------------------------------------------------------------------

    async def _keep_extending(self, lease: _Lease) -> None:
        """Renew ``lease`` every ``ttl / 3`` until it is released; mark it lost when its
        ownership can no longer be proven. Never raises (cancellation aside)."""
        while not await async_wait_event(lease.stop, self._interval):
            if lease.lost:
                return  # found lost by check(): renewing it now would prove nothing
            started = self._timer()
            try:
                extended = await self._extend_script(
                    keys=[self._lock_key], args=[lease.value, self._px]
                )
            except Exception as exc:  # RedisError / OSError expected; nothing may escape
                if lease.stop.is_set():
                    return
                if self._timer() >= lease.deadline:
                    lease.mark_lost(
                        f"Redis did not confirm an extension before the lease ran out: {exc!r}"
                    )
                    return
                continue
            if lease.stop.is_set():
                return  # released meanwhile: a failed compare is the release's delete
            if not extended:
                lease.mark_lost("an extension found the lease run out or another holder")
                return
            lease.deadline = started + self._validity
