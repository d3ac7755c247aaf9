"""The write path of ``AsyncCache``: ``set``, ``set_many``, ``delete`` and ``touch``.

The promise (docs/concepts/failures.md): once a write call returns, every instance of the
namespace serves the new state (the new value or a miss, never an older value) within the
propagation window after Redis answers again, whatever happened in between.

How each write keeps it:

1. Validate and encode first: bad input raises before anything is written.
2. Redis: the write (which also revokes the key's lease, so a fill that read the old
   value cannot land after it). If it fails or times out, the key gets a pending
   ``write`` in the outbox (``stratacache._outbox``): the key is deleted in Redis as soon
   as Redis answers, and until then this instance does not serve it from L2. A write
   that succeeds cancels the key's pending ``write`` (never before it has succeeded).
3. The bus message, so that every other instance drops its L1 copy; if it is lost, the
   receivers see a gap in this instance's sequence numbers and flush.
4. L1: the new value for ``set`` (through the bus-health guard), nothing for ``delete``.

With ``on_write_error="raise"`` the caller also gets :class:`RedisUnavailableError` after
the operation was queued, for code that prefers to fail the request.

The facade (``cache.py``) holds the pieces; this class only reads them, at call time, so
that a forked child's fresh pieces are the ones used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .._adaptive import is_dynamic_ttl
from .._bus_messages import Action
from .._errors import FencingTokenRejected, RedisUnavailableError
from .._keys import validate_key
from .._options import Duration
from .._sentinel import MISSING

if TYPE_CHECKING:
    from .cache import AsyncCache


class AsyncWritePath:
    """``set``/``set_many``/``delete``/``touch`` of one cache (see the module notes)."""

    def __init__(self, cache: AsyncCache) -> None:
        self._cache = cache

    async def set(
        self,
        key: str,
        value: Any,
        ttl: Any,
        tags: Iterable[str],
        fence: int | None,
    ) -> None:
        """See :meth:`AsyncCache.set`."""
        c = self._cache
        validate_key(key)
        tag_tuple = c._tags(tags)
        ttl_s = c._positive_ttl(ttl, key, value)
        if fence is not None:
            if type(fence) is not int or fence < 0:
                raise TypeError(f"fence must be a non-negative int token, got {fence!r}")
            if c._tier is None:
                raise ValueError("fenced writes need redis")
        tier = c._tier
        stamps: tuple[tuple[int, ...], int] | None = ((0,) * len(tag_tuple), 0)
        if tier is not None:
            await c._bus_started()
            stamps = await c._reads._stamps(tag_tuple)  # a read: nothing is written before encode
        blob = c._encode_new(key, value, ttl_s, tag_tuple, stamps, c._clock())
        if tier is None:
            self._write_l1(key, value, ttl_s, tag_tuple)
            return
        physical = c.settings.physical_ttl(ttl_s)
        error: RedisUnavailableError | None = None
        try:
            if stamps is None:
                raise RedisUnavailableError("tag versions unavailable: the write was not made")
            if fence is None:
                await tier.write(key, blob, physical, tag_tuple)
            elif not await tier.write_fenced(key, blob, physical, fence, tag_tuple):
                raise FencingTokenRejected(
                    f"write to {key!r} with fencing token {fence} refused: a newer "
                    "lock holder has written it"
                )
        except RedisUnavailableError as exc:
            error = exc
            c._invalidator.write_failed([key], exc)
        else:
            c._invalidator.write_succeeded([key])
        await c._publish(Action.INVALIDATE_KEYS, (key,))
        self._write_l1(key, value, ttl_s, tag_tuple)
        if error is not None and (fence is not None or c._raise_on_write_error):
            raise error

    async def set_many(self, mapping: Mapping[str, Any], ttl: Any, tags: Iterable[str]) -> None:
        """See :meth:`AsyncCache.set_many`."""
        c = self._cache
        tag_tuple = c._tags(tags)
        for key in mapping:
            validate_key(key)
        # one TTL for all, or (a callable / AdaptiveTTL) one per value
        ttls = (
            {key: c._positive_ttl(ttl, key, value) for key, value in mapping.items()}
            if is_dynamic_ttl(ttl)
            else dict.fromkeys(mapping, c._positive_ttl(ttl))
        )
        tier = c._tier
        stamps: tuple[tuple[int, ...], int] | None = ((0,) * len(tag_tuple), 0)
        if tier is not None and mapping:
            await c._bus_started()
            stamps = await c._reads._stamps(tag_tuple)
        now = c._clock()
        # every value is encoded before anything is written: one bad value writes nothing
        blobs = [
            (key, c._encode_new(key, value, ttls[key], tag_tuple, stamps, now))
            for key, value in mapping.items()
        ]
        error: RedisUnavailableError | None = None
        if tier is not None and blobs:
            keys = [key for key, _ in blobs]
            by_ttl: dict[float, list[tuple[str, bytes]]] = {}
            for key, blob in blobs:
                by_ttl.setdefault(ttls[key], []).append((key, blob))
            try:
                if stamps is None:
                    raise RedisUnavailableError("tag versions unavailable: nothing was written")
                for ttl_s, group in by_ttl.items():
                    await tier.write_many(group, c.settings.physical_ttl(ttl_s), tag_tuple)
            except RedisUnavailableError as exc:
                error = exc
                c._invalidator.write_failed(keys, exc)
            else:
                c._invalidator.write_succeeded(keys)
            await c._publish(Action.INVALIDATE_KEYS, keys)
        for key, value in mapping.items():
            self._write_l1(key, value, ttls[key], tag_tuple)
        if error is not None and c._raise_on_write_error:
            raise error

    def _write_l1(self, key: str, value: Any, ttl: float, tags: tuple[str, ...]) -> None:
        """A direct write's L1 side (and the fail-safe copy); nothing while the bus is down."""
        c = self._cache
        if c._l1_open():
            c._l1.set(key, value, ttl=min(ttl, c.settings.l1_max_ttl), tags=tags)
            if not c._l1_open():  # the bus went unhealthy meanwhile: keep L1 empty
                c._l1.invalidate(key)
        if c._stale is not None:
            c._stale.set(key, value, ttl=ttl + c.settings.fail_safe_max_age, tags=tags)

    async def delete(self, key: str) -> bool:
        """See :meth:`AsyncCache.delete`."""
        c = self._cache
        validate_key(key)
        existed = c._drop_local_keys((key,)) > 0
        tier = c._tier
        if tier is None:
            return existed
        await c._bus_started()
        error: RedisUnavailableError | None = None
        try:
            existed = await tier.delete(key) or existed
        except RedisUnavailableError as exc:
            error = exc
            c._invalidator.write_failed([key], exc)
        else:
            c._invalidator.write_succeeded([key])
        # again: a fill in this process that read L2 before the delete is refused
        c._l1.invalidate(key)
        await c._publish(Action.INVALIDATE_KEYS, (key,))
        if error is not None and c._raise_on_write_error:
            raise error
        return existed

    async def touch(self, key: str, ttl: Duration) -> bool:
        """See :meth:`AsyncCache.touch`."""
        c = self._cache
        validate_key(key)
        ttl_s = c._positive_ttl(ttl)
        tier = c._tier
        if tier is None:
            value = c._l1.peek(key, MISSING)
            if value is MISSING:
                return False
            c._l1.set(key, value, ttl=min(ttl_s, c.settings.l1_max_ttl), tags=c._l1.tags_of(key))
            return True
        await c._bus_started()
        try:
            blob = await tier.get(key)
            entry = c._reads._decode(key, blob)
            if entry is not None:
                entry = await c._reads._valid(key, entry)
            # only a live entry: a logically expired one kept for fail-safe stays expired
            if entry is None or c._reads._expired(entry):
                return False
            now = c._clock()
            new = c._codec.encode(
                key,
                entry.value,
                created_at=entry.created_at,
                expires_at=now + ttl_s,
                tags=entry.tags,
                stamps=entry.stamps,
                epoch=entry.epoch,
            )
            assert blob is not None
            # compare-and-set: a write that landed since the read is not undone; a touch
            # that times out changed nothing or only the expiry, never the value
            touched = await tier.replace_if_unchanged(
                key, blob, new, c.settings.physical_ttl(ttl_s)
            )
        except RedisUnavailableError:
            return False
        # L1 refills from L2 with the new expiry on the next read, here and everywhere
        c._l1.invalidate(key)
        if touched:
            await c._publish(Action.INVALIDATE_KEYS, (key,))
        return touched
