"""Shared fixtures: real Redis processes (see ``stratacache.testing``) and the build in use.

The Makefile runs the suite twice: with ``STRATACACHE_REQUIRE_EXTENSIONS=1`` (the compiled
L1 must be the one loaded; a missing extension is a failure) and with
``STRATACACHE_NO_EXTENSIONS=1`` (the pure-Python L1).
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["stratacache.testing.pytest_plugin"]

REQUIRE_EXTENSIONS = bool(os.environ.get("STRATACACHE_REQUIRE_EXTENSIONS"))


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
