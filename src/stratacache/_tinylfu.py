"""W-TinyLFU's frequency sketch and its stable key hash, in pure Python.

The specification of what the compiled L1 does in C (``cython_ext/_l1_c.pyx``): the same
hash and the same counters, bit for bit, so that both L1s make identical admission
decisions (tests/test_l1_policy.py checks an exact hit count on a fixed trace).

Hash: 64-bit, stable across processes for ``str`` and ``bytes`` keys (Python's ``hash`` of
a ``str`` is randomised per process). A ``str`` whose code points are all < 256 (CPython's
one-byte kind) and a ``bytes`` key are mixed eight bytes at a time, little-endian; a wider
``str`` one code point at a time; any other key mixes ``hash(key)`` (stable for ``int``).

Sketch: a count-min sketch of 4-bit counters, eight per entry (``maxsize`` rounded up to a
power of two, at least 16), packed two per byte (4 bytes per entry); a key's four counters
are at ``(h1 + k*h2) & mask`` for ``k`` in 0..3 (``h1``/``h2`` the low/high 32 bits of the
hash, ``h2`` made odd). An increment is conservative: only the counters equal to the
key's current minimum grow (visited in order k = 0..3, so a counter two indexes share
grows once). After ``SAMPLE_FACTOR * maxsize`` increments every counter is halved
(aging) and the sample count too. (Caffeine: 16 counters per entry, plain increments,
10x samples. On the Zipf 0.99 trace of ``benchmarks/l1_report.py --hit-ratio``, pure spec:
Caffeine's settings 76.9 %; 8 counters + conservative: 10x 76.9 %, 20x 77.2 %, 40x 77.4 %,
80x 77.7 % (theine 77.5 %). A longer period adapts more slowly to a popularity shift.)
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final

__all__ = ["COUNTERS_PER_ENTRY", "SAMPLE_FACTOR", "SKETCH_CAP", "FrequencySketch", "stable_hash"]

_MASK: Final = (1 << 64) - 1
_SEED: Final = 0x9E3779B97F4A7C15
_MUL: Final = 0xFF51AFD7ED558CCD
_FIN: Final = 0xC4CEB9FE1A85EC53
SKETCH_CAP: Final = 1 << 24  # the sketch is sized for at most this many entries
COUNTERS_PER_ENTRY: Final = 8
SAMPLE_FACTOR: Final = 80
_HALVE: Final = bytes((b >> 1) & 0x77 for b in range(256))


def _mix(h: int, c: int) -> int:
    h = ((h ^ c) * _MUL) & _MASK
    return h ^ (h >> 29)


def _mix_bytes(h: int, data: bytes) -> int:
    for i in range(0, len(data), 8):
        h = _mix(h, int.from_bytes(data[i : i + 8], "little"))
    return h


def stable_hash(key: Hashable) -> int:
    """A 64-bit hash of ``key``, the same in every process for ``str``/``bytes``/``int``."""
    h = _SEED
    if type(key) is str:
        h ^= len(key)
        try:
            h = _mix_bytes(h, key.encode("latin-1"))
        except UnicodeEncodeError:  # a code point >= 256: one at a time
            for ch in key:
                h = _mix(h, ord(ch))
    elif type(key) is bytes:
        h = _mix_bytes(h ^ len(key), key)
    else:
        h = _mix(h, hash(key) & _MASK)
    h ^= h >> 33
    h = (h * _FIN) & _MASK
    return h ^ (h >> 33)


class FrequencySketch:
    """Approximate access counts (0..15) of recently seen keys, with aging."""

    __slots__ = ("_mask", "_sample_size", "_samples", "_table")

    def __init__(self, maxsize: int) -> None:
        sized = min(maxsize, SKETCH_CAP)
        width = 16
        while width < sized:
            width <<= 1
        width *= COUNTERS_PER_ENTRY
        self._table = bytearray(width // 2)
        self._mask = width - 1
        self._sample_size = SAMPLE_FACTOR * sized
        self._samples = 0

    def _indexes(self, h: int) -> tuple[int, int, int, int]:
        h1 = h & 0xFFFFFFFF
        h2 = (h >> 32) | 1
        mask = self._mask
        return (h1 & mask, (h1 + h2) & mask, (h1 + 2 * h2) & mask, (h1 + 3 * h2) & mask)

    def increment(self, h: int) -> None:
        """Count one access of the key hashed to ``h``."""
        table = self._table
        indexes = self._indexes(h)
        least = min((table[i >> 1] >> ((i & 1) * 4)) & 15 for i in indexes)
        if least < 15:
            for i in indexes:
                b = table[i >> 1]
                shift = (i & 1) * 4
                if (b >> shift) & 15 == least:
                    table[i >> 1] = b + (1 << shift)
        self._samples += 1
        if self._samples >= self._sample_size:
            self._table = table.translate(_HALVE)
            self._samples //= 2

    def frequency(self, h: int) -> int:
        """The estimated access count of the key hashed to ``h``."""
        table = self._table
        return min((table[i >> 1] >> ((i & 1) * 4)) & 15 for i in self._indexes(h))
