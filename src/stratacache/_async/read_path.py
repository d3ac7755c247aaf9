"""The read path of ``AsyncCache`` after an L1 miss: L2, the lease, the loader and the
guarded fills (see the notes at the top of ``cache.py`` for the five steps), plus the
checks every L2 entry passes before it is served: tag versions and the epoch, this
instance's pending writes (read-your-writes) and the suspect window after Redis trouble.

The facade (``cache.py``) keeps the L1 hit path; everything here starts with a miss. Like
the write path, this class holds the cache and reads its pieces at call time, so that a
forked child's fresh pieces are the ones used.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .._adaptive import check_ttl_option
from .._codec import Entry
from .._errors import LoaderTimeout, LoaderUnavailable, RedisUnavailableError
from .._keys import validate_key
from .._loader import LoaderLimits, describe_failure
from .._primitives import (
    AsyncResultSlot,
    async_call_loader,
    async_call_loader_within,
    async_sleep,
)
from .._read_many import BatchRules, read_many
from .._sentinel import MISSING

if TYPE_CHECKING:
    from .cache import AsyncCache
    from .loader_call import AsyncFlight

# what a new entry is stamped with: its tags' versions (in order) and the namespace epoch
Stamps = tuple[tuple[int, ...], int]

_POLL_FIRST = 0.002  # first pause while another process holds the lease (seconds)
_POLL_MAX = 0.05  # longest pause between polls


def stamped_with(entry: Entry, current: dict[str | None, int]) -> bool:
    """Whether ``entry`` was stamped with the ``current`` versions (epoch and tags)."""
    return entry.epoch == current[None] and all(
        current[tag] == stamp for tag, stamp in zip(entry.tags, entry.stamps)
    )


class _LeaderGone(Exception):
    """The leader of a single flight stopped without an outcome (cancelled): retry."""


class AsyncReadPath:
    """Reads after an L1 miss, for one cache (see the module notes)."""

    def __init__(self, cache: AsyncCache) -> None:
        self._cache = cache

    async def _get_after_l1_miss(self, key: str, default: Any) -> Any:
        c = self._cache
        validate_key(key)
        if c._tier is None:
            return default
        await c._bus_started()
        ticket = c._l1.ticket(key)
        try:
            entry = await self._read_l2(key)
        except BaseException:
            c._l1.release(ticket, key)
            raise
        if entry is None or self._expired(entry):
            c._counters.l2_misses += 1
            c._l1.release(ticket, key)
            return default
        c._counters.l2_hits += 1
        self._install(ticket, key, entry.value, entry)
        return entry.value

    async def get_many_after_l1(self, found: dict[str, Any], missing: list[str]) -> dict[str, Any]:
        """:meth:`AsyncCache.get_many` for the keys L1 did not have: one L2 round trip;
        adds what it finds to ``found`` and returns it.

        The per-key work (decode, checks, L1 install) is one call of ``read_many``
        (``_read_many.py``: compiled beside the L1); what decides whether an entry may
        be served is computed here once for the batch (:meth:`_batch_rules`)."""
        c = self._cache
        l1 = c._l1
        tier = c._tier
        assert tier is not None  # the facade answers from L1 alone without Redis
        await c._bus_started()
        missing = list(dict.fromkeys(missing))
        tickets = l1.tickets(missing)
        # Every ticket goes back exactly once (installed or released), however the call
        # ends: a cancellation at the await, or an error, releases them all here; from
        # the call of read_many on, it gives back every ticket it decides (even when it
        # raises) and _install_unsure the rest.
        try:
            try:
                blobs = await tier.get_many(missing)
            except RedisUnavailableError:
                blobs = [None] * len(missing)
            rules = self._batch_rules()
            l1_open = c._l1_open()
            now = c._clock()
        except BaseException:
            for key, t in zip(missing, tickets):
                l1.release(t, key)
            raise
        stale = c._stale
        hits, decode_errors, refused, unsure = read_many(
            missing,
            blobs,
            tickets,
            c._codec,
            rules,
            l1,
            l1_open,
            now,
            c.settings.l1_max_ttl,
            stale,
            c.settings.fail_safe_max_age if stale is not None else 0.0,
            found,
        )
        if unsure:  # tag versions this instance does not know: read them (rare)
            hits += await self._install_unsure(found, missing, tickets, unsure)
        c._counters.decode_errors += decode_errors
        c._counters.fills_refused += refused
        c._counters.l2_hits += hits
        c._counters.l2_misses += len(missing) - hits
        return found

    def _batch_rules(self) -> BatchRules:
        """What withholds an L2 entry of a ``get_many`` batch (see :meth:`_withheld`) and
        the versions to check it against, read once for the whole batch."""
        c = self._cache
        outbox = c._invalidator.primary_outbox
        bus = c._bus
        suspect = bus is not None and (
            not bus.state.healthy or time.monotonic() < c._suspect_until
        )
        return BatchRules(
            c._versions.table() if self._versions_trusted() else None,
            c._suspect_before if suspect else -math.inf,
            outbox.blocks if outbox is not None and outbox.active else None,
        )

    async def _install_unsure(
        self,
        found: dict[str, Any],
        keys: list[str],
        tickets: list[int],
        unsure: list[tuple[int, Entry]],
    ) -> int:
        """Check the unsure entries of a batch against versions read from Redis now, and
        install the valid ones; every one of their tickets goes back. The hits."""
        c = self._cache
        l1 = c._l1
        pending = dict(unsure)
        hits = 0
        try:
            verdicts = await self._check_versions([entry for _, entry in unsure])
            for (i, entry), ok in zip(unsure, verdicts):
                del pending[i]
                if not ok or self._expired(entry):
                    l1.release(tickets[i], keys[i])
                    continue
                hits += 1
                self._install(tickets[i], keys[i], entry.value, entry)
                found[keys[i]] = entry.value
        finally:
            for i in pending:
                l1.release(tickets[i], keys[i])
        return hits

    async def get_or_set_after_l1(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: Any,
        tags: Iterable[str],
        limits: LoaderLimits | None = None,
        beta: float | None = None,
    ) -> Any:
        """:meth:`AsyncCache.get_or_set` after an L1 miss: single-flight in the process,
        then :meth:`_fill` (as a task of its own under ``limits``: ``loader_call.py``;
        ``beta``: early refresh's, None when off)."""
        c = self._cache
        validate_key(key)
        tag_tuple = c._tags(tags)
        check_ttl_option(ttl)  # a bad ttl fails before the loader runs, not after
        await c._bus_started()
        loads = c._loads
        while True:
            flight = None if limits is None else loads.new_flight(limits)
            slot: AsyncResultSlot[Any] = AsyncResultSlot() if flight is None else flight
            leader = c._flights.setdefault(key, slot)
            try:
                if leader is not slot:
                    c._counters.coalesced += 1
                    if flight is None and type(leader) is AsyncResultSlot:
                        return await leader.wait()
                    return await loads.follow(key, leader, limits)
                if flight is not None:
                    assert limits is not None
                    fill = functools.partial(self._fill, key, loader, ttl, tag_tuple, flight, beta)
                    return await loads.lead(key, flight, fill, limits)
            except _LeaderGone:
                # the leader was cancelled: a waiter that took over may have filled L1
                value = c._l1.peek(key, MISSING)
                if value is not MISSING:
                    return value
                continue  # take over, or follow the waiter that did
            try:
                value = await self._fill(key, loader, ttl, tag_tuple, beta=beta)
            except Exception as exc:
                slot.set_exception(exc)
                raise
            except BaseException:
                slot.set_exception(_LeaderGone())
                raise
            else:
                slot.set_result(value)
                return value
            finally:
                # ours unless a fork reset the map meanwhile: never drop another flight
                if c._flights.get(key) is slot:
                    del c._flights[key]

    async def _fill(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: Any,
        tags: tuple[str, ...],
        flight: AsyncFlight | None = None,
        beta: float | None = None,
    ) -> Any:
        """The leader's work on an L1 miss: L2, lease, loader, guarded writes (``flight``:
        under a time limit, as the flight's task)."""
        c = self._cache
        ticket = c._l1.ticket(key)
        ticket_open = True
        token: bytes | None = None
        stale: Entry | None = None  # a logically expired entry: fail-safe material
        outbox = c._invalidator.primary_outbox
        # a key with a pending write of ours: L2 may hold the old value, so neither read
        # it nor fill it; the loader's value goes to L1 only
        skip_l2 = outbox is not None and outbox.active and outbox.blocks(key, tags)
        try:
            entry = None
            stamps: Stamps | None = None  # read with the lease (see _lookup), else below
            if not skip_l2:
                lease_state, stale, stamps = await self._lookup(key, tags, flight)
                if not isinstance(lease_state, Entry):
                    token = lease_state
                else:  # a hit, or a holder elsewhere filled it while we waited
                    entry = lease_state
            if entry is not None:
                c._counters.l2_hits += 1
                ticket_open = False
                self._install(ticket, key, entry.value, entry)
                if beta is not None:
                    c._refresher.on_l2_hit(key, entry, loader, ttl, tags, beta)
                return entry.value
            c._counters.l2_misses += 1
            # the tag versions *before* the loader reads: an invalidation of a tag while
            # it loads makes this entry stale at birth (a miss for every reader)
            if token is not None and stamps is None:
                stamps = await self._stamps(tags)
            started = perf_counter()
            value, is_stale = await self._load(key, loader, stale, flight)
            load_time = perf_counter() - started  # stored in the entry (early refresh)
            if is_stale:
                return value
            ttl_s = c._ttl_for(value, ttl, key)
            if ttl_s == 0:
                return value
            now = c._clock()
            if token is not None and stamps is not None:
                assert c._tier is not None
                blob = c._encode_new(key, value, ttl_s, tags, stamps, now, load_time)
                try:
                    stored = await c._tier.write_if_lease(
                        key, token, blob, c.settings.physical_ttl(ttl_s), tags
                    )
                except RedisUnavailableError as exc:
                    stored = True  # unknown outcome; nothing says the lease was revoked
                    if exc.transient:
                        # the lease may still be there: give it back (by its token, so
                        # harmless if the write ran) through the outbox once Redis answers
                        c._invalidator.release_lease_later(key, token)
                token = None
                if not stored:
                    # revoked: the key was written or invalidated while we loaded
                    c._counters.fills_refused += 1
                    return value
            ticket_open = False
            self._install_value(ticket, key, value, ttl_s, tags)
            if beta is not None:
                c._refresher.note(key, now, now + ttl_s, load_time)
            return value
        finally:
            if ticket_open:
                c._l1.release(ticket, key)
            if token is not None:
                await self._give_back_lease(key, token)

    async def _give_back_lease(self, key: str, token: bytes) -> None:
        c = self._cache
        assert c._tier is not None
        try:
            await c._tier.release_lease(key, token)
        except RedisUnavailableError as exc:
            if exc.transient:  # else it expires by itself after lease_ttl
                c._invalidator.release_lease_later(key, token)

    async def _lookup(
        self, key: str, tags: tuple[str, ...], flight: AsyncFlight | None = None
    ) -> tuple[bytes | Entry | None, Entry | None, Stamps | None]:
        """A miss's first step, one round trip in the common cases (``READ_ELSE_LEASE``):
        the valid, fresh L2 entry (a hit), else the lease token, else None (see
        :meth:`_take_lease`); an expired entry found on the way (fail-safe material); and,
        when that step took the lease, the stamps of the new entry (``tags``' versions and
        the epoch): known here (a healthy bus keeps them) or, on a standalone server, read
        in that same atomic step (``READ_ELSE_LEASE_VERSIONS``); else None.
        An entry that is there but expired or invalidated, or a lease held elsewhere,
        continues as :meth:`_take_lease`. Under a time limit, a miss notes the flight's
        fail-safe value before any wait (a soft timeout may answer with it)."""
        c = self._cache
        tier = c._tier
        if tier is None:
            self._note_fallback(flight, key, None)
            return None, None, None
        candidate = os.urandom(12)
        # stamps sampled before the lease are no later than the loader's start: safe
        known = self._known_stamps(tags)
        names = None if known is not None or not tier.versions_with_lease else [None, *tags]
        generation = c._versions.generation
        current: dict[str | None, int] | None = None
        try:
            if names is None:
                blob, taken = await tier.read_else_lease(key, candidate, c.settings.lease_ttl)
            else:
                blob, taken, current = await tier.read_else_lease_versions(
                    key, candidate, c.settings.lease_ttl, names
                )
        except RedisUnavailableError as exc:
            if exc.transient:
                c._invalidator.release_lease_later(key, candidate)
            return None, None, None
        except BaseException:
            # cancelled with the command perhaps sent: it may still take the lease
            c._invalidator.release_lease_later(key, candidate, unreachable=False)
            raise
        if current is not None and self._versions_trusted():
            c._versions.store(generation, current)
        if taken:
            self._note_fallback(flight, key, None)
            # no entry: ours to fill, stamped with the versions read as the lease was taken
            if current is not None:
                known = tuple(current[tag] for tag in tags), current[None]
            return candidate, None, known
        if blob is None:  # another holder is filling it: wait for its write
            self._note_fallback(flight, key, None)
            return await self._take_lease(key, flight, waited=True), None, None
        entry = self._decode(key, blob)
        if entry is not None:
            entry = await self._valid(key, entry, current)
        if entry is not None and not self._expired(entry):
            return entry, None, None
        # there but expired (kept for fail-safe) or invalidated: the lease regardless
        self._note_fallback(flight, key, entry)
        return await self._take_lease(key, flight), entry, None

    def _known_stamps(self, tags: tuple[str, ...]) -> Stamps | None:
        """The versions of ``tags`` and the epoch as this instance knows them, or None if
        it does not (one unknown, or no healthy bus to keep them current)."""
        return self._cache._versions.stamps(tags) if self._versions_trusted() else None

    def _note_fallback(self, flight: AsyncFlight | None, key: str, stale: Entry | None) -> None:
        if flight is not None and flight.fallback is MISSING:
            flight.fallback = self._fail_safe_value(key, stale)

    async def _take_lease(
        self, key: str, flight: AsyncFlight | None = None, waited: bool = False
    ) -> bytes | Entry | None:
        """The lease token; or the entry a holder elsewhere wrote while we waited; or None
        (no Redis, or ``lease_wait`` passed: load without writing L2). Under a hard
        timeout the wait ends at the flight's deadline with :class:`LoaderTimeout`.
        ``waited``: the lease was just seen held elsewhere (pause before the first try)."""
        c = self._cache
        if c._tier is None:
            return None
        deadline = c._timer() + c.settings.lease_wait
        pause = _POLL_FIRST
        if waited:
            c._counters.lease_waits += 1
            await async_sleep(pause)
            pause = min(pause * 2, _POLL_MAX)
        while True:
            candidate = os.urandom(12)
            try:
                blob, taken = await c._tier.read_or_lease(key, candidate, c.settings.lease_ttl)
            except RedisUnavailableError as exc:
                if exc.transient:
                    c._invalidator.release_lease_later(key, candidate)
                return None
            except BaseException:
                # cancelled with the command perhaps sent: it may still take the lease
                c._invalidator.release_lease_later(key, candidate, unreachable=False)
                raise
            token = candidate if taken else None
            # A token we do not hand to the caller is given back on every way out (a
            # cancellation in _valid included): a lease without a holder would make
            # every reader of the key wait lease_wait for nothing.
            handed_over = False
            try:
                entry = self._decode(key, blob, count=False)
                if entry is not None:
                    entry = await self._valid(key, entry)  # a tag may have been invalidated since
                if entry is not None and not self._expired(entry):
                    return entry
                if token is not None:
                    handed_over = True
                    return token
            finally:
                if token is not None and not handed_over:
                    await self._give_back_lease(key, token)
            if pause == _POLL_FIRST:
                c._counters.lease_waits += 1
            if c._timer() >= deadline:
                return None
            if flight is not None and flight.hard_at is not None:
                flight.loading = True  # another process's loader, behind its lease
                left = flight.remaining()
                assert left is not None
                if left <= 0:
                    c._loads.expire(
                        key, flight, "another process's lease outlived the hard timeout"
                    )
                    raise LoaderTimeout(
                        f"another process's load of {key!r} did not finish within the hard timeout"
                    )
                pause = min(pause, left)
            await async_sleep(pause)
            pause = min(pause * 2, _POLL_MAX)

    async def _load(
        self,
        key: str,
        loader: Callable[[], Any],
        stale: Entry | None,
        flight: AsyncFlight | None = None,
    ) -> tuple[Any, bool]:
        """Run the loader (within the flight's hard deadline, behind the loader's
        breaker); with fail-safe, answer its error with the last known value."""
        c = self._cache
        breaker = c._loader_breaker
        if breaker is not None and not breaker.allow():
            c._loads.counters.rejected += 1
            fallback = self._fail_safe_value(key, stale)
            if fallback is MISSING:
                raise LoaderUnavailable(
                    f"the loader's circuit breaker is open (namespace "
                    f"{c.settings.namespace!r}): {key!r} was not loaded and no fail-safe "
                    "value was at hand"
                )
            c._counters.stale_served += 1
            return fallback, True
        c._counters.loads += 1
        start = perf_counter()
        try:
            if flight is None or flight.hard_at is None:
                value = await async_call_loader(loader)
            else:
                flight.loading = True
                value = await async_call_loader_within(
                    loader,
                    flight.hard_at - time.monotonic(),
                    lambda: LoaderTimeout(
                        f"the loader of {key!r} was cancelled at the hard timeout"
                    ),
                )
        except LoaderTimeout:
            # the flight's hard deadline: its callers answer it (loader_call.py)
            assert flight is not None
            c._loads.expire(key, flight, "no answer within the hard timeout")
            if breaker is not None:
                breaker.abandon()
            raise
        except Exception as exc:
            if breaker is not None:
                breaker.record_failure(describe_failure(exc))
            fallback = self._fail_safe_value(key, stale)
            if fallback is MISSING:
                raise
            c._counters.stale_served += 1
            return fallback, True
        except BaseException:
            if breaker is not None:
                breaker.abandon()
            raise
        else:
            if breaker is not None:
                breaker.record_success()
            return value, False
        finally:
            c._counters.load_latency.record(perf_counter() - start)

    def _fail_safe_value(self, key: str, stale: Entry | None) -> Any:
        c = self._cache
        if c._stale is None:
            return MISSING
        value = c._stale.peek(key, MISSING)
        if value is not MISSING:
            return value
        if (
            stale is not None
            and stale.expires_at is not None
            and c._clock() - stale.expires_at <= c.settings.fail_safe_max_age
        ):
            return stale.value
        return MISSING

    async def _read_l2(self, key: str) -> Entry | None:
        """The decoded L2 entry of ``key`` (fresh or not), or None."""
        c = self._cache
        if c._tier is None:
            return None
        try:
            blob = await c._tier.get(key)
        except RedisUnavailableError:
            return None
        entry = self._decode(key, blob)
        return None if entry is None else await self._valid(key, entry)

    def _versions_trusted(self) -> bool:
        """The version table is only used while the bus (which keeps it current) is healthy."""
        c = self._cache
        bus = c._bus
        return bus is not None and bus.state.healthy

    def _withheld(self, key: str, entry: Entry) -> bool:
        """Whether an L2 entry must not be served now: this instance has a pending write
        it may predate (read-your-writes), or the bus was deaf lately and it was written
        before the bus heard again (another instance's outbox may be about to delete it).
        Two attribute reads while neither applies."""
        c = self._cache
        if self._pending_here(key, entry):
            return True
        if entry.created_at < c._suspect_before:
            bus = c._bus
            return bus is not None and (
                not bus.state.healthy or time.monotonic() < c._suspect_until
            )
        return False

    def _pending_here(self, key: str, entry: Entry) -> bool:
        """Whether this instance has a write of ``key`` (or of one of its tags) in its
        outbox that ``entry`` may predate: it is then not what this instance last wrote."""
        outbox = self._cache._invalidator.primary_outbox
        return outbox is not None and outbox.active and outbox.blocks(key, entry.tags)

    async def _valid(
        self, key: str, entry: Entry, current: dict[str | None, int] | None = None
    ) -> Entry | None:
        """``entry`` if it may be served: not withheld (see :meth:`_withheld`), and none
        of its tags invalidated (nor the epoch raised) since it was written; else None
        (a miss). ``current``: versions read from Redis with the entry, used if they
        cover its tags (else they are read now)."""
        c = self._cache
        if self._withheld(key, entry):
            return None
        if self._versions_trusted():
            ok = c._versions.check(entry)
            if ok is not None:
                return entry if ok else None
        if current is not None and all(tag in current for tag in entry.tags):
            return entry if stamped_with(entry, current) else None
        return entry if (await self._check_versions([entry]))[0] else None

    async def _check_versions(self, entries: list[Entry]) -> list[bool]:
        """Check entries against versions read from Redis now (one round trip); all
        invalid if Redis cannot say."""
        c = self._cache
        assert c._tier is not None
        names: dict[str | None, None] = {None: None}
        for entry in entries:
            names.update(dict.fromkeys(entry.tags))
        generation = c._versions.generation
        try:
            current = await c._tier.fetch_versions(list(names))
        except RedisUnavailableError:
            return [False] * len(entries)
        if self._versions_trusted():
            c._versions.store(generation, current)
        return [stamped_with(entry, current) for entry in entries]

    async def _stamps(self, tags: tuple[str, ...]) -> Stamps | None:
        """The current versions of ``tags`` and the epoch, to stamp a new entry with; None
        if Redis cannot say (the entry is then not written to L2)."""
        c = self._cache
        known = self._known_stamps(tags)
        if known is not None:
            return known
        trusted = self._versions_trusted()
        assert c._tier is not None
        generation = c._versions.generation
        try:
            current = await c._tier.fetch_versions([None, *tags])
        except RedisUnavailableError:
            return None
        if trusted:
            c._versions.store(generation, current)
        return tuple(current[tag] for tag in tags), current[None]

    def _decode(self, key: str, blob: bytes | None, *, count: bool = True) -> Entry | None:
        """The entry in ``blob``, or None; undecodable bytes are a miss (and counted once
        per operation: re-reads of the same bytes pass ``count=False``)."""
        c = self._cache
        if blob is None:
            return None
        try:
            return c._codec.decode(key, blob)
        except Exception:  # CorruptEntryError, or a user decoder's bug: a miss either way
            if count:
                c._counters.decode_errors += 1
            return None

    def _expired(self, entry: Entry) -> bool:
        c = self._cache
        return entry.expires_at is not None and entry.expires_at <= c._clock()

    def _install(self, ticket: int, key: str, value: Any, entry: Entry) -> None:
        """Put an L2 entry into L1 for what remains of its L2 life (at most l1_max_ttl)."""
        c = self._cache
        remaining = (
            c.settings.l1_max_ttl if entry.expires_at is None else entry.expires_at - c._clock()
        )
        if remaining <= 0:
            c._l1.release(ticket, key)
            return
        self._install_value(ticket, key, value, remaining, entry.tags)

    def _install_value(
        self, ticket: int, key: str, value: Any, ttl: float, tags: tuple[str, ...]
    ) -> bool:
        """Install through the L1 guard (and the fail-safe store if the guard allows);
        False if the guard refused it (an invalidation since the ticket), or L1 is shut."""
        c = self._cache
        if not c._l1_open():
            c._l1.release(ticket, key)
            return False
        if c._l1.install(ticket, key, value, ttl=min(ttl, c.settings.l1_max_ttl), tags=tags):
            if c._stale is not None:
                c._stale.set(key, value, ttl=ttl + c.settings.fail_safe_max_age, tags=tags)
            return True
        c._counters.fills_refused += 1
        return False
