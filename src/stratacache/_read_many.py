"""Picks the per-key loops of ``get_many``: compiled when available, else the pure-Python
spec (``_read_many_py``), by the same switch as the L1 (``_l1.py``).

``STRATACACHE_NO_EXTENSIONS=1`` (read in ``_compat``) forces the pure one; type checkers
always see the pure one, which is the specification of both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._compat import NO_EXTENSIONS
from ._read_many_py import BatchOutcome, BatchRules

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._read_many_py import l1_pass, read_many
else:
    try:
        from ._read_many_c import l1_pass, read_many
    except ImportError:  # pragma: no cover - source checkout without a build
        from ._read_many_py import l1_pass, read_many

__all__ = ["BatchOutcome", "BatchRules", "l1_pass", "read_many"]
