"""``cache.health()``: a cache's state judged for readiness probes (no I/O, written once).

The verdict is read from counters the cache keeps anyway (breaker, bus, outbox), so a
probe costs no Redis round trip and answers at once even while Redis hangs.

Rules
-----
* **failing**: Redis is unreachable *and* this instance holds accepted writes or
  invalidations it could not apply (outbox pending): other instances may serve data this
  one has already changed, until Redis answers again. Or the TLS handshake with Redis
  failed on the last call (a wrong CA, a bad certificate): a configuration error.
* **degraded**: the cache works but not as designed: Redis unreachable (reads go to the
  loader), a breaker open or half-open, the bus unhealthy (L1 bypassed or serving
  bounded-stale entries; a bus not started yet, before the cache's first call, is not),
  operations pending in the outbox, dead letters present.
* **ok**: none of the above.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from ._stats import CacheStats

__all__ = ["Health"]

OK = "ok"
DEGRADED = "degraded"
FAILING = "failing"


@dataclass(frozen=True)
class Health:
    """A cache's health (see ``Cache.health()``), for readiness probes and dashboards.

    ``status`` is ``"ok"``, ``"degraded"`` or ``"failing"`` (the rules are in
    docs/operations/metrics.md); ``reasons`` says why it is not ``"ok"``, one line each.
    """

    status: str
    redis_reachable: Optional[bool]
    """Whether the primary Redis answers (its breaker closed and the last try of the
    outbox succeeded); ``None`` for a cache without Redis."""
    breaker: str
    """The primary Redis's breaker: ``closed``, ``open`` or ``half_open``."""
    failover_breaker: str
    """The failover Redis's breaker, ``off`` without one."""
    bus: str
    """The invalidation bus: ``off``, ``starting``, ``healthy`` or ``unhealthy``."""
    bus_lag_p99: float
    """p99 of the recent bus messages' delivery lag, in seconds."""
    outbox_pending: int
    """Writes and invalidations accepted but not yet applied to Redis."""
    dead_letters: int
    """Operations Redis refused for good (see ``Cache.dead_letters()``)."""
    reasons: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the status is ``"ok"``."""
        return self.status == OK

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for a JSON health endpoint)."""
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        return data


def judge(
    stats: CacheStats, *, has_redis: bool, redis_answers: bool, tls_error: str | None = None
) -> Health:
    """The :class:`Health` of a cache with these ``stats``; ``redis_answers``: the
    outbox's last try on the primary Redis succeeded (or there was none); ``tls_error``:
    the TLS handshake failure of its last call, if that is how it failed."""
    inv = stats.invalidation
    pending = inv.outbox_pending if inv is not None else 0
    dead = inv.dead_letters if inv is not None else 0
    reachable: Optional[bool] = None
    if has_redis:
        reachable = redis_answers and stats.breaker_state == "closed"
    failing: list[str] = []
    degraded: list[str] = []
    if tls_error is not None:
        # a configuration error, not an outage: nothing heals it, so not ready
        failing.append(f"TLS handshake with Redis failed: {tls_error}")
    if reachable is False:
        if pending:
            failing.append(
                f"Redis unreachable with {pending} accepted operation(s) not yet applied"
            )
        else:
            degraded.append("Redis unreachable: reads go to the loader")
    if stats.breaker_state != "closed":
        degraded.append(f"primary Redis breaker {stats.breaker_state}")
    if stats.failover_breaker_state not in ("off", "closed"):
        degraded.append(f"failover Redis breaker {stats.failover_breaker_state}")
    if stats.loader_breaker_state not in ("off", "closed"):
        # the loader failed too often: misses get fail-safe values or LoaderUnavailable
        degraded.append(f"loader breaker {stats.loader_breaker_state}")
    # "starting": no call has needed the bus yet (it starts with the first one)
    if stats.bus_state == "unhealthy":
        degraded.append("invalidation bus unhealthy")
    if pending and reachable is not False:
        degraded.append(f"{pending} operation(s) pending in the outbox")
    if dead:
        degraded.append(f"{dead} dead letter(s): see dead_letters()")
    status = FAILING if failing else DEGRADED if degraded else OK
    return Health(
        status=status,
        redis_reachable=reachable,
        breaker=stats.breaker_state,
        failover_breaker=stats.failover_breaker_state,
        bus=stats.bus_state,
        bus_lag_p99=stats.bus_lag.p99,
        outbox_pending=pending,
        dead_letters=dead,
        reasons=tuple(failing + degraded),
    )
