"""Shared fixtures: real Redis processes (see ``stratacache.testing``) and the build in use.

The Makefile runs the suite twice: with ``STRATACACHE_REQUIRE_EXTENSIONS=1`` (the compiled
L1 must be the one loaded; a missing extension is a failure) and with
``STRATACACHE_NO_EXTENSIONS=1`` (the pure-Python L1).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis' default 200 ms deadline per example is a timing assertion: on this 2-CPU
# machine, beside redis-servers and the other run, a correct example can take longer.
# The properties are what the tests assert; how fast an example runs is the benchmarks'.
settings.register_profile(
    "stratacache", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("stratacache")

pytest_plugins = ["stratacache.testing.pytest_plugin"]

REQUIRE_EXTENSIONS = bool(os.environ.get("STRATACACHE_REQUIRE_EXTENSIONS"))
NO_EXTENSIONS = bool(os.environ.get("STRATACACHE_NO_EXTENSIONS"))

# Modules whose outcome cannot depend on the run's L1 switch: they build no L1 (the codec,
# key and Bloom-parameter maths, the outbox's bookkeeping, pure option logic, the docs, the
# generated code, the alert rules, the test harness), or they load both L1s by name
# (tests/l1_impls.py: the contract, stateful, policy and expiry-order suites run the
# compiled and the pure L1 side by side in every run). The pure run leaves them out: it
# would run the same code the compiled run just ran, for the same result.
SAME_IN_BOTH_RUNS = frozenset(
    {
        "test_alert_rules.py",
        "test_bloom_params.py",
        "test_codec.py",
        "test_docs.py",
        "test_harness.py",
        "test_keys.py",
        "test_l1_contract.py",
        "test_l1_expiry_order.py",
        "test_l1_policy.py",
        "test_l1_stateful.py",
        "test_loader_breaker.py",
        "test_outbox.py",
        "test_read_options_pure.py",
        "test_sync_generated.py",
        "test_warm_schedule_pure.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not NO_EXTENSIONS:
        return
    kept = [item for item in items if item.path.name not in SAME_IN_BOTH_RUNS]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.path.name in SAME_IN_BOTH_RUNS])
        items[:] = kept


def pytest_report_header() -> str:
    from stratacache import _l1
    from stratacache._compat import NO_EXTENSIONS

    build = "pure" if NO_EXTENSIONS else "compiled"
    return f"stratacache: {build} run, L1 = {_l1.L1.__module__}.{_l1.L1.__qualname__}"


@pytest.fixture(params=["standalone", "cluster"])
def target(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """``(url, is_cluster)`` of a flushed real Redis: a standalone server, then a cluster."""
    if request.param == "standalone":
        return request.getfixturevalue("redis_url"), False
    return request.getfixturevalue("redis_cluster_url"), True
