"""Cache warming: ``AsyncCache.warm`` writes many entries ahead of the traffic.

Items are cut into numbered batches (``_warm.py``) and each batch is written as
``set_many`` writes: the tag versions and epoch are read, every value is encoded into the
usual envelope, and one pipeline stores the entries and revokes their leases (so a fill
that read an older value cannot land after the warm write) and registers them under
their tags; the keys then go out on the bus so that every instance drops its L1 copy.

Protecting the database: at most ``max_concurrency`` batches are in flight (each one
calls ``loader_many`` once), and the batches start no faster than ``rate`` items per
second. Protecting Redis: one pipeline per batch.

Faults: a batch whose write fails is recorded in the outbox exactly as a failed
``set_many`` is (its keys are deleted as soon as Redis answers, and this instance does not
serve them from L2 meanwhile), then retried with backoff for up to ``retry_for`` seconds;
a retry that lands cancels those deletes. A batch still failing after that is counted in
``failed``: its keys end up deleted (never older values, never silently half-written),
and the checkpoint stops before it, so a resumed run writes it again.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

from .._bus_messages import Action
from .._errors import RedisUnavailableError, StratacacheError
from .._keys import validate_key
from .._options import Duration, to_seconds
from .._primitives import AsyncBoundedGroup, async_call_loader, async_sleep
from .._warm import (
    Checkpoint,
    RateLimiter,
    WarmReport,
    WarmTally,
    batches,
    decode_checkpoint,
    encode_checkpoint,
    total_of,
    validate_warm_options,
)

if TYPE_CHECKING:
    from .cache import AsyncCache

# KEYS: the checkpoint. ARGV: batches completed, px. Only ever raised: batches complete
# concurrently, so their checkpoint writes may arrive out of order.
_RAISE_CHECKPOINT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: data and lease key of each entry, in pairs. ARGV: px, then each entry's blob. What
# ``write_many``'s pipeline does per key (revoke the lease, then store), in one command
# per chunk: redis-py then packs one command instead of two per key, which is most of a
# warm's client time. A standalone server only (a cluster's keys span slots).
_WRITE_CHUNK = """
local px = ARGV[1]
for i = 1, #KEYS, 2 do
  redis.call('DEL', KEYS[i + 1])
  redis.call('SET', KEYS[i], ARGV[(i + 1) / 2 + 1], 'PX', px)
end
return #KEYS / 2
"""
_CHUNK = 1000  # entries per script call: Redis is busy about 1 ms with each

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0

Progress = Union[Callable[[int, Optional[int]], Any], bool, None]


def _progress_bar(progress: Progress, total: int | None) -> tuple[Any, Any]:
    """(callback, bar to close): the caller's callable, a tqdm bar (``True``, or ``None``
    on a terminal with tqdm installed), or nothing."""
    if callable(progress):
        return progress, None
    if progress is False or (progress is None and not sys.stderr.isatty()):
        return None, None
    try:
        from tqdm import tqdm
    except ImportError:
        if progress is True:
            raise ImportError(
                "a progress bar needs tqdm: pip install 'stratacache[warm]' (or pass a "
                "progress= callable)"
            ) from None
        return None, None
    bar = tqdm(total=total, unit="item", desc="warming", dynamic_ncols=True)
    seen = [0]

    def update(done: int, _total: int | None) -> None:
        bar.update(done - seen[0])
        seen[0] = done

    return update, bar


class AsyncWarmer:
    """One warm run of a cache (see the module notes)."""

    def __init__(self, cache: AsyncCache) -> None:
        self._cache = cache
        self._lock = threading.Lock()  # the tally (the sync twin's batches are threads)
        self._tally = WarmTally()

    async def run(
        self,
        items: Iterable[Any],
        *,
        loader_many: Callable[[list[str]], Any] | None,
        ttl: Duration | None,
        tags: Iterable[str],
        batch_size: int,
        max_concurrency: int,
        rate: float | None,
        progress: Progress,
        resume_key: str | None,
        resume_ttl: Duration,
        retry_for: Duration,
        fill_l1: bool,
    ) -> WarmReport:
        """See :meth:`AsyncCache.warm`."""
        c = self._cache
        rate_s = validate_warm_options(batch_size, max_concurrency, rate, resume_key)
        tag_tuple = c._tags(tags)
        if ttl is not None:
            to_seconds(ttl, "ttl", allow_zero=False)
        retry_s = to_seconds(retry_for, "retry_for")
        resume_px = max(1, int(to_seconds(resume_ttl, "resume_ttl", allow_zero=False) * 1000))
        if loader_many is not None and not callable(loader_many):
            raise TypeError("loader_many must be a callable taking a list of keys")
        if not callable(progress) and progress not in (None, True, False):
            raise TypeError("progress must be a callable(done, total), True, False or None")
        if resume_key is not None and c._tier is None:
            raise ValueError("resume_key keeps its checkpoint in Redis: this cache has none")
        checkpoint_key = None if resume_key is None else c._keys.meta_key(f"warm.{resume_key}")
        if not isinstance(items, Iterable):
            raise TypeError(f"items must be an iterable, not {type(items).__name__}")
        total = total_of(items)
        notify, bar = _progress_bar(progress, total)
        start = c._timer()
        if c._tier is not None:
            await c._bus_started()
        resumed = 0
        if checkpoint_key is not None:
            resumed = await self._read_checkpoint(checkpoint_key)
        checkpoint = Checkpoint(resumed)
        limiter = RateLimiter(rate_s, c._timer)
        group = AsyncBoundedGroup(max_concurrency)
        count = 0
        tally = self._tally

        async def one(index: int, batch: list[Any]) -> None:
            ok = await self._batch(index, batch, loader_many, ttl, tag_tuple, retry_s, fill_l1)
            with self._lock:
                grew = checkpoint.complete(index) if ok else False
                if not ok:
                    checkpoint.fail(index)
                done, value = tally.done, checkpoint.value
            if grew and checkpoint_key is not None:
                await self._raise_checkpoint(checkpoint_key, value, resume_px)
            if notify is not None:
                notify(done, total)

        try:
            try:
                for index, batch in enumerate(batches(items, batch_size)):
                    count = index + 1
                    if index < resumed:
                        with self._lock:
                            tally.skipped += len(batch)
                            done = tally.done
                        if notify is not None:
                            notify(done, total)
                        continue
                    pause = limiter.delay(len(batch))
                    if pause:
                        await async_sleep(pause)
                    await group.submit(lambda i=index, b=batch: one(i, b))  # type: ignore[misc]
            except Exception:
                await group.join()  # let the batches in flight land (or fail) first
                raise
            except BaseException:
                await group.cancel()
                raise
            await group.join()
        finally:
            if bar is not None:
                bar.close()
        stored: int | None = None
        if checkpoint_key is not None:
            if checkpoint.value < count:
                stored = checkpoint.value
            else:  # every batch done (items refused for bad input would be refused again)
                await self._forget_checkpoint(checkpoint_key)
        return WarmReport(
            written=tally.written,
            skipped=tally.skipped,
            failed=tally.failed,
            seconds=c._timer() - start,
            batches=count,
            resumed_batches=min(resumed, count),
            checkpoint=stored,
            errors=tuple(tally.errors),
        )

    async def _batch(
        self,
        index: int,
        batch: list[Any],
        loader_many: Callable[[list[str]], Any] | None,
        ttl: Duration | None,
        tags: tuple[str, ...],
        retry_for: float,
        fill_l1: bool,
    ) -> bool:
        """Load (with ``loader_many``), encode and write one batch; False if it failed for
        good (counted), True once every item is written, skipped or refused."""
        c = self._cache
        tally = self._tally
        pairs: list[tuple[str, Any]] = []
        refused = 0
        if loader_many is None:
            for item in batch:
                try:
                    key, value = item
                    pairs.append((validate_key(key), value))
                except (TypeError, ValueError) as exc:
                    refused += 1
                    with self._lock:
                        tally.error(f"batch {index}: item refused: {exc}")
        else:
            keys = []
            for item in batch:
                try:
                    keys.append(validate_key(item))
                except (TypeError, ValueError) as exc:
                    refused += 1
                    with self._lock:
                        tally.error(f"batch {index}: key refused: {exc}")
            try:
                found = await async_call_loader(lambda: loader_many(keys))
                if not isinstance(found, Mapping):
                    raise TypeError(
                        f"loader_many must return a mapping of key to value, not "
                        f"{type(found).__name__}"
                    )
            except Exception as exc:
                with self._lock:
                    tally.failed += len(batch)
                    tally.error(f"batch {index}: loader_many raised {type(exc).__name__}: {exc}")
                return False
            pairs = [(key, found[key]) for key in keys if key in found]
            with self._lock:
                tally.skipped += len(keys) - len(pairs)
        if refused:
            with self._lock:
                tally.failed += refused
        ttl_s = c._positive_ttl(ttl)
        written, error = await self._write(index, pairs, ttl_s, tags, retry_for, fill_l1)
        with self._lock:
            tally.written += written
            if error is not None:
                tally.failed += len(pairs) - written
                tally.error(f"batch {index}: {len(pairs) - written} entries not written: {error}")
        return error is None

    async def _write(
        self,
        index: int,
        pairs: list[tuple[str, Any]],
        ttl: float,
        tags: tuple[str, ...],
        retry_for: float,
        fill_l1: bool,
    ) -> tuple[int, StratacacheError | None]:
        """Write one batch as ``set_many`` does, retrying a Redis failure for up to
        ``retry_for`` seconds; (entries written, the error if it failed for good)."""
        c = self._cache
        tier = c._tier
        if tier is None:
            values = self._encodable(index, pairs, ttl, tags, ((0,) * len(tags), 0))[0]
            for key, value in values:
                c._writes._write_l1(key, value, ttl, tags)
            return len(values), None
        keys = [key for key, _ in pairs]
        values = pairs
        if not keys:
            return 0, None
        deadline = c._timer() + retry_for
        pause = _BACKOFF_FIRST
        error: StratacacheError | None = None
        stamps: tuple[tuple[int, ...], int] | None = None
        blobs: list[tuple[str, bytes]] = []
        while True:
            try:
                fresh = await c._reads._stamps(tags)
                if fresh is None:
                    raise RedisUnavailableError("tag versions unavailable: nothing was written")
                if fresh != stamps or not blobs:
                    # encoded once, again only if a tag was invalidated while we retried
                    stamps = fresh
                    values, blobs = self._encodable(index, values, ttl, tags, stamps)
                    keys = [key for key, _ in values]
                    if not keys:
                        return 0, None
                await self._store(blobs, c.settings.physical_ttl(ttl), tags)
            except RedisUnavailableError as exc:
                # as set_many: the keys are deleted once Redis answers (unless a retry lands
                # first), and not served from L2 here meanwhile
                c._invalidator.write_failed(keys, exc)
                error = exc
                if not exc.transient:
                    break
                # retry once the outbox has applied those deletes: a delete still in
                # flight when a retry lands could otherwise remove the warmed value
                while c._timer() + pause <= deadline:
                    await async_sleep(pause)
                    pause = min(pause * 2, _BACKOFF_MAX)
                    if not self._pending(keys):
                        break
                else:
                    break
                continue
            c._invalidator.write_succeeded(keys)
            error = None
            break
        await c._publish(Action.INVALIDATE_KEYS, keys)
        if fill_l1 and error is None:
            for key, value in values:
                c._writes._write_l1(key, value, ttl, tags)
        else:
            c._drop_local_keys(keys)  # no older copy of a warmed key stays in this L1
        return (len(values), None) if error is None else (0, error)

    async def _store(
        self, blobs: list[tuple[str, bytes]], ttl: float, tags: tuple[str, ...]
    ) -> None:
        """One batch to Redis: ``write_many`` on a cluster; on a standalone server the same
        commands in one script call per chunk (see ``_WRITE_CHUNK``), in one pipeline
        with the tags' member registrations."""
        tier = self._cache._tier
        assert tier is not None
        if tier.cluster:
            await tier.write_many(blobs, ttl, tags)
            return
        ks = self._cache._keys
        px = max(1, int(ttl * 1000))
        pipe = tier.client.pipeline(transaction=False)
        for start in range(0, len(blobs), _CHUNK):
            chunk = blobs[start : start + _CHUNK]
            keys: list[str] = []
            for key, _ in chunk:
                keys.append(ks.data_key(key))
                keys.append(ks.lease_key(key))
            pipe.execute_command(
                "EVAL", _WRITE_CHUNK, len(keys), *keys, px, *[blob for _, blob in chunk]
            )
        tier._add_members(pipe, tags, [key for key, _ in blobs], ttl)
        await tier._call(pipe.execute)

    def _pending(self, keys: list[str]) -> bool:
        """Whether the outbox still holds an operation on one of ``keys``."""
        outbox = self._cache._invalidator.primary_outbox
        return outbox is not None and any(outbox.blocks(key, ()) for key in keys)

    def _encodable(
        self,
        index: int,
        pairs: list[tuple[str, Any]],
        ttl: float,
        tags: tuple[str, ...],
        stamps: tuple[tuple[int, ...], int],
    ) -> tuple[list[tuple[str, Any]], list[tuple[str, bytes]]]:
        """The pairs the codec takes and their blobs; a refused value is counted and
        reported alone, and the rest of the batch goes on."""
        c = self._cache
        now = c._clock()
        values: list[tuple[str, Any]] = []
        blobs: list[tuple[str, bytes]] = []
        for key, value in pairs:
            try:
                blob = c._encode_new(key, value, ttl, tags, stamps, now)
            except (TypeError, ValueError) as exc:
                with self._lock:
                    self._tally.failed += 1
                    self._tally.error(f"batch {index}: value of {key!r} refused: {exc}")
            else:
                values.append((key, value))
                blobs.append((key, blob))
        return values, blobs

    async def _read_checkpoint(self, key: str) -> int:
        tier = self._cache._tier
        assert tier is not None
        return decode_checkpoint(await tier._call(tier.client.get, key, _route=(key,)))

    async def _raise_checkpoint(self, key: str, value: int, px: int) -> None:
        tier = self._cache._tier
        assert tier is not None
        try:
            await tier._call(
                tier.client.eval,
                _RAISE_CHECKPOINT,
                1,
                key,
                encode_checkpoint(value),
                px,
                _route=(key,),
            )
        except RedisUnavailableError:
            pass  # a lost checkpoint only makes a resumed run redo more batches

    async def _forget_checkpoint(self, key: str) -> None:
        tier = self._cache._tier
        assert tier is not None
        try:
            await tier._call(tier.client.delete, key, _route=(key,))
        except RedisUnavailableError:
            pass  # left to its expiry: a re-run would skip the batches done
