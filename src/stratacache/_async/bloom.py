"""``AsyncBloomFilter``: a Bloom filter kept in the cache's Redis (``cache.bloom(...)``).

Sizing, hashing, the scripts and the layout are in ``stratacache._bloom`` (read its notes
first); this module sends them. Every call is one round trip: an item's ``k`` bits are in
one shard, one script reads the shard's state and its bits together, and many items go
as one script call per shard (in chunks) in one pipeline — on a cluster, one round trip
per master involved.

Faults: a check Redis does not answer is a "maybe" (``True``), never a false "absent";
an add Redis does not take waits in this instance's :class:`PendingAdds` and is sent
again in the background until it lands (read as "maybe" here meanwhile). Calls go
through the cache's Redis tier, so its circuit breaker and time budget apply.

With ``local=True`` the filter also keeps a copy of the bit arrays in the process,
fetched in the background every ``refresh_interval`` seconds. An item whose bits are all
set in the copy is answered "maybe present" without Redis; an item the copy calls absent
is confirmed with Redis, because the copy may predate an add made by another instance
(at most one interval ago). So the copy never makes a present item read as absent; it
saves the round trip for items that are there (most of the traffic of a guard).
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from .._bloom import (
    ABORT,
    ADD,
    BEGIN,
    CHECK,
    MARK_LOST,
    SNAPSHOT,
    SWITCH,
    BloomParams,
    PendingAdds,
    bit_is_set,
    item_bytes,
    pack_hashes,
)
from .._errors import (
    BloomFilterMismatch,
    BloomRebuildConflict,
    RedisCommandError,
    RedisUnavailableError,
)
from .._keys import validate_key
from .._logging import LogLimiter
from .._options import Duration, to_seconds
from .._primitives import AsyncEvent, AsyncWorker, async_sleep, async_wait_event

if TYPE_CHECKING:
    from .cache import AsyncCache
    from .redis_tier import AsyncRedisTier

logger = logging.getLogger("stratacache.bloom")

_CHUNK = 500  # items per script call (Redis serves no one else while a script runs)
BATCH = 1000
"""Most items sent in one round trip: a bulk call (``add_many``, ``might_contain_many``,
``rebuild``) of more items makes one round trip per ``BATCH`` of them, so that each stays
well within the client's time budget (Redis sets or reads ``k`` bits per item: about
5 ms per batch at k = 7 on an idle server)."""
_NAP = 0.05  # shortest pause of the retry worker between attempts

Progress = Union[bool, Callable[[int, Union[int, None]], Any], None]


@dataclass(frozen=True)
class BloomStats:
    """Counters of one Bloom filter in one instance (``bloom.stats()``)."""

    name: str
    checks: int = 0
    """Items checked (``might_contain`` and ``might_contain_many``)."""
    absent: int = 0
    """Checks answered "definitely absent"."""
    unknown: int = 0
    """Checks answered "maybe" without looking at bits: Redis did not answer, the filter
    is not built yet, or adds were lost (until a rebuild)."""
    local_hits: int = 0
    """Checks answered by the local copy without Redis."""
    adds: int = 0
    pending: int = 0
    """Adds waiting for Redis in this instance."""
    applied_late: int = 0
    """Adds that landed after waiting (since the start)."""
    dropped: int = 0
    """Adds that could not be kept (queue full, or still waiting at close): the filter
    was (or must be) marked as having lost adds, and answers "maybe" until a rebuild."""


def _conflict(exc: RedisCommandError) -> Exception | None:
    """The typed error behind a script's refusal, if it is one of ours."""
    text = str(exc)
    if "BLOOMPARAMS" in text:
        return BloomFilterMismatch(text[text.index("BLOOMPARAMS") + len("BLOOMPARAMS ") :])
    if "BLOOMSUPERSEDED" in text:
        return BloomRebuildConflict(text[text.index("BLOOMSUPERSEDED") + len("BLOOMSUPERSEDED ") :])
    return None


def _progress_bar(progress: Progress, total: int | None, name: str) -> Any:
    """What ``rebuild`` reports to (``update(done)``, ``close()``): the callback given, a
    tqdm bar when ``progress`` is left at ``None``, stderr is a terminal and tqdm is
    installed, else nothing."""
    if callable(progress):
        return _Callback(progress, total)
    if progress is False or (progress is None and not sys.stderr.isatty()):
        return _Callback(None, total)
    try:
        tqdm = importlib.import_module("tqdm").tqdm
    except ImportError:
        return _Callback(None, total)
    return _Bar(tqdm(total=total, desc=f"rebuild {name}", unit="item"))


class _Callback:
    def __init__(self, callback: Any, total: int | None) -> None:
        self._callback = callback
        self._total = total

    def update(self, done: int) -> None:
        if self._callback is not None:
            self._callback(done, self._total)

    def close(self) -> None:
        pass


class _Bar:
    def __init__(self, bar: Any) -> None:
        self._bar = bar
        self._seen = 0

    def update(self, done: int) -> None:
        self._bar.update(done - self._seen)
        self._seen = done

    def close(self) -> None:
        self._bar.close()


class AsyncBloomFilter:
    """A Bloom filter in the cache's Redis, shared by every instance of the namespace.

    Made by :meth:`AsyncCache.bloom`. "Absent" means the item was never added (or its
    add died with a crashed process before reaching Redis — see below); "present" is
    right except for a share of about ``error_rate`` of the absent items, at
    ``capacity`` items. Items are ``str``,
    ``bytes`` or ``int`` (``42``, ``"42"`` and ``b"42"`` are the same item).

    A filter answers "maybe" (``True``) for everything until its first :meth:`rebuild`
    (``rebuild([])`` for an empty start): a fresh or wiped filter must not claim that
    existing items are absent. Afterwards, :meth:`add` each new item after writing it to
    the system of record, and rebuild from time to time (the filter never forgets
    deleted items, and a crashed process loses the adds it was still retrying).
    """

    def __init__(
        self,
        cache: AsyncCache,
        name: str,
        params: BloomParams,
        *,
        local: bool = False,
        refresh_interval: float = 5.0,
    ) -> None:
        self._cache = cache
        self.name = name
        self.params = params
        self._signature = params.signature
        self._keys = [cache._keys.bloom_keys(name, shard) for shard in range(params.shards)]
        tier = cache._tier
        assert tier is not None
        self._scripts = {
            script: tier.client.register_script(script) for script in (ADD, CHECK, SNAPSHOT)
        }
        settings = cache._invalidation_settings
        self._pending = PendingAdds(
            settings.outbox_size, settings.retry_backoff, settings.retry_backoff_max
        )
        self._close_timeout = settings.close_timeout
        self._timer = time.monotonic
        self._worker: AsyncWorker | None = None
        self._worker_lock = threading.Lock()
        self._wake = AsyncEvent()
        self._closed = False
        self._local = local
        self._refresh_interval = refresh_interval
        self._copy: list[bytes | None] = [None] * params.shards  # None: ask Redis
        self._refresher: AsyncWorker | None = None
        self._copy_at: float | None = None  # when the copy was last fetched
        self._stop_refresh = AsyncEvent()
        self._warn_unbuilt = LogLimiter(logger, 60.0)
        self._warn_retry = LogLimiter(logger, 10.0)
        self._checks = self._absent = self._unknown = self._local_hits = self._adds = 0

    def __repr__(self) -> str:
        p = self.params
        return (
            f"<{type(self).__name__} {self.name!r} capacity={p.capacity} "
            f"error_rate={p.error_rate} bits={p.bits} hashes={p.hashes} shards={p.shards}>"
        )

    # -- checks -------------------------------------------------------------------------

    async def might_contain(self, item: Any) -> bool:
        """False if ``item`` was definitely never added; True if it may have been (one
        round trip, none when the local copy has it). Redis not answering is a True."""
        return (await self.might_contain_many([item]))[0]

    async def might_contain_many(self, items: Iterable[Any]) -> list[bool]:
        """:meth:`might_contain` of each item, in order: one round trip per
        :data:`BATCH` (1000) items (one script call per shard involved, in one
        pipeline; on a cluster, one round trip per master involved)."""
        datas = [item_bytes(item) for item in items]
        answers: list[bool] = []
        for start in range(0, len(datas), BATCH):
            answers += await self._check(datas[start : start + BATCH])
        return answers

    async def _check(self, datas: list[bytes]) -> list[bool]:
        answers: list[bool | None] = [None] * len(datas)
        ask: dict[int, tuple[list[int], list[int]]] = {}  # shard -> (indexes, hashes)
        pending = self._pending
        params = self.params
        for index, data in enumerate(datas):
            if pending.active and data in pending:
                answers[index] = True  # our own add, still on its way
                continue
            shard, h1, h2 = params.locate(data)
            copy = self._copy[shard] if self._local else None
            if copy is not None and all(bit_is_set(copy, p) for p in params.positions(h1, h2)):
                answers[index] = True
                self._local_hits += 1
                continue
            entry = ask.get(shard)
            if entry is None:
                entry = ask[shard] = ([], [])
            entry[0].append(index)
            entry[1].extend((h1, h2))
        self._checks += len(datas)
        if ask:
            await self._ensure_refresher()
            try:
                replies = await self._send(CHECK, [], ask)
            except RedisUnavailableError:
                # fail open: a wrong "maybe" costs a loader call, a wrong "absent" an error
                for indexes, _ in ask.values():
                    for index in indexes:
                        answers[index] = True
                self._unknown += sum(len(indexes) for indexes, _ in ask.values())
            else:
                for (indexes, _), reply in zip(ask.values(), replies):
                    for index, answer in zip(indexes, reply):
                        answers[index] = answer != 0
                        if answer == 0:
                            self._absent += 1
                        elif answer == 2:
                            self._unknown += 1
                if any(answer == 2 for reply in replies for answer in reply):
                    self._warn_unbuilt.warning(
                        "Bloom filter %r in namespace %r answers 'maybe' for everything in "
                        "some shards: it was never built, Redis lost its data, or adds were "
                        "lost. Run rebuild() from the system of record.",
                        self.name,
                        self._cache._keys.namespace,
                    )
        return [bool(answer) for answer in answers]

    # -- adds ---------------------------------------------------------------------------

    async def add(self, item: Any) -> bool:
        """Add ``item`` (one round trip); True if it was not in the filter yet (as far as
        its bits tell). If Redis does not take it, it waits in this instance and is sent
        again until it lands; the call returns True (or raises
        :class:`RedisUnavailableError` after queueing it, with
        ``on_write_error="raise"``). A refusal for good (an ACL without ``SETBIT``)
        raises :class:`RedisCommandError`."""
        return await self.add_many([item]) > 0

    async def add_many(self, items: Iterable[Any]) -> int:
        """Add every item: one round trip per :data:`BATCH` (1000) items (one script
        call per shard involved, in one pipeline; on a cluster, one round trip per
        master involved). Returns how many were not in the filter yet. Redis faults are
        handled as for :meth:`add` (the items not taken then count as new)."""
        datas = list(dict.fromkeys(item_bytes(item) for item in items))
        self._adds += len(datas)
        tier = self._tier()
        new = 0
        for start in range(0, len(datas), BATCH):
            batch = datas[start : start + BATCH]
            try:
                new += await self._add(batch, tier)
            except RedisUnavailableError as exc:
                if not exc.transient:
                    raise  # refused for good (NOPERM...): retrying cannot help; say it
                # this batch and the rest wait (bits are idempotent: a batch that did
                # land in part costs nothing to send again)
                self._queue(datas[start:], exc)
                if self._cache._raise_on_write_error:
                    raise
                return new + len(datas) - start
        return new

    async def _add(self, datas: Sequence[bytes], tier: AsyncRedisTier, token: str = "") -> int:
        groups: dict[int, tuple[list[int], list[int]]] = {}  # shard -> (indexes, hashes)
        locate = self.params.locate
        for index, data in enumerate(datas):
            shard, h1, h2 = locate(data)
            entry = groups.get(shard)
            if entry is None:
                entry = groups[shard] = ([], [])
            entry[0].append(index)
            entry[1].extend((h1, h2))
        replies = await self._send(ADD, [token], groups, tier)
        new = 0
        unbuilt = False
        for (indexes, _), count in zip(groups.values(), replies):
            if count < 0:  # the shard has no state: nothing is read from it either
                unbuilt = True
                new += len(indexes)
            else:
                new += count
        if unbuilt:
            self._warn_unbuilt.warning(
                "Bloom filter %r in namespace %r is not built (or Redis lost it): adds "
                "are not recorded and checks answer 'maybe'. Run rebuild() from the "
                "system of record.",
                self.name,
                self._cache._keys.namespace,
            )
        if self._local:
            self._set_local(groups)
        return new

    def _set_local(self, groups: dict[int, tuple[list[int], list[int]]]) -> None:
        """Our own adds show in the local copy at once (it is replaced at each refresh)."""
        for shard, (_, hashes) in groups.items():
            copy = self._copy[shard]
            if copy is None:
                continue
            bits = bytearray(copy)
            positions = [
                p
                for at in range(0, len(hashes), 2)
                for p in self.params.positions(hashes[at], hashes[at + 1])
            ]
            for position in positions:
                index = position >> 3
                if index >= len(bits):
                    bits.extend(bytes(index + 1 - len(bits)))
                bits[index] |= 0x80 >> (position & 7)
            self._copy[shard] = bytes(bits)

    def _queue(self, datas: Sequence[bytes], exc: RedisUnavailableError) -> None:
        """Keep adds Redis did not take, and make sure the retry worker runs."""
        dropped = self._pending.failed(datas, self._timer())
        if dropped:
            logger.error(
                "Bloom filter %r in namespace %r: %d add(s) could not be kept (%d are "
                "waiting for Redis already); every shard will be marked as having lost "
                "adds (checks answer 'maybe') once Redis answers, until rebuild()",
                self.name,
                self._cache._keys.namespace,
                dropped,
                len(self._pending),
            )
        self._warn_retry.warning(
            "Bloom filter %r in namespace %r: Redis did not take %d add(s) (%s); they "
            "wait in this instance and are sent again until they land",
            self.name,
            self._cache._keys.namespace,
            len(datas),
            exc,
        )
        self._ensure_worker()

    # -- the retry worker ------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        with self._worker_lock:
            if self._closed or (self._worker is not None and self._worker.alive()):
                return
            # a fresh event: the last worker may have run in another event loop (async)
            self._wake = AsyncEvent()
            self._worker = AsyncWorker(self._retry_loop, f"stratacache-bloom-{self.name}")
        self._wake.set()

    async def _retry_loop(self) -> None:
        pending = self._pending
        while True:
            # decided under the lock that _ensure_worker takes: an add queued as this
            # loop ends finds no worker and starts one
            with self._worker_lock:
                if self._closed or not pending.active:
                    self._worker = None
                    return
            wait = pending.due - self._timer()
            if wait > 0:
                await async_wait_event(self._wake, max(wait, _NAP))
                self._wake.clear()
                continue
            await self._retry_once()

    async def _retry_once(self) -> bool:
        """One attempt at everything waiting; True if nothing is left."""
        pending = self._pending
        tier = self._tier().around_breaker()
        try:
            items = pending.take(BATCH)
            if items:
                await self._add(items, tier)
                pending.landed(items)
                logger.info(
                    "Bloom filter %r in namespace %r: %d add(s) that waited for Redis have landed",
                    self.name,
                    self._cache._keys.namespace,
                    len(items),
                )
            if pending.lost_owed and not len(pending):
                await self._send(MARK_LOST, [uuid.uuid4().hex], self._every_shard(), tier)
                pending.lost_marked()
                logger.error(
                    "Bloom filter %r in namespace %r is marked as having lost adds: every "
                    "instance answers 'maybe' (the guard lets every look-up through) until "
                    "rebuild() from the system of record",
                    self.name,
                    self._cache._keys.namespace,
                )
        except (RedisUnavailableError, BloomFilterMismatch) as exc:
            pending.failed((), self._timer())
            self._warn_retry.warning(
                "Bloom filter %r in namespace %r: %d add(s) still wait for Redis (%s)",
                self.name,
                self._cache._keys.namespace,
                len(pending),
                exc,
            )
            return False
        return not pending.active

    # -- rebuild ------------------------------------------------------------------------

    async def rebuild(
        self,
        source: Iterable[Any],
        *,
        total: int | None = None,
        progress: Progress = None,
    ) -> int:
        """Build the filter again from ``source`` (every item that exists, read from the
        system of record) and switch to it; returns the number of items read.

        The new generation is built under new keys while the current one keeps serving;
        adds made meanwhile (by any instance) go to both, and the switch is atomic per
        shard (an item lives in one shard), so a present item never reads as absent.
        The old generation is deleted after the switch. ``source`` must be read *after*
        the call starts (pass a generator or a cursor, not a list made earlier): an item
        created before the start but missing from ``source`` would be lost.

        Items are sent :data:`BATCH` at a time (one round trip each). ``progress``: a
        callback ``(done, total)`` called after each batch, ``False`` for
        none; by default a tqdm bar when stderr is a terminal and tqdm is installed.
        ``total``: the number of items, for the bar (default: ``len(source)`` if it has
        one). A newer rebuild of the same filter supersedes this one
        (:class:`BloomRebuildConflict`); a Redis fault aborts it (the current generation
        stays; run it again).
        """
        if total is None and hasattr(source, "__len__"):
            total = len(source)  # type: ignore[arg-type]
        report = _progress_bar(progress, total, self.name)
        tier = self._tier()
        token = uuid.uuid4().hex
        count = 0
        try:
            seen_lost = await self._send(BEGIN, [token], self._every_shard(), tier)
            batch: list[bytes] = []
            for item in source:
                batch.append(item_bytes(item))
                if len(batch) >= BATCH:
                    await self._add(batch, tier, token)
                    count += len(batch)
                    batch = []
                    report.update(count)
            if batch:
                await self._add(batch, tier, token)
                count += len(batch)
            report.update(count)
            await self._send_each(SWITCH, [[token, lost] for lost in seen_lost], tier)
        except BaseException:
            await self._abort(token, tier)
            raise
        finally:
            report.close()
        self._copy = [None] * self.params.shards
        logger.info(
            "Bloom filter %r in namespace %r rebuilt from %d item(s)",
            self.name,
            self._cache._keys.namespace,
            count,
        )
        return count

    async def _abort(self, token: str, tier: AsyncRedisTier) -> None:
        """Best effort after a failed rebuild: drop the half-built generation (else adds
        keep going to it until the next rebuild), unless a newer rebuild owns it."""
        try:
            await self._send_each(ABORT, [[token]] * self.params.shards, tier)
        except Exception as exc:  # Redis away: the next rebuild starts over anyway
            logger.warning(
                "Bloom filter %r in namespace %r: a failed rebuild left its generation "
                "behind (%s); adds keep going to it until the next rebuild",
                self.name,
                self._cache._keys.namespace,
                exc,
            )

    # -- the local copy -------------------------------------------------------------------

    async def _ensure_refresher(self) -> None:
        if not self._local or self._closed:
            return
        if self._refresher is not None and self._refresher.alive():
            return
        self._stop_refresh = AsyncEvent()
        self._refresher = AsyncWorker(self._refresh_loop, f"stratacache-bloom-copy-{self.name}")

    async def _refresh_loop(self) -> None:
        if self._copy_at is None:  # never fetched: now, not one interval from now
            await self.refresh()
        while not await async_wait_event(self._stop_refresh, self._refresh_interval):
            await self.refresh()

    async def refresh(self) -> bool:
        """Fetch the local copy now (``local=True``; one round trip); False if Redis
        did not answer (the copy then answers nothing until it does)."""
        self._copy_at = self._timer()
        try:
            replies = await self._send(SNAPSHOT, [], self._every_shard())
        except RedisUnavailableError:
            self._copy = [None] * self.params.shards
            return False
        self._copy = [bytes(bits) if ok == 1 else None for ok, bits in replies]
        await self._ensure_refresher()
        return True

    # -- I/O ------------------------------------------------------------------------------

    def _tier(self) -> AsyncRedisTier:
        tier = self._cache._tier
        assert tier is not None  # cache.bloom() refuses a cache without Redis
        return tier

    def _every_shard(self) -> dict[int, tuple[list[int], list[int]]]:
        return {shard: ([], []) for shard in range(self.params.shards)}

    async def _send(
        self,
        script: str,
        extra: list[str],
        groups: dict[int, tuple[list[int], list[int]]],
        tier: AsyncRedisTier | None = None,
    ) -> list[Any]:
        """Run ``script`` once per shard of ``groups`` (ARGV: signature, then k and m if
        the script takes items, ``extra``, then the items' hashes packed, in chunks), in
        one round trip; the replies per shard (chunk replies joined: lists concatenated,
        counts added)."""
        tier = tier or self._tier()
        with_items = script in (ADD, CHECK)
        shape = [self.params.hashes, self.params.shard_bits] if with_items else []
        calls: list[tuple[int, list[Any]]] = []
        for shard, (_, hashes) in groups.items():
            head: list[Any] = [self._signature, *shape, *extra]
            if not with_items:
                calls.append((shard, head))
                continue
            step = _CHUNK * 2
            for start in range(0, len(hashes), step):
                calls.append((shard, [*head, pack_hashes(hashes[start : start + step])]))
        replies = await self._run(script, calls, tier)
        joined: dict[int, Any] = {}
        for (shard, _), reply in zip(calls, replies):
            if shard not in joined:
                joined[shard] = reply
            elif isinstance(reply, list):
                joined[shard] = joined[shard] + reply
            elif joined[shard] >= 0 and reply >= 0:
                joined[shard] += reply
            else:
                joined[shard] = -1 if reply < 0 else joined[shard]
        return [joined[shard] for shard in groups]

    async def _send_each(
        self, script: str, extra: list[list[str]], tier: AsyncRedisTier
    ) -> list[Any]:
        """Run ``script`` on every shard with its own ``extra`` arguments."""
        calls = [(shard, [self._signature, *args]) for shard, args in enumerate(extra)]
        return await self._run(script, calls, tier)

    async def _run(
        self, script: str, calls: list[tuple[int, list[Any]]], tier: AsyncRedisTier
    ) -> list[Any]:
        try:
            if len(calls) == 1 and script in self._scripts:
                shard, args = calls[0]
                one = list(self._keys[shard])
                reply = await tier._call(self._scripts[script], keys=one, args=args, _route=one)
                return [reply]
            pipe = tier.client.pipeline(transaction=False)
            route: list[str] = []
            for shard, args in calls:
                pipe.execute_command("EVAL", script, 3, *self._keys[shard], *args)
                route.extend(self._keys[shard])
            return list(await tier._call(pipe.execute, _route=route))
        except RedisCommandError as exc:
            typed = _conflict(exc)
            if typed is not None:
                raise typed from exc
            raise

    # -- lifecycle ------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """No worker of the parent's runs here, and its lock may have been held at the
        fork: start afresh (the adds the parent was retrying are retried here too, which
        is harmless: setting bits is idempotent)."""
        self._worker_lock = threading.Lock()
        self._worker = None
        self._refresher = None
        self._wake = AsyncEvent()
        self._stop_refresh = AsyncEvent()
        self._pending.after_fork()

    def stats(self) -> BloomStats:
        """This instance's counters for the filter (see :class:`BloomStats`)."""
        pending = self._pending
        return BloomStats(
            name=self.name,
            checks=self._checks,
            absent=self._absent,
            unknown=self._unknown,
            local_hits=self._local_hits,
            adds=self._adds,
            pending=len(pending),
            applied_late=pending.applied,
            dropped=pending.dropped,
        )

    async def aclose(self) -> None:
        """Send what still waits (for up to the cache's ``close_timeout``) and stop the
        background work; adds that could not be sent are logged as an ERROR (the filter
        then misses them: rebuild it). Called by the cache's ``close()``."""
        if self._closed:
            return
        deadline = self._timer() + self._close_timeout
        while self._pending.active and self._timer() < deadline:
            if await self._retry_once():
                break
            await async_sleep(_NAP)
        self._closed = True
        self._wake.set()
        self._stop_refresh.set()
        for worker in (self._worker, self._refresher):
            if worker is not None:
                await worker.stop(1.0)
        left = self._pending.give_up()
        if left:
            logger.error(
                "Bloom filter %r in namespace %r: %d add(s) never reached Redis before "
                "close(); the filter will call those items absent until rebuild() from "
                "the system of record",
                self.name,
                self._cache._keys.namespace,
                left,
            )


def bloom_params(capacity: Any, error_rate: Any, shards: Any) -> BloomParams:
    """Validated parameters (see :meth:`BloomParams.build`)."""
    return BloomParams.build(capacity, error_rate, shards)


def check_name(name: Any) -> str:
    """A Bloom filter's name, validated like a cache key."""
    return validate_key(name)


def refresh_seconds(value: Duration) -> float:
    """``refresh_interval`` as seconds (> 0)."""
    return to_seconds(value, "refresh_interval", allow_zero=False)
