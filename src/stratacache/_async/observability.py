"""What ``AsyncCache`` tells about itself: counters, health, permissions, the heartbeat.

Everything here reads counters and state the other parts keep (``stats()`` calls no
Redis; ``check_permissions()`` is the one call that does, once at start-up), so that
``prometheus.py``, the CLI and a readiness probe see one consistent account of the cache,
and the instance record the bus publishes (``_instances.py``) says the same as
``stats()``.
"""

from __future__ import annotations

from typing import Any

from .._errors import RedisPermissionError
from .._health import Health, judge
from .._instances import summarize_dead_letters
from .._l1 import L1
from .._stats import CacheStats
from .bus import AsyncInvalidationBus
from .cache_base import AsyncCacheBase


def bus_state_name(bus: AsyncInvalidationBus) -> str:
    """``starting``, ``healthy`` or ``unhealthy`` (a bus whose worker ended is marked
    unhealthy first, so it is never reported healthy)."""
    bus.check_workers()
    if not bus.started:
        return "starting"
    return "healthy" if bus.state.healthy else "unhealthy"


class AsyncCacheObservability(AsyncCacheBase):
    """The stats, health and inspection members of ``AsyncCache``."""

    def stats(self) -> CacheStats:
        """A snapshot of the counters (see :class:`CacheStats`)."""
        c = self._counters
        bus = self._bus
        if bus is None:
            bus_fields: dict[str, Any] = {}
        else:
            bus_state = bus_state_name(bus)
            state = bus.state
            bus_fields = {
                "bus_state": bus_state,
                "bus_messages_sent": bus.outbox.sent,
                "bus_messages_received": state.received,
                "bus_messages_dropped": state.dropped,
                "bus_messages_forged": state.forged,
                "bus_flushes_subscribe": state.flushes_subscribe,
                "bus_flushes_gap": state.flushes_gap,
                "bus_flushes_heartbeat": state.flushes_heartbeat,
                "bus_reconnects": bus.reconnects,
                "bus_unhealthy_seconds": state.unhealthy_seconds(),
                "bus_lag": state.lag.summary(),
            }
        failover_fields: dict[str, Any] = {}
        loader = self._loads.counters
        breaker = self._loader_breaker
        loader_fields: dict[str, Any] = {
            "loader_soft_timeouts": loader.soft_timeouts,
            "loader_hard_timeouts": loader.hard_timeouts,
            "loader_rejected": loader.rejected,
            "loader_background_loads": self._loads.in_flight(),
            "loader_background_completed": loader.background_completed,
        }
        if breaker is not None:
            loader_fields["loader_breaker_state"] = breaker.state.value
            loader_fields["loader_breaker_opened"] = breaker.opened
        if self._failover is not None:
            failover_fields = {
                "failover_breaker_state": self._failover_breaker.state.value,
                "failover_breaker_opened": self._failover_breaker.opened,
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
            bloom_rejected=c.bloom_rejected,
            early_refreshes=self._refresher.refreshed,
            early_refreshes_adopted=self._refresher.adopted,
            early_refresh_failures=self._refresher.failures,
            l1_size=len(self._l1),
            l1_evictions=self._l1.evictions,
            breaker_state=self._breaker.state.value,
            breaker_opened=self._breaker.opened,
            **failover_fields,
            **loader_fields,
            load_latency=c.load_latency.summary(),
            l2_latency=c.l2_latency.summary(),
            invalidation=self._invalidator.stats(),
            schedules=self._scheduler.infos(),
            **bus_fields,
        )

    async def check_permissions(self) -> None:
        """Check, once at startup, that the Redis user may do everything this cache does;
        raise :class:`RedisPermissionError` naming every refused command, key or channel.

        Without it a user with too narrow an ACL sees only misses (reads treat a refused
        command as one) and dead letters. It tries each command once on probe keys of
        the namespace (gone when it returns) and subscribes to the bus channel: a few
        milliseconds. ``stratacache acl`` prints rules that pass. Raises
        :class:`RedisUnavailableError` if Redis does not answer; does nothing without
        Redis.
        """
        missing: list[str] = []
        for tier in (self._tier, self._failover):
            if tier is not None:
                missing.extend(await tier.missing_permissions())
        if missing:
            raise RedisPermissionError(
                f"the Redis user of namespace {self._keys.namespace!r} lacks "
                f"{len(missing)} permission(s) the cache needs (run `stratacache acl` for "
                "the rules it needs):\n  " + "\n  ".join(missing),
                tuple(missing),
            )

    def health(self) -> Health:
        """This cache's health for a readiness probe: ``ok``, ``degraded`` or ``failing``
        with the reasons (see :class:`Health`). Reads counters only: no Redis call."""
        return judge(
            self.stats(),
            has_redis=self._tier is not None,
            redis_answers=self._invalidator.redis_reachable(),
            tls_error=self._tier.tls_error if self._tier is not None else None,
        )

    def _instance_fields(self) -> dict[str, Any]:
        """The live fields of this instance's heartbeat record (see ``_instances.py``):
        what ``stats()`` says, without summarising the latency windows it does not need."""
        c = self._counters
        bus = self._bus
        inv = self._invalidator
        l1_hits, l1_misses = self._l1.hits, self._l1.misses
        reads = l1_hits + l1_misses
        fields: dict[str, Any] = {
            "hit_ratio": (l1_hits + c.l2_hits) / reads if reads else 0.0,
            "breaker_state": self._breaker.state.value,
            "l1_size": len(self._l1),
            "l1_hits": l1_hits,
            "l1_misses": l1_misses,
            "l2_hits": c.l2_hits,
            "l2_misses": c.l2_misses,
            "loads": c.loads,
            "errors": c.errors,
            "stale_served": c.stale_served,
            "bus_state": "off",
            "bus_lag_p99": 0.0,
        }
        # (once a second: the two latency windows stats() sorts cost well under a ms)
        invalidation = inv.stats()
        fields["outbox_size"] = invalidation.outbox_pending
        fields["dead_letters"] = invalidation.dead_letters
        fields["invalidations"] = sum(invalidation.invalidations.values())
        fields["recent_dead_letters"] = summarize_dead_letters(inv.dead_letters())
        if bus is not None:
            fields["bus_state"] = bus_state_name(bus)
            state = bus.state
            fields["bus_lag_p99"] = state.lag.summary().p99
            fields["bus_messages_sent"] = bus.outbox.sent
            fields["bus_messages_received"] = state.received
        return fields

    @property
    def l1(self) -> L1:
        """The in-process tier (for inspection; writes should go through the cache)."""
        return self._l1

    @property
    def redis(self) -> Any:
        """The Redis client of L2, or None."""
        return self._tier.client if self._tier is not None else None

