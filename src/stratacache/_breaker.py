"""Circuit breaker: closed, open, half-open (no I/O, clock injected). It guards each
Redis (the tier) and, optionally, the loader (``loader_breaker_threshold``).

After ``threshold`` consecutive failures the breaker opens and callers skip Redis (L1
and the loader keep serving). After ``cooldown`` seconds one probe call is let through
(half-open); its success closes the breaker, its failure opens it for another cooldown.

With a ``window`` (the loader's breaker) it opens after ``threshold`` failures within the
last ``window`` seconds, whatever succeeded in between, and only the probe's success
closes it (a slow call that started before it opened and succeeds later does not).

The transitions an operator must know about are logged on ``stratacache.breaker``: a
WARNING when the breaker opens from closed, an INFO when it closes again with how long
Redis was cut off (a failed probe re-opening it logs nothing: same outage).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from enum import Enum

logger = logging.getLogger("stratacache.breaker")


class BreakerState(str, Enum):
    """The three states of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures of a dependency and stops calling it while it is down.

    Parameters:
        threshold: consecutive failures that open the breaker (>= 1).
        cooldown: seconds the breaker stays open before a probe is allowed (> 0).
        timer: monotonic clock in seconds (tests inject a fake one).
        name: what it guards, for the log lines.
        on_close: called (outside the lock) when the breaker closes after being open.
        window: count failures within this many seconds instead of consecutive ones
            (``None``: consecutive).
        effect: what callers get while it is open, for the WARNING it logs on opening
            (default: the Redis tier's fallbacks).
    """

    __slots__ = (
        "_effect",
        "_failures",
        "_lock",
        "_on_close",
        "_opened_at",
        "_outage_started",
        "_probe_in_flight",
        "_state",
        "_timer",
        "_times",
        "cooldown",
        "name",
        "opened",
        "threshold",
        "window",
    )

    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 1.0,
        *,
        timer: Callable[[], float] | None = None,
        name: str = "Redis",
        on_close: Callable[[], None] | None = None,
        window: float | None = None,
        effect: str | None = None,
    ) -> None:
        if not isinstance(threshold, int) or threshold < 1:
            raise ValueError(f"threshold must be an int >= 1, got {threshold!r}")
        if not cooldown > 0:
            raise ValueError(f"cooldown must be > 0 seconds, got {cooldown!r}")
        if window is not None and not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        self.window = None if window is None else float(window)
        self._times: deque[float] = deque()
        self._effect = effect or (
            "calls skip it (reads fall back to L1 and the loader, writes wait in the outbox)"
        )
        self.threshold = threshold
        self.cooldown = float(cooldown)
        self._timer = timer or time.monotonic
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._outage_started = 0.0
        self.name = name
        self._on_close = on_close
        self.opened = 0
        """How many times the breaker has opened."""

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose cooldown passed reads as half-open)."""
        if self._state is BreakerState.OPEN and self._timer() - self._opened_at >= self.cooldown:
            return BreakerState.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May the caller use the dependency now? (In half-open, only one probe at a time.)"""
        if self._state is BreakerState.CLOSED:
            return True
        with self._lock:
            if self._state is BreakerState.OPEN:
                if self._timer() - self._opened_at < self.cooldown:
                    return False
                self._state = BreakerState.HALF_OPEN
                self._probe_in_flight = False
            if self._probe_in_flight:
                return False
            self._probe_in_flight = True
            return True

    def record_success(self) -> None:
        """The call succeeded: close the breaker (with a ``window``: only a probe's
        success closes it, and a success does not forget the failures in the window)."""
        if self._state is BreakerState.CLOSED and (self._failures == 0 or self.window):
            return
        with self._lock:
            if self.window is not None and self._state is not BreakerState.HALF_OPEN:
                return  # closed (the window keeps its failures), or open: not a probe
            was_open = self._state is not BreakerState.CLOSED
            self._times.clear()
            self._failures = 0
            self._state = BreakerState.CLOSED
            self._probe_in_flight = False
        if was_open:
            logger.info(
                "circuit breaker of the %s closed: it answers again after %.2f s",
                self.name,
                self._timer() - self._outage_started,
            )
            if self._on_close is not None:
                self._on_close()

    def trip(self, why: str) -> None:
        """Open now (or restart the cooldown of an open breaker): a health check found the
        dependency unreachable, so callers need not each wait for a timeout to learn it.
        While the checks keep failing no call is let through as a probe; the check that
        succeeds closes the breaker (:meth:`record_success`)."""
        with self._lock:
            opened = self._open()
        if opened:
            logger.warning(
                "circuit breaker of the %s opened: %s; %s until it answers again",
                self.name,
                why,
                self._effect,
            )

    def _open(self) -> bool:
        """Lock held: open now (restarting the cooldown); True if it was closed."""
        was_closed = self._state is BreakerState.CLOSED
        if was_closed:
            self._outage_started = self._timer()
        if self._state is not BreakerState.OPEN:
            self.opened += 1
        self._state = BreakerState.OPEN
        self._opened_at = self._timer()
        self._probe_in_flight = False
        return was_closed

    def abandon(self) -> None:
        """An allowed call ended with no verdict (cancelled): let another probe through."""
        self._probe_in_flight = False

    def record_failure(self, cause: str | None = None) -> None:
        """The call failed (``cause``: what went wrong, for the log line): count it, and
        open the breaker at the threshold or after a probe."""
        opened = False
        with self._lock:
            self._failures += 1
            count = self._failures
            if self.window is not None:
                now = self._timer()
                times = self._times
                times.append(now)
                while times and times[0] <= now - self.window:
                    times.popleft()
                count = len(times)
            if self._state is BreakerState.HALF_OPEN or count >= self.threshold:
                if self._state is not BreakerState.OPEN or self.window is None:
                    opened = self._open()
                self._times.clear()
        if opened:
            within = (
                "consecutive failures"
                if self.window is None
                else f"failures within {self.window:.2f} s"
            )
            logger.warning(
                "circuit breaker of the %s opened after %d %s%s: %s and one probe is let "
                "through every %.2f s",
                self.name,
                self.threshold,
                within,
                "" if cause is None else f" (last: {cause})",
                self._effect,
                self.cooldown,
            )


_SEVERITY = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class NodeBreakers:
    """The breakers of a Redis Cluster: one :class:`CircuitBreaker` per master (by node
    name, made on first use), plus ``whole`` for calls that span several masters or whose
    failing master cannot be told.

    One breaker for the whole cluster would let one paused master open it for every key
    (and a success on another master close it again at once, so calls to the paused one
    kept waiting for their timeout). Per master, keys on the masters that answer keep
    being served from Redis while the others fail fast.

    Parameters are those of :class:`CircuitBreaker`; each node's breaker is named
    ``"<name> node <host:port>"`` in the log lines and calls ``on_close`` when it closes.
    """

    __slots__ = ("_lock", "_make", "_nodes", "cooldown", "name", "threshold", "whole")

    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 1.0,
        *,
        timer: Callable[[], float] | None = None,
        name: str = "Redis",
        on_close: Callable[[], None] | None = None,
    ) -> None:
        def make(label: str) -> CircuitBreaker:
            return CircuitBreaker(threshold, cooldown, timer=timer, name=label, on_close=on_close)

        self.whole = make(name)
        self.threshold = threshold
        self.cooldown = float(cooldown)
        self.name = name
        self._make = make
        self._nodes: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def node(self, node_name: str) -> CircuitBreaker:
        """The breaker of the master ``node_name`` (``host:port``)."""
        breaker = self._nodes.get(node_name)
        if breaker is None:
            with self._lock:
                breaker = self._nodes.get(node_name)
                if breaker is None:
                    breaker = self._make(f"{self.name} node {node_name}")
                    self._nodes = {**self._nodes, node_name: breaker}  # readers take no lock
        return breaker

    def nodes(self) -> dict[str, CircuitBreaker]:
        """The per-master breakers made so far, by node name."""
        return self._nodes

    @property
    def state(self) -> BreakerState:
        """The worst state of any of the breakers (open if one master is cut off)."""
        worst = self.whole.state
        for breaker in self._nodes.values():
            state = breaker.state
            if _SEVERITY[state] > _SEVERITY[worst]:
                worst = state
        return worst

    @property
    def opened(self) -> int:
        """How many times any of the breakers has opened."""
        return self.whole.opened + sum(b.opened for b in self._nodes.values())
