"""stratacache: a multi-tier cache — compiled in-process L1, Redis L2, single-flight."""

from __future__ import annotations

from ._sentinel import MISSING
from ._errors import (
    CorruptEntryError,
    InvalidKeyError,
    SerializationError,
    StratacacheError,
    ValueTooLargeError,
)

__version__ = "0.1.0"

__all__ = [
    "CorruptEntryError",
    "InvalidKeyError",
    "MISSING",
    "SerializationError",
    "StratacacheError",
    "ValueTooLargeError",
    "__version__",
]
