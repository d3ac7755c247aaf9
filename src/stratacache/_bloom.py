"""Bloom filters kept in Redis: sizing, hashing, bit positions, the Lua scripts and the
bookkeeping of adds waiting for Redis. Written once for both halves (no I/O); the Redis
side is ``_async/bloom.py``.

Design notes
------------
* **Sizing** (standard formulas): for ``n`` items at false-positive rate ``p`` the
  filter has ``m = ceil(-n ln p / (ln 2)^2)`` bits and ``k = round(m / n * ln 2)`` hash
  functions (at least 1). The bits are split into ``shards`` equal bit arrays of
  ``ceil(m / shards)`` bits; each item belongs to one shard, so its ``k`` bits are in one
  Redis key (one script, one round trip), and a large filter spreads over the masters of
  a cluster. A shard holds at most 2^32 bits (a Redis string's limit).
* **Hashing**: BLAKE2b (stable across processes and versions, unlike ``hash()``) of the
  item's bytes gives three 64-bit numbers: ``h3`` picks the shard, ``h1`` and ``h2``
  give the bit positions by double hashing (Kirsch and Mitzenmacher, "Less hashing, same
  performance", 2006): ``g_i = (h1 + i * h2) mod m_shard`` for ``i < k``. The shard comes
  from a hash of its own so that which shard an item is in says nothing of its bits.
  Items are ``str`` (UTF-8), ``bytes`` or ``int`` (its decimal text): ``42``, ``"42"``
  and ``b"42"`` are one item, so an id read from a URL finds the id added as an int.
* **Generations and the state key.** Each shard has a state key and two bit arrays,
  ``a`` and ``b`` (``KeySpace.bloom_keys``). The state says which array is current,
  which one is being built by a rebuild (and that rebuild's token), whether adds were
  lost, and the filter's parameters. Every script reads it in the same atomic step as
  the bits, so no instance works from a stale idea of it: an add made while a rebuild
  runs sets its bits in both arrays; a rebuild's own adds go to the building array only;
  the switch makes the building array current and deletes the old one, in one step per
  shard. An item lives in one shard, so per-shard atomicity is atomicity per item: no
  read ever meets a half-built array.
* **Fail open.** A shard with no state (never built, or Redis lost its data), a shard
  marked as having lost adds, or Redis not answering all read as "maybe" (``True``):
  a wrong "maybe" costs a loader call, a wrong "absent" answers "not found" for
  something that exists. A shard is given a state only by ``rebuild()``; an add never
  creates one, so an add after Redis lost its data cannot make a near-empty array look
  authoritative.
* **Adds are not lost to a fault.** An add that Redis did not take waits in
  :class:`PendingAdds` and is sent again until it lands (setting bits is idempotent and
  commutative: order and repeats do not matter). Meanwhile this instance answers "maybe"
  for it. Past ``maxsize`` waiting items the rest cannot be kept: every shard is then
  marked as having lost adds (all instances answer "maybe") once Redis answers, until a
  rebuild whose source covers them. A crash loses what was waiting (as the outbox does):
  rebuild periodically from the system of record if that matters.
"""

from __future__ import annotations

import hashlib
import math
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Union

from ._errors import InvalidBloomParameters

__all__ = [
    "ABORT",
    "ADD",
    "BEGIN",
    "CHECK",
    "MARK_LOST",
    "MAX_SHARD_BITS",
    "SNAPSHOT",
    "SWITCH",
    "BloomParams",
    "Item",
    "PendingAdds",
    "bit_is_set",
    "item_bytes",
    "pack_hashes",
]

Item = Union[str, bytes, int]

MAX_SHARD_BITS = 2**32
"""Most bits in one shard (a Redis string holds at most 512 MiB)."""
DEFAULT_SHARD_BITS = 2**26
"""Bits per shard when ``shards`` is not given (8 MiB: a SETBIT that grows a string
allocates up to there at once, and a bigger value moves slowly in a cluster reshard)."""
MAX_SHARDS = 4096

_LN2 = math.log(2)
_MASK64 = (1 << 64) - 1


def item_bytes(item: object) -> bytes:
    """The bytes an item is hashed as (see the module notes); ``TypeError`` otherwise."""
    if isinstance(item, str):
        return item.encode("utf-8", "surrogatepass")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, int) and not isinstance(item, bool):
        return str(int(item)).encode("ascii")
    raise TypeError(f"a Bloom filter item is a str, bytes or int, not {type(item).__name__}")


@dataclass(frozen=True)
class BloomParams:
    """The shape of a Bloom filter, derived from its capacity and error rate."""

    capacity: int
    error_rate: float
    bits: int
    """``m``: bits over all shards (``shards * shard_bits``)."""
    hashes: int
    """``k``: bits set per item."""
    shards: int
    shard_bits: int

    @classmethod
    def build(cls, capacity: object, error_rate: object, shards: object = None) -> BloomParams:
        """Size a filter for ``capacity`` items at ``error_rate`` false positives;
        :class:`InvalidBloomParameters` for a capacity that is not an int >= 1, an error
        rate outside (0, 1), or a shard count that is not an int in 1..4096."""
        if type(capacity) is not int or capacity < 1:
            raise InvalidBloomParameters(f"capacity must be an int >= 1, got {capacity!r}")
        if isinstance(error_rate, bool) or not isinstance(error_rate, (int, float)):
            raise InvalidBloomParameters(
                f"error_rate must be a float in (0, 1), got {error_rate!r}"
            )
        p = float(error_rate)
        if not 0.0 < p < 1.0:  # NaN fails this too
            raise InvalidBloomParameters(
                f"error_rate must be a float in (0, 1), got {error_rate!r}"
            )
        m = max(8, math.ceil(-capacity * math.log(p) / (_LN2 * _LN2)))
        k = max(1, round(m / capacity * _LN2))
        if shards is None:
            count = max(1, math.ceil(m / DEFAULT_SHARD_BITS))
        elif type(shards) is not int or not 1 <= shards <= MAX_SHARDS:
            raise InvalidBloomParameters(
                f"shards must be an int in 1..{MAX_SHARDS}, got {shards!r}"
            )
        else:
            count = shards
        per_shard = math.ceil(m / count)
        if per_shard > MAX_SHARD_BITS:
            raise InvalidBloomParameters(
                f"{m} bits in {count} shard(s) is more than {MAX_SHARD_BITS} bits per "
                "shard (a Redis string's limit): use more shards"
            )
        if count > MAX_SHARDS:
            raise InvalidBloomParameters(
                f"capacity {capacity} at error rate {p} needs {m} bits, more than "
                f"{MAX_SHARDS} shards of {DEFAULT_SHARD_BITS} bits"
            )
        return cls(capacity, p, per_shard * count, k, count, per_shard)

    @property
    def signature(self) -> str:
        """What the state key records of the shape (checked by every script): two
        instances that disagree on it would read each other's bits in the wrong places."""
        return f"v1,m={self.shard_bits},k={self.hashes},s={self.shards}"

    def locate(self, item: object) -> tuple[int, int, int]:
        """The shard of ``item`` and its two hashes ``h1``, ``h2`` (its bit positions in
        that shard are :meth:`positions` of them; the scripts compute the same)."""
        digest = int.from_bytes(
            hashlib.blake2b(item_bytes(item), digest_size=24).digest(), "little"
        )
        m = self.shard_bits
        h2 = ((digest >> 64) & _MASK64) % m
        # h2 = 0 would put all k bits in one place
        return (digest >> 128) % self.shards, (digest & _MASK64) % m, h2 or 1

    def positions(self, h1: int, h2: int) -> list[int]:
        """The ``k`` bit positions of an item with hashes ``h1``, ``h2`` (double hashing)."""
        m = self.shard_bits
        return [(h1 + i * h2) % m for i in range(self.hashes)]

    def expected_error_rate(self, items: int) -> float:
        """The false-positive rate to expect with ``items`` items added
        (``(1 - e^(-k n / m))^k``)."""
        return float((1.0 - math.exp(-self.hashes * items / self.bits)) ** self.hashes)

    def estimate_items(self, bits_set: int) -> float:
        """How many items a filter with ``bits_set`` bits set holds (Swamidass and Baldi:
        ``-(m / k) ln(1 - X / m)``; infinite when every bit is set)."""
        if bits_set >= self.bits:
            return math.inf
        return -(self.bits / self.hashes) * math.log(1.0 - bits_set / self.bits)


def pack_hashes(hashes: Sequence[int]) -> bytes:
    """``h1, h2`` pairs as the scripts take them: little-endian 32-bit integers (every
    hash is below the shard's bit count, at most 2^32)."""
    return struct.pack(f"<{len(hashes)}I", *hashes)


def bit_is_set(bitmap: bytes, position: int) -> bool:
    """Whether bit ``position`` of a Redis string is 1 (bit 0 is the top bit of byte 0,
    as ``SETBIT`` numbers them); past the end it is 0."""
    index = position >> 3
    return index < len(bitmap) and bool(bitmap[index] & (0x80 >> (position & 7)))


# -- the scripts -------------------------------------------------------------------------
#
# KEYS of every script: the shard's state key, bit array a, bit array b (one slot).
# State: "cur|bld|token|lost|signature": cur / bld in "", "a", "b" (current array, array
# being built), token of the rebuild building it, lost = "" or a mark set when adds were
# lost. ARGV[1] is this instance's signature; a different stored one is an error reply
# starting "BLOOMPARAMS".

_PARSE = """
local function parse(state)
  local pattern = '^([ab]?)|([ab]?)|([^|]*)|([^|]*)|(.*)$'
  local cur, bld, tok, lost, sig = string.match(state, pattern)
  if cur == nil then
    return nil, redis.error_reply('BLOOMPARAMS unreadable state ' .. state)
  end
  if sig ~= ARGV[1] then
    return nil, redis.error_reply(
      'BLOOMPARAMS the filter in Redis has ' .. sig .. ', this instance ' .. ARGV[1])
  end
  return {cur = cur, bld = bld, tok = tok, lost = lost, sig = sig}
end
local array = {a = KEYS[2], b = KEYS[3]}
"""

ADD = (
    _PARSE
    + """
-- ARGV: signature, k, m, rebuild token ('' for an ordinary add), the items' h1, h2 pairs
-- (packed). Returns how many items had a bit still unset (-1: the shard has no state,
-- nothing set).
local raw = redis.call('GET', KEYS[1])
if not raw then return -1 end
local s, err = parse(raw)
if not s then return err end
local targets = {}
if ARGV[4] ~= '' then
  if s.tok ~= ARGV[4] or s.bld == '' then
    return redis.error_reply('BLOOMSUPERSEDED another rebuild of the filter began')
  end
  targets[1] = s.bld
else
  if s.cur ~= '' then targets[#targets + 1] = s.cur end
  if s.bld ~= '' then targets[#targets + 1] = s.bld end
end
local k, m, hashes = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[5]
local new = 0
for at = 1, #hashes, 8 do
  local h1, h2 = struct.unpack('<I4I4', hashes, at)
  local fresh = false
  for t = 1, #targets do
    local key = array[targets[t]]
    for i = 0, k - 1 do
      if redis.call('SETBIT', key, (h1 + i * h2) % m, 1) == 0 and t == 1 then fresh = true end
    end
  end
  if fresh then new = new + 1 end
end
return new
"""
)

CHECK = (
    _PARSE
    + """
-- ARGV: signature, k, m, the items' h1, h2 pairs (packed). Returns one answer per
-- item: 0 absent, 1 every bit set, 2 unknown (no state, not built, adds lost): "maybe".
local k, m, hashes = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local n = #hashes / 8
local out = {}
local raw = redis.call('GET', KEYS[1])
local s = nil
if raw then
  local err
  s, err = parse(raw)
  if not s then return err end
end
if s == nil or s.cur == '' or s.lost ~= '' then
  for i = 1, n do out[i] = 2 end
  return out
end
local key = array[s.cur]
for at = 1, #hashes, 8 do
  local h1, h2 = struct.unpack('<I4I4', hashes, at)
  local all = 1
  for i = 0, k - 1 do
    if redis.call('GETBIT', key, (h1 + i * h2) % m) == 0 then all = 0; break end
  end
  out[#out + 1] = all
end
return out
"""
)

BEGIN = (
    _PARSE
    + """
-- ARGV: signature, token. Empties the array that is not current and makes it the one
-- being built under this token (a rebuild already running is superseded). Returns the
-- lost mark as it is now (the switch clears only that one).
local raw = redis.call('GET', KEYS[1])
local cur, lost = '', ''
if raw then
  local s, err = parse(raw)
  if not s then return err end
  cur, lost = s.cur, s.lost
end
local bld = 'a'
if cur == 'a' then bld = 'b' end
redis.call('DEL', array[bld])
local state = cur .. '|' .. bld .. '|' .. ARGV[2] .. '|' .. lost .. '|' .. ARGV[1]
redis.call('SET', KEYS[1], state)
return lost
"""
)

SWITCH = (
    _PARSE
    + """
-- ARGV: signature, token, lost mark seen at the start. The built array becomes current,
-- the old one is deleted; a lost mark set since the start stays (the source may have
-- missed those adds).
local raw = redis.call('GET', KEYS[1])
if not raw then return redis.error_reply('BLOOMSUPERSEDED the filter state vanished') end
local s, err = parse(raw)
if not s then return err end
if s.tok ~= ARGV[2] or s.bld == '' then
  return redis.error_reply('BLOOMSUPERSEDED another rebuild of the filter began')
end
local lost = s.lost
if lost == ARGV[3] then lost = '' end
redis.call('SET', KEYS[1], s.bld .. '|||' .. lost .. '|' .. ARGV[1])
if s.cur ~= '' then redis.call('UNLINK', array[s.cur]) end
return 1
"""
)

ABORT = (
    _PARSE
    + """
-- ARGV: signature, token. A rebuild that failed: forget the array it was building.
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local s, err = parse(raw)
if not s then return err end
if s.tok ~= ARGV[2] or s.bld == '' then return 0 end
redis.call('SET', KEYS[1], s.cur .. '|||' .. s.lost .. '|' .. ARGV[1])
redis.call('UNLINK', array[s.bld])
return 1
"""
)

MARK_LOST = (
    _PARSE
    + """
-- ARGV: signature, mark. Adds were lost: the shard answers "maybe" until a rebuild.
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local s, err = parse(raw)
if not s then return err end
local state = s.cur .. '|' .. s.bld .. '|' .. s.tok .. '|' .. ARGV[2] .. '|' .. ARGV[1]
redis.call('SET', KEYS[1], state)
return 1
"""
)

SNAPSHOT = (
    _PARSE
    + """
-- ARGV: signature. The current array of the shard for a local copy:
-- {1, bits} or {0, ''} when the shard answers "maybe" for everything.
local raw = redis.call('GET', KEYS[1])
if not raw then return {0, ''} end
local s, err = parse(raw)
if not s then return err end
if s.cur == '' or s.lost ~= '' then return {0, ''} end
return {1, redis.call('GET', array[s.cur]) or ''}
"""
)

SCRIPTS: tuple[str, ...] = (ADD, CHECK, BEGIN, SWITCH, ABORT, MARK_LOST, SNAPSHOT)


# -- adds waiting for Redis ----------------------------------------------------------------


class PendingAdds:
    """Items whose add Redis has not taken yet (thread-safe; see the module notes).

    Parameters:
        maxsize: items kept; past it the rest are counted in :attr:`dropped` and a mark
            of lost adds is owed (:attr:`lost_owed`).
        backoff: pause before the first retry; doubles up to ``backoff_max``.
    """

    def __init__(self, maxsize: int, backoff: float, backoff_max: float) -> None:
        self._maxsize = maxsize
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._lock = threading.Lock()
        self._items: dict[bytes, None] = {}  # ordered: oldest first
        self._attempts = 0
        self.due = 0.0
        self.lost_owed = False
        """Adds were dropped: every shard must be marked, once Redis answers."""
        self.dropped = 0
        """Items dropped because the queue was full (since the start)."""
        self.applied = 0
        """Items that landed after waiting here (since the start)."""

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, data: object) -> bool:
        return data in self._items

    @property
    def active(self) -> bool:
        """Anything waiting or owed."""
        return bool(self._items) or self.lost_owed

    def failed(self, items: Sequence[bytes], now: float) -> int:
        """``items`` could not be sent: keep them (those that fit); how many were dropped."""
        dropped = 0
        with self._lock:
            for data in items:
                if data in self._items:
                    continue
                if len(self._items) >= self._maxsize:
                    dropped += 1
                    continue
                self._items[data] = None
            if dropped:
                self.dropped += dropped
                self.lost_owed = True
            self._attempts += 1
            self.due = now + min(self._backoff_max, self._backoff * 2 ** (self._attempts - 1))
        return dropped

    def take(self, limit: int = 10_000) -> list[bytes]:
        """Up to ``limit`` waiting items, oldest first (they stay waiting until
        :meth:`landed`)."""
        with self._lock:
            out = []
            for data in self._items:
                out.append(data)
                if len(out) >= limit:
                    break
            return out

    def landed(self, items: Iterable[bytes]) -> None:
        """``items`` reached Redis: forget them; the next retry is due at once."""
        with self._lock:
            for data in items:
                if self._items.pop(data, 0) is None:
                    self.applied += 1
            self._attempts = 0
            self.due = 0.0

    def lost_marked(self) -> None:
        """The mark of lost adds reached every shard."""
        with self._lock:
            self.lost_owed = False

    def after_fork(self) -> None:
        """In a forked child: a new lock (the parent's may have been held at the fork)."""
        self._lock = threading.Lock()

    def give_up(self) -> int:
        """Forget everything waiting (on close, Redis still away); how many items."""
        with self._lock:
            count = len(self._items)
            self._items.clear()
            self.dropped += count
            return count
