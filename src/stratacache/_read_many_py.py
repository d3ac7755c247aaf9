"""The per-key loops of ``get_many``, in pure Python: the specification of the compiled
``_read_many_c`` (``cython_ext/_read_many_c.pyx``); both pass ``tests/test_read_many.py``.
``_read_many`` picks one.

:func:`l1_pass` is the first loop: the values L1 has, and the keys it has not
(validated). :func:`read_many` is the loop after the ``MGET`` of those:

For each key L1 did not have, with the blob ``MGET`` returned for it: decode the envelope
(bad bytes are a miss and a decode error, never an exception), withhold it by the
batch's rules (see :class:`BatchRules`), check its tag versions and epoch against the
versions this instance knows, then install it into L1 through the ticket taken before
the ``MGET`` (and into the fail-safe store) for what remains of its life, and add it to
``found``. An entry whose versions are not all known is *unsure*: its ticket stays out
and it is handed back to the caller, who reads the versions from Redis (an ``await``)
and installs or releases it.

Every ticket of a decided key is given back here exactly once (installed or released),
whatever happens: if an install raises (a weigher's error), the tickets of the keys not
reached yet, and of the unsure ones gathered so far, are released before the error
propagates.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable, NamedTuple, Optional

from ._codec import Codec, Entry
from ._keys import validate_key
from ._l1_py import L1
from ._sentinel import MISSING
from ._tags import check_versions

__all__ = ["BatchOutcome", "BatchRules", "l1_pass", "read_many"]


def l1_pass(l1: L1, keys: Iterable[str], found: dict[str, Any]) -> list[str]:
    """Add to ``found`` the values L1 holds for ``keys``; the others, in order, each
    checked by ``validate_key`` (a key L1 served is not checked: only a valid key can
    be in it). A key not in L1 is listed as often as it comes."""
    missing: list[str] = []
    for key in keys:
        value = l1.get(key, MISSING)
        if value is not MISSING:
            found[key] = value
        elif key not in found:
            missing.append(validate_key(key))
    return missing


class BatchRules(NamedTuple):
    """What decides, for a whole batch, whether a decoded L2 entry may be served; each
    computed once per batch by the read path rather than once per key."""

    known: Optional[dict[Optional[str], int]]
    """The table of tag versions (the epoch under ``None``) this instance trusts
    (``TagVersions.table``); ``None`` when it is not trusted (every entry is unsure)."""
    withhold_before: float
    """Entries created (wall clock) before this are withheld: the bus was deaf lately
    (``-inf`` when it was not)."""
    blocks: Optional[Callable[[str, tuple[str, ...]], bool]]
    """``blocks(key, tags)``: this instance has a pending write the entry may predate
    (``None`` when no write is pending)."""


class BatchOutcome(NamedTuple):
    hits: int
    """Entries served (added to ``found``), refused by the L1 guard or not."""
    decode_errors: int
    refused: int
    """Entries the L1 guard refused (an invalidation since the ticket was taken)."""
    unsure: list[tuple[int, Entry]]
    """(index in ``keys``, entry) of the valid, unexpired entries whose tag versions must
    be read from Redis; their tickets are still out."""


def read_many(
    keys: list[str],
    blobs: list[Optional[bytes]],
    tickets: list[int],
    codec: Codec,
    rules: BatchRules,
    l1: L1,
    l1_open: bool,
    now: float,
    max_ttl: float,
    stale: Optional[L1],
    stale_margin: float,
    found: dict[str, Any],
) -> BatchOutcome:
    """Decode, check and install the blobs of ``keys`` (see the module notes).

    ``l1``: the L1 the tickets are from; ``l1_open``: False while it takes no new
    entries (the tickets are then released, the values still served). ``now``: the wall clock;
    ``max_ttl``: the longest L1 life (also the life of an entry without expiry);
    ``stale``: the fail-safe store (entries kept there ``stale_margin`` seconds longer),
    or ``None``."""
    if len(blobs) != len(keys) or len(tickets) != len(keys):
        raise ValueError("keys, blobs and tickets must have the same length")
    hits = decode_errors = refused = 0
    unsure: list[tuple[int, Entry]] = []
    known, withhold_before, blocks = rules
    i = 0
    n = len(keys)
    try:
        while i < n:
            key = keys[i]
            ticket = tickets[i]
            blob = blobs[i]
            i += 1
            if blob is None:
                l1.release(ticket, key)
                continue
            try:
                entry = codec.decode(key, blob)
            except Exception:
                decode_errors += 1
                l1.release(ticket, key)
                continue
            if entry.created_at < withhold_before or (
                blocks is not None and blocks(key, entry.tags)
            ):
                l1.release(ticket, key)
                continue
            expires_at = entry.expires_at
            if expires_at is not None and expires_at <= now:
                l1.release(ticket, key)
                continue
            ok = None if known is None else check_versions(known, entry)
            if ok is None:
                unsure.append((i - 1, entry))
                continue
            if not ok:
                l1.release(ticket, key)
                continue
            hits += 1
            value = entry.value
            found[key] = value
            if not l1_open:
                l1.release(ticket, key)
                continue
            remaining = max_ttl if expires_at is None else expires_at - now
            if l1.install(ticket, key, value, min(remaining, max_ttl), entry.tags):
                if stale is not None:
                    stale.set(key, value, remaining + stale_margin, entry.tags)
            else:
                refused += 1
    except BaseException:
        for j in range(i, n):
            l1.release(tickets[j], keys[j])
        for j, _ in unsure:
            l1.release(tickets[j], keys[j])
        raise
    return BatchOutcome(hits, decode_errors, refused, unsure)
