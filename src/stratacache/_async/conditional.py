"""Conditional writes of ``AsyncCache``: ``add`` (only if absent) and ``incr`` (read,
change, write back), atomic across processes.

Why compare-and-set and not ``SET NX`` / ``INCRBY``: an entry in Redis is a (possibly
signed) msgpack envelope, and whether it is *live* is decided by the reader (its expiry,
the namespace epoch, its tags' versions: an entry of an invalidated tag is still in Redis
for a while but is a miss). So both operations read the entry, decide here, and write back
with one Lua compare-and-set (``COMPARE_AND_SET``): the write lands only if the entry's
blob is still the one they decided on (or still absent). A concurrent writer makes the
script refuse; the operation then reads again and decides again. Every refusal means
another write succeeded, so the system as a whole always progresses; ``_ATTEMPTS`` only
bounds one caller's bad luck.

Both need Redis to answer: they raise :class:`RedisUnavailableError` when it does not
(a conditional write cannot be queued in the outbox: its result depends on what is there).
A successful one is an ordinary write afterwards: the key's pending outbox write is
cancelled, the bus tells every other instance, and L1 here holds the new value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._bus_messages import Action
from .._codec import Entry
from .._errors import RedisUnavailableError
from .._keys import validate_key
from .._options import Duration
from .._sentinel import MISSING
from .read_path import stamped_with

if TYPE_CHECKING:
    from .cache import AsyncCache

_ATTEMPTS = 1000


class AsyncConditionalWrites:
    """``add``/``incr`` of one cache (see the module notes)."""

    def __init__(self, cache: AsyncCache) -> None:
        self._cache = cache

    async def _live(self, key: str) -> tuple[bytes | None, Entry | None]:
        """The raw blob of ``key`` and its entry if it is live (else None), decided on
        Redis's word: :class:`RedisUnavailableError` if the tag versions cannot be read.

        Unlike a read, this does not withhold an entry written before a deaf spell of the
        bus. A read withholds it because another instance's outbox may still hold its
        deletion; but the compare-and-set that follows acts on what Redis holds now, and
        such a deletion lands after it, as if made after it. Withholding it made ``incr``
        raise ``KeyError`` for a live counter and ``add`` overwrite a live value. An
        entry this instance itself has a pending write for is absent (read-your-writes);
        a successful compare-and-set cancels that write (:meth:`_landed`)."""
        c = self._cache
        reads = c._reads
        tier = c._tier
        assert tier is not None
        blob = await tier.get(key)
        entry = reads._decode(key, blob)
        if entry is None or reads._expired(entry) or reads._pending_here(key, entry):
            return blob, None
        if reads._versions_trusted():
            ok = c._versions.check(entry)
            if ok is not None:
                return blob, entry if ok else None
        current = await tier.fetch_versions([None, *entry.tags])
        return blob, entry if stamped_with(entry, current) else None

    async def add(self, key: str, value: Any, ttl: Duration | None, tags: Iterable[str]) -> bool:
        """See :meth:`AsyncCache.add`."""
        c = self._cache
        validate_key(key)
        tag_tuple = c._tags(tags)
        ttl_s = c._positive_ttl(ttl)
        tier = c._tier
        if tier is None:
            c._encode_new(key, value, ttl_s, tag_tuple, None, c._clock())  # refuse bad values
            if c._l1.peek(key, MISSING) is not MISSING:
                return False
            c._writes._write_l1(key, value, ttl_s, tag_tuple)
            return True
        await c._bus_started()
        physical = c.settings.physical_ttl(ttl_s)
        for _ in range(_ATTEMPTS):
            blob, entry = await self._live(key)
            if entry is not None:
                return False
            stamps = await c._reads._stamps(tag_tuple)
            if stamps is None:
                raise RedisUnavailableError("tag versions unavailable: add() wrote nothing")
            new = c._encode_new(key, value, ttl_s, tag_tuple, stamps, c._clock())
            if await tier.compare_and_set(key, blob, new, physical, tag_tuple):
                await self._landed(key, value, ttl_s, tag_tuple)
                return True
        raise RedisUnavailableError(f"add({key!r}) lost {_ATTEMPTS} races in a row")

    async def incr(self, key: str, delta: int) -> int:
        """See :meth:`AsyncCache.incr`."""
        c = self._cache
        validate_key(key)
        if type(delta) is not int:
            raise TypeError(f"delta must be an int, not {type(delta).__name__}")
        tier = c._tier
        if tier is None:
            current = c._l1.peek(key, MISSING)
            if current is MISSING:
                raise KeyError(key)
            result = _added(current, delta)
            c._l1.set(key, result, ttl=c.settings.l1_max_ttl, tags=c._l1.tags_of(key))
            return result
        await c._bus_started()
        for _ in range(_ATTEMPTS):
            blob, entry = await self._live(key)
            if entry is None:
                raise KeyError(key)
            result = _added(entry.value, delta)
            now = c._clock()
            # the entry keeps its expiry, tags and stamps: only the value changes
            remaining = (
                c.settings.default_ttl if entry.expires_at is None else entry.expires_at - now
            )
            if remaining <= 0:
                raise KeyError(key)
            new = c._codec.encode(
                key,
                result,
                created_at=now,
                expires_at=now + remaining,
                tags=entry.tags,
                stamps=entry.stamps,
                epoch=entry.epoch,
            )
            physical = c.settings.physical_ttl(remaining)
            if await tier.compare_and_set(key, blob, new, physical):
                await self._landed(key, result, remaining, entry.tags)
                return result
        raise RedisUnavailableError(f"incr({key!r}) lost {_ATTEMPTS} races in a row")

    async def _landed(self, key: str, value: Any, ttl: float, tags: tuple[str, ...]) -> None:
        """After a successful compare-and-set: the same steps as a plain write."""
        c = self._cache
        c._invalidator.write_succeeded([key])
        await c._publish(Action.INVALIDATE_KEYS, (key,))
        c._writes._write_l1(key, value, ttl, tags)


def _added(value: Any, delta: int) -> int:
    """``value + delta`` for a cached int; ``TypeError`` for anything else (bool too)."""
    if type(value) is not int:
        raise TypeError(f"incr() needs an int value, the cached one is {type(value).__name__}")
    return value + delta
