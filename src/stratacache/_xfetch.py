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

**The variant stratacache runs: one draw per entry and process.** Testing every read
costs a uniform draw and a logarithm per hit. Instead, when a process notes an entry
(fills it, reads it from L2, refreshes it) it draws ``U`` once and keeps
``lead = delta * -ln(U)`` (:func:`draw_lead`); a hit with ``beta`` then only compares the
clock with the entry's *refresh time*

    T = expiry - beta * lead = expiry + delta * beta * ln(U)

and refreshes when ``now >= T``. The law of ``T`` is the per-read test's at any one
instant: ``P(T <= t) = P(-ln U >= (expiry - t) / (delta * beta))
= exp(-(expiry - t) / (delta * beta))`` for ``t <= expiry`` (1 after), exactly the chance
that a single read at ``t`` passes the per-read test. What differs is the *fleet* law:
per-read, every read is a new chance, so a key read ``n`` times in the last load times
before expiry refreshes roughly ``delta * beta * ln(n)`` early (hot keys very early);
per entry, each process holding the entry has one chance, and the fleet refreshes at
the earliest of its ``P`` processes' times: ``expiry - delta * beta * max(X_1..X_P)``,
``X_i`` exponential (mean lead ``delta * beta * H_P``, ``H_P`` the harmonic number: 1
load time for one process, 2.08 for 4). The chance that no process starts a full load
time before expiry (some reads then wait at expiry for that refresh, through the lease)
is ``(1 - exp(-1/beta)) ** P``: 0.63 for one process, 0.16 for four at ``beta = 1``;
``beta = 2`` makes it 0.39 / 0.024. Reads cost no draw; the refresh time of a key does
not depend on how often it is read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

__all__ = ["draw_lead", "early_beta", "should_refresh"]

DEFAULT_BETA = 1.0


def draw_lead(rand: Callable[[], float]) -> float:
    """One entry's XFetch draw ``-ln(U)`` (exponential, mean 1): the entry is refreshed
    from ``expiry - delta * beta * draw_lead`` on. A draw of 0 gives ``inf`` (refresh
    at once), the ``ln(0)`` of the per-read test."""
    r = rand()
    if r <= 0.0:
        return math.inf
    return -math.log(r)


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
    """XFetch's per-read test (see the module notes; the cache draws per entry, with
    :func:`draw_lead`); ``expiry=None`` (never expires) is False.

    ``rand`` returns a float in [0, 1); 0 is read as the smallest positive float (it
    would be ``ln(0) = -inf``: refresh now)."""
    if expiry is None or delta <= 0.0:
        return False
    r = rand()
    if r <= 0.0:
        return True
    return now - delta * beta * math.log(r) >= expiry
