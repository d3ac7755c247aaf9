"""Loads under a time limit (``soft_timeout`` / ``hard_timeout``), for one cache; see
``docs/loader.md``.

Without a limit the read path calls the loader inline, as it always did. With one, the
leader's whole fill (L2, lease, loader, guarded writes: ``AsyncReadPath._fill``) runs as
a task of its own — an asyncio task (``AsyncCache``) or a worker thread (``Cache``) —
and every caller of the key, the leader included, *waits* for that task's flight:

- until the flight ends: its value (or error) is the answer;
- until its own soft timeout, if a fail-safe value is at hand: that value is the answer
  (``stale_served``, ``loader_soft_timeouts``); the load goes on in the background and
  its result is cached when it arrives, through the same guards as any fill (a write or
  an invalidation meanwhile revokes its lease and its L1 ticket: it is not cached);
- until its hard timeout, never later than the hard timeout of the flight's leader: the
  fail-safe value if there is one (as FusionCache does with fail-safe on), else
  :class:`LoaderTimeout`. The flight counts as one failure of the loader's breaker.
  An async loader is cancelled at the flight's hard timeout (``async_call_loader_within``
  inside the fill); a thread cannot be, so a sync loader runs on and its result is
  still cached.

The flight stays in the cache's flights map until its task ends, so callers arriving
while a soft-timed-out load runs on join it (and get the fail-safe value at their soft
timeout) instead of starting a second load. The lease is held, and given back, by the
task, whatever happens to the callers.

Cancellation (async): a caller cancelled while it waits stops waiting; if it was the
last one waiting and no caller was answered early (soft or hard timeout), nothing wants
the result any more and the task is cancelled (and awaited: its lease is given back
before the cancellation propagates), as the inline path does. A load that outlives every
caller runs until it ends, its hard timeout, or :meth:`AsyncLoads.aclose` (``close()``:
waits up to ``close_timeout``, then cancels what is left; threads are left to end).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import LoaderTimeout
from .._loader import LoaderCounters, LoaderLimits
from .._primitives import AsyncLoadTask, AsyncResultSlot
from .._sentinel import MISSING
from .read_path import _LeaderGone

if TYPE_CHECKING:
    from .cache import AsyncCache

logger = logging.getLogger("stratacache.loader")


class AsyncFlight(AsyncResultSlot[Any]):
    """The single flight of a key whose load runs under a time limit.

    ``hard_at``: the flight's hard deadline (``time.monotonic``), or None; ``fallback``:
    the fail-safe value the fill found (MISSING until then); ``waiters``: callers waiting;
    ``detached``: a caller was answered early (the result is wanted by the cache only);
    ``expired``: the hard deadline passed (counted once); ``loading``: a loader was
    running at it (ours, or another process's behind its lease), which makes the expiry
    one failure of the loader's breaker. A deadline that passes while Redis is still
    answering the look-up is not the loader's failure: the database behind it may be
    fine, and Redis has its own timeouts and breaker."""

    __slots__ = ("detached", "expired", "fallback", "hard_at", "loading", "task", "waiters")

    def __init__(self, hard_at: float | None) -> None:
        super().__init__()
        self.hard_at = hard_at
        self.fallback: Any = MISSING
        self.waiters = 0
        self.detached = False
        self.expired = False
        self.loading = False
        self.task: AsyncLoadTask | None = None

    def remaining(self) -> float | None:
        """Seconds to the hard deadline (None: no limit)."""
        return None if self.hard_at is None else self.hard_at - time.monotonic()


class AsyncLoads:
    """The loads of one cache that run under a time limit (see the module notes)."""

    def __init__(self, cache: AsyncCache) -> None:
        self._cache = cache
        self.flights: set[AsyncFlight] = set()  # those whose task runs
        self.counters = LoaderCounters()

    def new_flight(self, limits: LoaderLimits) -> AsyncFlight:
        """A flight whose hard deadline starts now."""
        hard_at = None if limits.hard is None else time.monotonic() + limits.hard
        return AsyncFlight(hard_at)

    async def lead(
        self,
        key: str,
        flight: AsyncFlight,
        fill: Callable[[], Any],
        limits: LoaderLimits,
    ) -> Any:
        """Start ``fill`` as the flight's task (it owns the L1 ticket and the lease), then
        wait for it like any other caller."""
        c = self._cache
        flight.fallback = c._reads._fail_safe_value(key, None)  # the L1 copy, if any

        def done(task: AsyncLoadTask) -> None:
            self.flights.discard(flight)
            if c._flights.get(key) is flight:
                del c._flights[key]
            try:
                value = task.outcome()
            except Exception as exc:
                flight.set_exception(exc)
            except BaseException:  # cancelled: the callers left, or close()
                flight.set_exception(_LeaderGone())
            else:
                if flight.detached:
                    self.counters.background_completed += 1
                flight.set_result(value)

        self.flights.add(flight)  # before the task starts: a thread may end at once
        flight.task = AsyncLoadTask(fill, f"stratacache load {key!r}", done)
        return await self.follow(key, flight, limits)

    async def follow(
        self, key: str, flight: AsyncResultSlot[Any], limits: LoaderLimits | None
    ) -> Any:
        """Wait for a flight within the caller's limits and the flight's hard deadline."""
        timed = flight if isinstance(flight, AsyncFlight) else None
        if timed is not None:
            if timed.expired or (timed.hard_at is not None and time.monotonic() >= timed.hard_at):
                # past its deadline: its task is being stopped (or, a thread, runs on for
                # the cache only); a caller arriving now starts a flight of its own
                self.expire(key, timed, "no answer within the hard timeout")
                raise _LeaderGone()
            timed.waiters += 1
        try:
            return await self._wait(key, flight, timed, limits)
        except BaseException as exc:
            if (
                timed is not None
                and not isinstance(exc, Exception)
                and timed.waiters == 1
                and not timed.detached
                and timed.task is not None
                and timed.task.cancel()
            ):
                # the last caller left: nothing wants this load any more
                await timed.task.join(None)
            raise
        finally:
            if timed is not None:
                timed.waiters -= 1

    async def _wait(
        self,
        key: str,
        flight: AsyncResultSlot[Any],
        timed: AsyncFlight | None,
        limits: LoaderLimits | None,
    ) -> Any:
        start = time.monotonic()
        soft = None if limits is None else limits.soft
        hard = None if limits is None else limits.hard
        hard_at = None if hard is None else start + hard
        if timed is not None and timed.hard_at is not None:
            hard_at = timed.hard_at if hard_at is None else min(hard_at, timed.hard_at)
        if soft is not None and (hard_at is None or start + soft < hard_at):
            if await flight.settled(soft):
                return self._outcome(key, flight, timed, start)
            fallback = self._fallback(key, timed)
            if fallback is not MISSING:
                if timed is not None:
                    timed.detached = True
                self.counters.soft_timeouts += 1
                self._cache._counters.stale_served += 1
                return fallback
        if hard_at is None:
            await flight.settled(None)
            return self._outcome(key, flight, timed, start)
        if await flight.settled(max(hard_at - time.monotonic(), 0.0)):
            return self._outcome(key, flight, timed, start)
        own = timed is not None and timed.hard_at is not None and hard_at >= timed.hard_at
        return self.hard_timeout(key, timed, hard_at - start, own)

    def _outcome(
        self, key: str, flight: AsyncResultSlot[Any], timed: AsyncFlight | None, start: float
    ) -> Any:
        """The flight's outcome; its own hard timeout (the load was stopped at the flight's
        deadline) is answered like a caller's: the fail-safe value, else the error."""
        try:
            return flight.outcome()
        except LoaderTimeout:
            return self.hard_timeout(key, timed, time.monotonic() - start, True)

    def hard_timeout(
        self, key: str, flight: AsyncFlight | None, seconds: float, flights_deadline: bool
    ) -> Any:
        """A caller's hard timeout: the fail-safe value, else :class:`LoaderTimeout`. The
        first caller to see the flight's own deadline pass counts it as one failure of
        the loader's breaker."""
        c = self._cache
        if flight is not None:
            flight.detached = True
            if flights_deadline:
                self.expire(key, flight, f"no answer within the hard timeout ({seconds:.3f} s)")
        self.counters.hard_timeouts += 1
        fallback = self._fallback(key, flight)
        if fallback is not MISSING:
            c._counters.stale_served += 1
            return fallback
        raise LoaderTimeout(
            f"the loader of {key!r} did not answer within the hard timeout ({seconds:.3f} s) "
            "and no fail-safe value was at hand"
        )

    def expire(self, key: str, flight: AsyncFlight, cause: str) -> None:
        """The flight's hard deadline passed (once per flight): a failure of the loader's
        breaker if a loader was running (see :class:`AsyncFlight`), and the flight leaves
        the flights map, so that callers arriving later start a new one
        instead of joining a load that is being stopped (async) or that nobody waits for
        any more (a thread, which still caches its result if it ever ends)."""
        if flight.expired:
            return
        flight.expired = True
        flights = self._cache._flights
        if flights.get(key) is flight:
            del flights[key]
        breaker = self._cache._loader_breaker
        if breaker is not None and flight.loading:
            breaker.record_failure(cause)

    def _fallback(self, key: str, flight: AsyncFlight | None) -> Any:
        if flight is not None and flight.fallback is not MISSING:
            return flight.fallback
        return self._cache._reads._fail_safe_value(key, None)

    def in_flight(self) -> int:
        """Loads running under a time limit now (those in the background included)."""
        return len(self.flights)

    async def aclose(self, timeout: float) -> None:
        """Let the running loads end for up to ``timeout`` seconds, then cancel what is
        left (an async load gives its lease back as it is cancelled; a thread cannot be
        cancelled and is left to end by itself)."""
        deadline = time.monotonic() + timeout
        tasks = [flight.task for flight in list(self.flights) if flight.task is not None]
        for task in tasks:
            await task.join(max(deadline - time.monotonic(), 0.0))
        left = [task for task in tasks if not task.done()]
        cancelled = [task for task in left if task.cancel()]
        for task in cancelled:
            await task.join(None)
        if left:
            logger.warning(
                "close(): %d load(s) still running after close_timeout (%.2f s)%s",
                len(left),
                timeout,
                ": cancelled" if cancelled else "; their threads are left to end",
            )
