"""Test helpers: real ``redis-server`` processes (standalone and cluster) with fault controls.

``stratacache.testing.pytest_plugin`` wires them into pytest fixtures; add
``pytest_plugins = ["stratacache.testing.pytest_plugin"]`` to a ``conftest.py`` to reuse
them in your own suite. ``stratacache.testing.chaos`` is the chaos checker: worker
processes on one namespace, a SQLite system of record, injected Redis faults, and a
verdict on every read (``python benchmarks/consistency_report.py``, ``make chaos``).
"""

from __future__ import annotations

from ._servers import (
    RedisClusterProcesses,
    RedisServerError,
    RedisServerProcess,
    TLSCertificates,
    free_port,
)

__all__ = [
    "RedisClusterProcesses",
    "RedisServerError",
    "RedisServerProcess",
    "TLSCertificates",
    "free_port",
]
