"""Picks the L1 implementation: compiled when available, else the pure-Python spec.

``STRATACACHE_NO_EXTENSIONS=1`` (read in ``_compat``) forces the pure one; type checkers
always see the pure one, which is the specification of both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._compat import NO_EXTENSIONS

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._l1_py import L1
else:
    try:
        from ._l1_c import L1
    except ImportError:  # pragma: no cover - source checkout without a build
        from ._l1_py import L1

__all__ = ["L1"]
