"""The window mode of ``CircuitBreaker`` (the loader's breaker) and the option checks of
``_loader.py``: pure code on an injected clock."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from stratacache import MISSING, BreakerState, CacheStats, CircuitBreaker
from stratacache._health import judge
from stratacache._loader import LoaderBreakerSettings, LoaderLimits, limits_for

from concurrency import FakeClock


def loader_breaker(clock: FakeClock, threshold: int = 3) -> CircuitBreaker:
    return CircuitBreaker(
        threshold, 5.0, timer=clock, name="loader", window=10.0, effect="no loader calls"
    )


def test_failures_count_within_the_window_whatever_succeeds_between() -> None:
    clock = FakeClock()
    breaker = loader_breaker(clock)
    breaker.record_failure("a")
    breaker.record_success()  # does not forget the failure (unlike the consecutive mode)
    clock.advance(4)
    breaker.record_failure("b")
    clock.advance(7)  # the first failure leaves the window
    breaker.record_failure("c")
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure("d")
    assert breaker.state is BreakerState.OPEN
    assert breaker.opened == 1


def test_only_the_probe_closes_it_and_one_probe_at_a_time() -> None:
    clock = FakeClock()
    breaker = loader_breaker(clock, threshold=1)
    breaker.record_failure("down")
    assert not breaker.allow()
    breaker.record_success()  # a call that started before it opened: not a probe
    assert breaker.state is BreakerState.OPEN
    clock.advance(5)
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # a second caller meanwhile
    breaker.abandon()  # the probe was cancelled: another may go
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()


def test_a_late_failure_while_open_does_not_restart_the_cooldown() -> None:
    clock = FakeClock()
    breaker = loader_breaker(clock, threshold=1)
    breaker.record_failure("down")
    clock.advance(4)
    breaker.record_failure("a slow call that started before it opened")
    clock.advance(1)
    assert breaker.allow()


def test_the_log_lines_name_the_cause_and_the_effect(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    breaker = loader_breaker(clock, threshold=1)
    with caplog.at_level(logging.INFO, logger="stratacache.breaker"):
        breaker.record_failure("ConnectionError: db down")
        clock.advance(5)
        assert breaker.allow()
        breaker.record_success()
    warning, info = caplog.records
    assert warning.levelno == logging.WARNING
    assert "1 failures within 10.00 s" in warning.getMessage()
    assert "ConnectionError: db down" in warning.getMessage()
    assert "no loader calls" in warning.getMessage()
    assert info.levelno == logging.INFO and "closed" in info.getMessage()


def test_the_consecutive_mode_is_unchanged() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(2, 1.0, timer=clock)
    breaker.record_failure()
    breaker.record_success()  # resets the count
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    breaker.record_success()  # any success closes it in this mode
    assert breaker.state is BreakerState.CLOSED


def test_options() -> None:
    assert LoaderLimits.build(None, None) is None
    assert LoaderLimits.build(0, 1) == LoaderLimits(0.0, 1.0)
    with pytest.raises(ValueError):
        LoaderLimits.build(2, 1)
    with pytest.raises(ValueError):
        CircuitBreaker(1, 1.0, window=0)
    cache_limits = LoaderLimits.build(0.1, 1)
    assert limits_for(cache_limits, MISSING, MISSING) is cache_limits
    assert limits_for(cache_limits, None, MISSING) == LoaderLimits(None, 1.0)
    assert limits_for(cache_limits, None, None) is None
    assert limits_for(None, MISSING, 2) == LoaderLimits(None, 2.0)
    assert LoaderBreakerSettings.build(None, 10, 5) is None
    with pytest.raises(ValueError, match="loader_breaker_window"):
        LoaderBreakerSettings.build(3, 0, 5)
    with pytest.raises(ValueError, match="loader_breaker_threshold"):
        LoaderBreakerSettings.build(True, 10, 5)


def test_an_open_loader_breaker_makes_the_cache_degraded() -> None:
    def health(state: str) -> Any:
        return judge(CacheStats(loader_breaker_state=state), has_redis=False, redis_answers=True)

    assert health("off").status == "ok"
    assert health("closed").status == "ok"
    opened = health("open")
    assert opened.status == "degraded"
    assert opened.reasons == ("loader breaker open",)
    assert health("half_open").status == "degraded"
