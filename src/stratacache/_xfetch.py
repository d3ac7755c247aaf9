"""Early refresh by XFetch (no I/O): whether a read should recompute a value before it
expires, so that a hot key is reloaded once, in the background, instead of stampeding
(or making one unlucky caller wait for the loader) at expiry.

The rule is Vattani, Chierichetti and Lowenstein, "Optimal Probabilistic Cache Stampede
Prevention", VLDB 2015: a read at ``now`` of an entry that expires at ``expiry`` and took
``delta`` seconds to compute recomputes early when

    now - delta * beta * ln(rand()) >= expiry,        rand() uniform in (0, 1]

``-ln(rand())`` is exponentially distributed (mean 1), so the chance grows smoothly as
expiry approaches and with the cost of the value: a read ``delta * beta * x`` seconds
before expiry refreshes with probability ``exp(-x)``. ``beta > 1`` refreshes earlier,
``beta < 1`` later; the paper proves ``beta = 1`` optimal for its model. With
``delta = 0`` (value of unknown cost, e.g. written by ``set``) the entry is never
refreshed early.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

__all__ = ["early_beta", "should_refresh"]

DEFAULT_BETA = 1.0
MAX_DRAW = 37.0
"""-ln of the smallest nonzero ``random.random()`` (2**-53) is 36.7: with that generator, a
read more than ``MAX_DRAW * delta * beta`` before expiry never refreshes."""


def early_beta(option: object, name: str = "early_refresh") -> Optional[float]:
    """The ``beta`` an ``early_refresh`` option asks for: ``True`` -> 1.0, a float > 0 ->
    itself, ``False`` -> None (off). ``None`` is not accepted here: the caller resolves
    it to its default first. ``TypeError``/``ValueError`` for anything else."""
    if option is True:
        return DEFAULT_BETA
    if option is False:
        return None
    if isinstance(option, (int, float)) and not isinstance(option, bool):
        beta = float(option)
        if not (beta > 0.0 and math.isfinite(beta)):
            raise ValueError(f"{name} must be True, False or a finite beta > 0, got {option!r}")
        return beta
    raise TypeError(f"{name} must be True, False or a float beta, not {option!r}")


def should_refresh(
    now: float,
    expiry: Optional[float],
    delta: float,
    beta: float,
    rand: Callable[[], float],
) -> bool:
    """XFetch's test (see the module notes); ``expiry=None`` (never expires) is False.

    ``rand`` returns a float in [0, 1); 0 is read as the smallest positive float (it
    would be ``ln(0) = -inf``: refresh now)."""
    if expiry is None or delta <= 0.0:
        return False
    r = rand()
    if r <= 0.0:
        return True
    return now - delta * beta * math.log(r) >= expiry
