"""Scheduled invalidation: cron-like schedules that fire once per tick in the whole fleet.

Every instance may register the same schedule (``AsyncCache.schedule_invalidation``);
a background worker of the cache (a task; a thread in the sync twin), started with the
first schedule and stopped by ``close()``, checks the schedules against the cache's
clock (``clock=``, injectable) at most every ``schedule_poll`` seconds and runs one atomic
claim in Redis per due tick (``_schedule.py``: policy, records, scripts). The instance
whose claim succeeds runs the invalidation through the cache, so it goes through the
outbox like any other (a Redis fault after the claim delays it, never loses it). A claim
that fails because Redis does not answer is tried again at the next poll, until Redis
answers: the tick fires once then, not twice (the claim is atomic and a tick is never
claimed again once it or a later one fired).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from .._errors import RedisUnavailableError
from .._logging import LogLimiter
from .._primitives import AsyncEvent, AsyncWorker, async_current_loop, async_wait_event
from .._schedule import (
    CLAIM,
    REGISTER,
    LastFired,
    ScheduleInfo,
    ScheduleSpec,
    ScheduleState,
    decode_last,
    index_key,
    latest_tick,
    next_tick,
    schedule_keys,
    tick_key,
    tick_key_ms,
)

if TYPE_CHECKING:
    from .cache import AsyncCache

logger = logging.getLogger("stratacache.schedule")

_STOP_TIMEOUT = 5.0


class AsyncScheduler:
    """The schedules of one cache and the worker that fires them."""

    def __init__(self, cache: AsyncCache, poll: float) -> None:
        self._cache = cache
        self._poll = poll
        self._states: dict[str, ScheduleState] = {}
        self._worker: AsyncWorker | None = None
        self._stop: AsyncEvent | None = None
        self._loop: Any = None
        self._closed = False
        self._warn = LogLimiter(logger, 30.0)
        self._scripts: tuple[Any, Any] | None = None
        # who claims: unique per scheduler (two caches of one process share an instance
        # name), so that a claim of ours Redis ran unheard is recognised as ours
        self.token = f"{cache._instance}#{os.urandom(3).hex()}"

    # -- registration -----------------------------------------------------------------

    async def add(self, spec: ScheduleSpec) -> ScheduleInfo:
        """Register ``spec`` (replacing a schedule of the same name in this instance),
        record it in Redis if it answers (else the worker does it later), and make sure
        the worker runs."""
        if self._closed:
            raise RuntimeError("the cache is closed")
        state = ScheduleState(spec)
        self._states[spec.name] = state
        try:
            await self._register(state)
        except RedisUnavailableError as exc:
            self._warn.warning(
                "schedule %r: Redis did not answer its registration (%s); it is retried "
                "until Redis answers, and the schedule fires nothing before then",
                spec.name,
                exc,
            )
        self.ensure_running()
        return state.info(self._cache._clock())

    async def remove(self, name: str, forget: bool) -> bool:
        """Stop running schedule ``name`` here; with ``forget``, also delete its records
        in Redis (every instance's: another instance still running it registers it
        again). True if this instance ran it."""
        existed = self._states.pop(name, None) is not None
        tier = self._cache._tier
        if forget and tier is not None:
            keys = self._cache._keys
            definition, last = schedule_keys(keys, name)
            index = index_key(keys)
            pipe = tier.client.pipeline(transaction=False)
            pipe.delete(definition)
            pipe.delete(last)
            pipe.zrem(index, name)
            await tier._call(pipe.execute, _route=(definition, last, index))
        return existed

    def infos(self) -> tuple[ScheduleInfo, ...]:
        """Every schedule of this instance, by name."""
        now = self._cache._clock()
        return tuple(self._states[name].info(now) for name in sorted(self._states))

    # -- firing -----------------------------------------------------------------------

    async def run_due(self) -> list[str]:
        """Claim and fire every schedule whose tick is due now; the names fired here."""
        fired: list[str] = []
        for state in list(self._states.values()):
            if await self._run_one(state):
                fired.append(state.spec.name)
        return fired

    async def _run_one(self, state: ScheduleState) -> bool:
        c = self._cache
        spec = state.spec
        now = c._clock()
        tick = latest_tick(spec.cron, now)
        if tick <= state.handled and state.registered:
            return False
        try:
            if not state.registered:
                await self._register(state)
                if tick <= state.handled:
                    return False
            claimed, record = await self._claim(state, tick, now)
        except RedisUnavailableError as exc:
            state.pending = True
            self._warn.warning(
                "schedule %r: cannot claim its tick of %s, Redis does not answer (%s); "
                "retrying every %.2g s until it does (it fires once then)",
                spec.name,
                tick,
                exc,
                self._poll,
            )
            return False
        state.pending = False
        state.handled = tick
        if record is not None:
            state.last = record
        if not claimed:
            return False
        logger.info(
            "schedule %r fires its tick of %s: invalidating %s", spec.name, tick, spec.describe()
        )
        await self._fire(spec, tick)
        state.fired_here += 1
        return True

    async def _fire(self, spec: ScheduleSpec, tick: float) -> None:
        c = self._cache
        reason = spec.reason or f"schedule {spec.name} ({spec.cron}) tick {int(tick)}"
        try:
            if spec.everything:
                await c.invalidate_all(reason=reason)
            if spec.tags:
                await c.invalidate_tags(*spec.tags, reason=reason)
            for key in spec.keys:
                await c.invalidate(key, reason=reason)
            for pattern in spec.patterns:
                await c.invalidate_pattern(pattern, reason=reason)
        except Exception as exc:  # with on_write_error="raise": queued in the outbox anyway
            logger.error(
                "schedule %r: its invalidation at tick %s failed (%s: %s); what failed waits "
                "in the outbox",
                spec.name,
                tick,
                type(exc).__name__,
                exc,
            )

    # -- Redis ------------------------------------------------------------------------

    def _tier(self) -> Any:
        tier = self._cache._tier
        if tier is None:
            return None
        # background work: never refused by the breaker, and closes it when Redis answers
        return tier.around_breaker()

    def _script(self, index: int) -> Any:
        if self._scripts is None:
            client = self._cache._tier.client  # type: ignore[union-attr]
            self._scripts = (client.register_script(REGISTER), client.register_script(CLAIM))
        return self._scripts[index]

    async def _register(self, state: ScheduleState) -> None:
        c = self._cache
        tier = self._tier()
        spec = state.spec
        if tier is None:  # no Redis: the instance alone decides, from now on
            state.registered = True
            state.handled = latest_tick(spec.cron, c._clock())
            return
        now = c._clock()
        definition, last = schedule_keys(c._keys, spec.name)
        index = index_key(c._keys)
        baseline = LastFired(latest_tick(spec.cron, now)).encode()
        keys = [definition, last, index]
        raw = await tier._call(
            self._script(0),
            keys=keys,
            args=[spec.encode(c._instance, now), spec.name, baseline, int(now * 1000)],
            _route=keys,
            _timed=False,
        )
        state.last = decode_last(raw)
        state.registered = True

    async def _claim(
        self, state: ScheduleState, tick: float, now: float
    ) -> tuple[bool, LastFired | None]:
        c = self._cache
        tier = self._tier()
        spec = state.spec
        if tier is None:
            return True, LastFired(tick, now, self.token)
        last = schedule_keys(c._keys, spec.name)[1]
        tick_id = tick_key(c._keys, spec.name, tick)
        keys = [last, tick_id]
        claimed, raw = await tier._call(
            self._script(1),
            keys=keys,
            args=[repr(tick), repr(now), self.token, tick_key_ms(spec.cron, tick)],
            _route=keys,
            _timed=False,
        )
        return bool(claimed), decode_last(raw) if raw else None

    # -- the worker -------------------------------------------------------------------

    def ensure_running(self) -> None:
        """Start the worker if it is not running here (never started, ended, or started
        in an event loop that has ended)."""
        if self._closed or not self._states:
            return
        worker = self._worker
        if worker is not None and worker.alive() and self._loop is async_current_loop():
            return
        if worker is not None:
            worker.abandon()
        stop = AsyncEvent()
        self._stop = stop
        self._loop = async_current_loop()
        self._worker = AsyncWorker(lambda: self._run(stop), "stratacache-scheduler")

    def _pause(self) -> float:
        """Seconds until the next check: the next tick, at most ``poll``."""
        now = self._cache._clock()
        pause = self._poll
        for state in list(self._states.values()):
            if state.pending or not state.registered:
                continue
            pause = min(pause, max(0.0, next_tick(state.spec.cron, now) - now))
        return pause

    async def _run(self, stop: AsyncEvent) -> None:
        while not stop.is_set():
            try:
                await self.run_due()
            except Exception:  # pragma: no cover - never let the loop die (bug guard)
                logger.exception("the scheduler's pass failed; it goes on")
            await async_wait_event(stop, self._pause())

    async def aclose(self) -> None:
        """Stop the worker (a firing in progress ends first)."""
        self._closed = True
        worker, stop = self._worker, self._stop
        self._worker = None
        if stop is not None:
            stop.set()
        if worker is not None:
            await worker.stop(_STOP_TIMEOUT)

    @property
    def names(self) -> list[str]:
        """The names of this instance's schedules."""
        return sorted(self._states)
