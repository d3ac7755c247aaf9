"""Copy on read (no I/O): what a cache with ``copy_on_read`` hands out instead of the
live object its L1 holds.

L1 keeps live objects, so by default every reader of a key gets *the same* object: a
caller that mutates a cached dict changes it for every later reader in the process.
With ``copy_on_read`` each read returns a deep copy. The copy is a msgpack round trip
through the cache's codec (the value as an L2 hit would return it: same types), which
measured faster than ``copy.deepcopy`` for JSON-like values (see
``benchmarks/copy_on_read_report.py``); a value the codec cannot encode (an L1-only cache
may hold anything) is copied with ``copy.deepcopy`` instead.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from ._codec import Codec
from ._errors import SerializationError

__all__ = ["copy_option", "make_copier"]

_IMMUTABLE: frozenset[type] = frozenset({str, int, float, bool, type(None), bytes})


def make_copier(codec: Codec) -> Callable[[Any], Any]:
    """``copy(value)``: the codec's round trip, else ``copy.deepcopy``."""
    round_trip = codec.copy_value
    deepcopy = copy.deepcopy
    immutable = _IMMUTABLE

    def copy_value(value: Any) -> Any:
        if type(value) in immutable:
            return value
        try:
            return round_trip(value)
        except SerializationError:
            return deepcopy(value)

    return copy_value


def copy_option(option: object, name: str = "copy_on_read") -> bool:
    """``copy_on_read`` as a bool; ``TypeError`` for anything else."""
    if type(option) is not bool:
        raise TypeError(f"{name} must be True or False, not {option!r}")
    return option
