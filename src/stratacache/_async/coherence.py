"""How ``AsyncCache`` keeps every instance's L1 true: the invalidation bus, the tag
versions, and which L2 entries are suspect after Redis trouble.

Invalidation bus (``_bus.py``, ``bus.py``): every write is published on the namespace's
channel and every other instance drops the key from its L1. While the bus is unhealthy
the cache writes nothing to L1 (``_l1_open``) after emptying it, so reads go to L2 and
the loader without a check on the L1 hit path (the sync ``get`` is the L1's compiled
getter). The listener refuses L1 writes *before* it clears L1, and every L1 fill goes
through a ticket that the clear revokes, so no fill from before the flush can land after
it. A forked child resets its L1 in place and gets fresh connections and its own listener
(``AsyncCache._after_fork_in_child``).

After Redis trouble (an unanswered PING, a lost subscription, a gap), L2 entries written
before Redis last went silent are *suspect* while the bus is deaf, and those written
before it answered again for ``recovery_grace`` seconds after: another instance's outbox
may still be about to delete them, so they are reloaded (through the lease) instead of
served (``read_path.py``). ``_redis_silent`` and ``_flush_l1`` move those bounds.

An invalidation's effect on this process (the invalidator's ``LocalEffects``) and on the
others (``_publish``) is wired here too, so that the bus, a flush and an invalidation
drop the same things from both L1s (the live one and fail-safe's ``_stale``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from .._bus import BusPublisherState, BusState, apply_to_l1, new_source_id
from .._bus_messages import Action, BusMessage
from .._instances import InstanceRecorder
from .._keys import fnmatch_glob
from .._primitives import async_current_loop, async_forget_connections
from .bus import AsyncInvalidationBus
from .cache_base import AsyncCacheBase
from .invalidator import AsyncInvalidator, LocalEffects


class AsyncCacheCoherence(AsyncCacheBase):
    """The bus, tag-version and local-invalidation members of ``AsyncCache``."""

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
            name=self._keys.channel(),
            keys=self._bus_keys,
        )
        recorder = None
        if self._instance_ttl > 0:
            recorder = InstanceRecorder(
                self._keys, self._instance, source, self._instance_ttl, self._instance_fields
            )
        return AsyncInvalidationBus(
            self._tier,
            self._keys.channel(),
            state,
            BusPublisherState(source, time.time, self._bus_keys[0] if self._bus_keys else None),
            batch_window=self.settings.bus_batch_window,
            heartbeat_timeout=self.settings.heartbeat_timeout,
            on_redis_answers=self._redis_answers,
            on_redis_silent=self._redis_silent,
            recorder=recorder,
        )

    def _redis_answers(self) -> None:
        """The primary Redis answered after failing (its breaker closed, or the bus's
        prober heard it again): remember when, and flush the outbox now."""
        self._answered_at = self._clock()
        self._nudge_outbox()

    def _redis_silent(self, ago: float = 0.0) -> None:
        """Redis did not answer the prober (since ``ago`` seconds), or the bus lost track
        of it: whatever L2 holds from before then may predate writes that other instances
        keep in their outboxes, so it is suspect (see :meth:`_withheld`)."""
        now = self._clock() - ago
        self._silent_at = now
        self._suspect_before = max(self._suspect_before, now)
        self._suspect_until = time.monotonic() + self._recovery_grace

    def _nudge_outbox(self) -> None:
        """Apply what is pending now rather than at its backoff."""
        invalidator = getattr(self, "_invalidator", None)  # None while __init__ runs
        if invalidator is not None:
            invalidator.redis_answers()

    def _make_invalidator(self) -> AsyncInvalidator:
        return AsyncInvalidator(
            keys=self._keys,
            local=LocalEffects(
                keys=self._drop_local_keys,
                tags=self._drop_local_tags,
                pattern=self._drop_local_pattern,
                clear=self._drop_local_all,
            ),
            versions=self._versions,
            primary=self._tier,
            failover=self._failover,
            publish=self._publish,
            settings=self._invalidation_settings,
            instance=self._instance,
            timer=time.monotonic,
            clock=self._clock,
            bus_key=self._bus_keys[0] if self._bus_keys else None,
        )

    def _flush_l1(self) -> None:
        # messages may have been missed: the tag versions seen so far are suspect too
        self._versions.clear()
        self._l1.clear()
        bus = self._bus
        if bus is not None and bus.state.ever_healthy and bus.state.redis_trouble:
            # not at start-up, nor after our own workers ended: only when Redis may have
            # been out of someone's reach may another instance's outbox hold writes that
            # L2 does not show yet
            if bus.state.flush_cause != "recovered":
                self._redis_silent()
            else:
                # heard again: entries written before Redis answered again are suspect for
                # the grace (a writer that wrote after it answered is trusted); if it was
                # never seen silent (a lost subscription), everything before now is
                answered = self._answered_at if self._answered_at > self._silent_at else None
                self._suspect_before = max(self._suspect_before, answered or self._clock())
                self._suspect_until = time.monotonic() + self._recovery_grace
                # the bus heard our heartbeat: Redis answers, so apply what is pending now
                self._nudge_outbox()

    def _apply_bus_message(self, message: BusMessage) -> None:
        if message.action is Action.INVALIDATE_TAGS:
            self._versions.drop(message.args)
        elif message.action is Action.CLEAR:
            self._versions.clear()
        apply_to_l1(self._l1, message)
        if self._stale is not None:
            apply_to_l1(self._stale, message)

    # what an invalidation does to this process (the invalidator's LocalEffects)

    def _drop_local_keys(self, keys: Iterable[str]) -> int:
        removed = 0
        for key in keys:
            removed += self._l1.invalidate(key)
            if self._stale is not None:
                self._stale.invalidate(key)
        return removed

    def _drop_local_tags(self, tags: Iterable[str]) -> int:
        tags = tuple(tags)
        if self._stale is not None:
            self._stale.invalidate_tags(tags)
        return self._l1.invalidate_tags(tags)

    def _drop_local_pattern(self, glob: str) -> int:
        pattern = fnmatch_glob(glob)
        if self._stale is not None:
            self._stale.invalidate_matching(pattern)
        return self._l1.invalidate_matching(pattern)

    def _drop_local_all(self) -> None:
        self._versions.clear()
        self._l1.clear()
        if self._stale is not None:
            self._stale.clear()

    def _l1_open(self) -> bool:
        """Whether L1 may take new entries (False while the bus is unhealthy)."""
        return self._bus is None or self._bus.state.l1_usable

    async def _bus_started(self) -> None:
        bus = self._bus
        if bus is not None and bus.needs_start():
            await self._start_bus(bus)

    async def _start_bus(self, bus: AsyncInvalidationBus) -> None:
        """Start the bus; restart it if a worker ended; rebind the cache to a new event
        loop (async only: a second ``asyncio.run``), whose first loop took the bus's tasks
        and every connection with it."""
        if bus.started and bus.loop is not async_current_loop():
            # deaf since the old loop ended: nothing kept from then may be served (L2 is
            # not suspect for it: no Redis trouble is known)
            self._versions.clear()
            self._l1.clear()
            self._flights = {}
            self._loads.flights.clear()  # the old loop's load tasks ended with it
            self._refresher.reset()
            for tier in (self._tier, self._failover):
                if tier is not None:
                    async_forget_connections(tier.client)
            self._invalidator.rebind_loop()
        await bus.start()

    async def _publish(self, action: Action, args: Iterable[str], at_once: bool = False) -> None:
        if self._bus is not None:
            await self._bus.publish(action, args, at_once=at_once)

