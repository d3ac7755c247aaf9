"""``MISSING``: the one "not there" marker, so that ``None`` can be cached."""

from __future__ import annotations

import enum
from typing import Final, Literal


class _Missing(enum.Enum):
    """Type of :data:`MISSING` (an enum, so type checkers can narrow on it)."""

    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "stratacache.MISSING"

    def __bool__(self) -> Literal[False]:
        return False


MISSING: Final = _Missing.MISSING
"""Returned (or accepted as a default) where ``None`` would be ambiguous."""

MissingType = Literal[_Missing.MISSING]
