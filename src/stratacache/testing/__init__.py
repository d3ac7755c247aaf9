"""Test helpers: real ``redis-server`` processes (standalone and cluster) with fault controls.

``stratacache.testing.pytest_plugin`` wires them into pytest fixtures; add
``pytest_plugins = ["stratacache.testing.pytest_plugin"]`` to a ``conftest.py`` to reuse
them in your own suite.
"""

from __future__ import annotations

from ._servers import RedisClusterProcesses, RedisServerError, RedisServerProcess, free_port

__all__ = ["RedisClusterProcesses", "RedisServerError", "RedisServerProcess", "free_port"]
