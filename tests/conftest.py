"""Shared fixtures: real Redis processes (see ``stratacache.testing``)."""

from __future__ import annotations

pytest_plugins = ["stratacache.testing.pytest_plugin"]
