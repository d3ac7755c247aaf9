"""Helpers for the L1 tests: load an implementation by id (``c`` compiled, ``py`` pure).

Each test module declares ``@pytest.fixture(params=IMPL_IDS) def l1_impl`` with
``load_l1`` (tests/conftest.py belongs to the harness).

In the compiled run a missing extension is an import error, i.e. a failure. Only the pure
run (``STRATACACHE_NO_EXTENSIONS=1``, the documented switch) may skip the ``c`` id.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from stratacache._compat import NO_EXTENSIONS

IMPL_IDS = ("c", "py")


def load_l1(impl_id: str) -> Any:
    """The ``L1`` class for ``impl_id``."""
    if impl_id == "py":
        return importlib.import_module("stratacache._l1_py").L1
    if NO_EXTENSIONS:
        module = pytest.importorskip(
            "stratacache._l1_c", reason="pure run: STRATACACHE_NO_EXTENSIONS=1"
        )
        return module.L1
    return importlib.import_module("stratacache._l1_c").L1


class FakeClock:
    """An injectable monotonic timer that only moves when told to; counts its reads."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """An ``on_evict`` listener that records ``(key, value, cause)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any, str]] = []

    def __call__(self, key: Any, value: Any, cause: str) -> None:
        self.calls.append((key, value, cause))
