"""Early refresh (XFetch, ``_xfetch.py``) of ``AsyncCache``: a read that finds a value
close to its expiry serves it at once and recomputes it in the background.

* **When.** ``get_or_set`` and ``cached`` with ``early_refresh`` on (per call, per
  decorator, or the cache's default) test every hit with XFetch: on L1 hits against the
  expiry and load time this process noted when it filled or read the entry (``note``),
  on L2 hits against the envelope's ``expires_at`` and ``load_time``. An L1 entry this
  process never noted (filled by a call without early refresh, or by ``get``) is not
  refreshed early: it expires as usual.
* **One refresh per key in the fleet.** In the process, a key has at most one refresh
  running (``_running``). Across processes the refresh goes through the key's lease
  (``READ_OR_LEASE``): only the process that takes it runs the loader; one that finds
  the lease taken leaves it to the holder; one that takes it but finds in L2 an entry
  newer than the one it holds (another process refreshed first) installs that entry
  instead of loading.
* **Guards.** The refresh is a fill like any other: L1 through a ticket taken before the
  loader runs, L2 only while its lease survives, stamped with the tag versions read
  before loading. An invalidation (or a ``set``) of the key or a tag during the refresh
  wins: the refreshed value is dropped, not installed.
* **Faults.** A refresh that fails (loader error, Redis not answering) is counted in
  ``early_refresh_failures`` and logged (rate limited); the current value stays served
  until it expires, when the normal miss path takes over. A Redis write whose outcome
  is unknown is not installed in L1 either.
* **One reader enters.** ``due`` holds each noted key's beta-1 refresh time, the only
  thing ``get_or_set``'s inline check reads. The reader that finds it come takes the key
  out of ``due`` before starting the job, so every other reader of the key, in every
  thread, returns from the inline check as from a plain hit while the refresh runs; the
  job's end puts the time back (the new entry's, or the old one's if nothing replaced
  it). Without that, each read of the refresh window (a load time and a few round trips,
  a few % of a hot key's reads) paid the refresher's checks: the hot key's p99 was theirs.
* **Quiet periods.** So that a hot key does not start a job on every read meanwhile, a
  key is not tried again in this process for ``_FAILED_QUIET`` seconds after a failed
  refresh, and for one load time (at least ``_BUSY_QUIET``) after finding the lease
  taken: beta-1 readers by the time put back in ``due`` (the cache's ``clock``), other
  betas by ``_quiet`` (its ``timer``).
* **Lifecycle.** Jobs are asyncio tasks (``Cache``: daemon threads), at most
  ``_LIMIT`` at a time (a refresh that cannot start is skipped: a later read tries
  again). ``close`` cancels the tasks and waits for them (a sync cache waits for its
  threads, up to ``close_timeout``); a cancelled refresh gives its lease back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .._background import AsyncBackground
from .._codec import Entry
from .._errors import RedisUnavailableError
from .._logging import LogLimiter
from .._primitives import async_call_loader
from .._xfetch import DEFAULT_BETA, draw_lead, early_beta

if TYPE_CHECKING:
    from .cache import AsyncCache

_log = logging.getLogger("stratacache.refresh")
_LIMIT = 16  # refreshes running at a time, per cache
_NOTED_LIMIT_FACTOR = 2  # expiries noted: at most this many times l1_maxsize
_FAILED_QUIET = 1.0  # seconds without a new try after a failed refresh
_BUSY_QUIET = 0.01  # at least this long after finding another process refreshing


class _Refused(Exception):
    """Internal: the refreshed value lost a race (or its write's outcome is unknown)."""


class AsyncEarlyRefresh:
    """Early refresh for one cache (see the module notes)."""

    def __init__(self, cache: AsyncCache, default: bool | float, rand: Callable[[], float]) -> None:
        self._cache = cache
        self.default_beta = early_beta(default)
        self._rand = rand
        self._clock = cache._clock
        # key -> (created_at, expires_at, lead, load_time) of the entry this process holds: it is
        # refreshed from expires_at - lead * beta on (lead: load time x -ln(draw))
        self._noted: dict[str, tuple[float, float, float, float]] = {}
        # key -> expires_at - lead: the refresh time at beta 1, looked up by the cache's
        # hit path itself (kept in step with _noted; cleared in place, never rebound)
        self.due: dict[str, float] = {}
        self._noted_limit = _NOTED_LIMIT_FACTOR * cache.settings.l1_maxsize
        self._running: set[str] = set()
        self._quiet: dict[str, float] = {}  # key -> timer() before which not to try
        self._jobs = AsyncBackground(_LIMIT)
        self._warnings = LogLimiter(_log, 10.0)
        self.refreshed = 0  # loader ran and its value was stored
        self.adopted = 0  # another process had refreshed it: its entry installed
        self.failures = 0

    def beta(self, option: bool | float | None) -> float | None:
        """The beta a call's ``early_refresh`` asks for (``None``: the cache's default)."""
        return self.default_beta if option is None else early_beta(option)

    def note(self, key: str, created_at: float, expires_at: float | None, load_time: float) -> None:
        """Remember the entry of ``key`` this process now holds (for its L1 hits), with
        its XFetch draw: one per entry and process (see ``_xfetch.py``)."""
        noted = self._noted
        if expires_at is None or load_time <= 0.0:
            noted.pop(key, None)  # never refreshed early
            self.due.pop(key, None)
            return
        if len(noted) >= self._noted_limit and key not in noted:
            noted.clear()  # crude but bounded: forgotten keys just expire as usual
            self.due.clear()
        lead = load_time * draw_lead(self._rand)
        noted[key] = (created_at, expires_at, lead, load_time)
        self.due[key] = expires_at - lead

    def on_l1_hit(
        self, key: str, loader: Callable[[], Any], ttl: Any, tags: Iterable[str], beta: float
    ) -> None:
        """An L1 hit with early refresh on: start a refresh if the entry's refresh time
        (drawn by ``note``) has come."""
        if beta == DEFAULT_BETA:
            self._on_due(key, loader, ttl, tags)
            return
        noted = self._noted.get(key)
        if noted is None:
            return
        created_at, expiry, lead, _ = noted
        if self._clock() < expiry - lead * beta or key in self._running or self._quieted(key):
            return
        self._start(key, loader, ttl, tags, created_at)

    def _on_due(self, key: str, loader: Callable[[], Any], ttl: Any, tags: Iterable[str]) -> None:
        """``on_l1_hit`` at beta 1: the reader that finds the refresh time ``due`` has
        come takes it out of ``due`` (one dict pop, atomic under the GIL), so the other
        readers of the key find none and return at once from ``get_or_set``'s inline
        check; the job puts it back when it ends without a new entry (see ``_refresh``)."""
        due = self.due.get(key)
        if due is None or self._clock() < due:
            return
        if self.due.pop(key, None) is None:
            return  # another reader took it first: it starts the refresh
        noted = self._noted.get(key)
        if noted is None or key in self._running:
            return  # a fill noted the key while its refresh runs: the job's end puts it back
        self._start(key, loader, ttl, tags, noted[0])

    def on_l2_hit(
        self,
        key: str,
        entry: Entry,
        loader: Callable[[], Any],
        ttl: Any,
        tags: Iterable[str],
        beta: float,
    ) -> None:
        """An L2 hit (installed in L1) with early refresh on: note it (a new draw), and
        start a refresh if its refresh time has come."""
        self.note(key, entry.created_at, entry.expires_at, entry.load_time)
        self.on_l1_hit(key, loader, ttl, tags, beta)

    def _load_time(self, key: str) -> float:
        noted = self._noted.get(key)
        return noted[3] if noted is not None else 0.0

    def _quieted(self, key: str) -> bool:
        quiet = self._quiet
        if not quiet:
            return False
        until = quiet.get(key)
        if until is None:
            return False
        if self._cache._timer() < until:
            return True
        del quiet[key]
        return False

    def _quiet_for(self, key: str, seconds: float) -> None:
        if len(self._quiet) >= self._noted_limit:
            self._quiet.clear()
        self._quiet[key] = self._cache._timer() + seconds

    def running(self) -> int:
        """Refresh jobs running now."""
        return len(self._jobs)

    def reset(self) -> None:
        """A forked child or a new event loop: the parent's jobs are not ours."""
        self._running = set()
        self._noted = {}
        self.due.clear()
        self._quiet = {}
        self._jobs.reset()

    async def aclose(self, timeout: float) -> None:
        """Cancel the running refreshes and wait for them."""
        await self._jobs.aclose(timeout)

    def _start(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: Any,
        tags: Iterable[str],
        created_at: float,
    ) -> None:
        """Start the refresh of ``key``; its ``due`` entry stays out until the job ends."""
        self._running.add(key)
        self.due.pop(key, None)
        started = self._jobs.spawn(
            lambda: self._refresh(key, loader, ttl, tags, created_at), "stratacache-refresh"
        )
        if not started:
            self._running.discard(key)
            self._due_again(key, 0.0)  # a later read tries again

    def _due_again(self, key: str, not_before: float) -> None:
        """A refresh of ``key`` ended: put its refresh time back in ``due`` (the noted
        entry's, an older one's if the refresh did not replace it, but not before
        ``not_before``), unless a reader already finds one there."""
        noted = self._noted.get(key)
        if noted is not None:
            self.due.setdefault(key, max(noted[1] - noted[2], not_before))

    async def _refresh(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: Any,
        tags: Iterable[str],
        created_at: float,
    ) -> None:
        quiet = 0.0
        try:
            quiet = await self._refresh_once(key, loader, ttl, tags, created_at)
        except _Refused:
            pass
        except Exception as exc:
            self.failures += 1
            quiet = _FAILED_QUIET
            self._quiet_for(key, quiet)
            self._warnings.warning(
                "early refresh of %r failed; its current value stays served until it "
                "expires, then the next read loads it: %r",
                key,
                exc,
            )
        finally:
            self._running.discard(key)
            self._due_again(key, self._clock() + quiet if quiet else 0.0)

    async def _refresh_once(
        self, key: str, loader: Callable[[], Any], ttl: Any, tags: Iterable[str], created_at: float
    ) -> float:
        """One refresh; returns how long the key should rest before another try (0: no
        rest)."""
        c = self._cache
        reads = c._reads
        tag_tuple = c._tags(tags)
        outbox = c._invalidator.primary_outbox
        if outbox is not None and outbox.active and outbox.blocks(key, tag_tuple):
            return 0.0  # a write of ours is pending: the miss path handles the key (L1 only)
        ticket = c._l1.ticket(key)
        ticket_open = True
        token: bytes | None = None
        try:
            if c._tier is not None:
                token, entry = await self._lease(key)
                if entry is not None and entry.created_at > created_at:
                    # refreshed elsewhere since we read it: take that one, load nothing
                    if token is not None:
                        await reads._give_back_lease(key, token)
                        token = None
                    ticket_open = False
                    reads._install(ticket, key, entry.value, entry)
                    self.note(key, entry.created_at, entry.expires_at, entry.load_time)
                    self.adopted += 1
                    return 0.0
                if token is None:
                    # another process holds the lease: it is loading the key
                    busy = max(_BUSY_QUIET, self._load_time(key))
                    self._quiet_for(key, busy)
                    return busy
            stamps = await reads._stamps(tag_tuple) if token is not None else None
            if token is not None and stamps is None:
                raise RedisUnavailableError("tag versions unavailable: refresh not written")
            c._counters.loads += 1
            start = perf_counter()
            try:
                value = await async_call_loader(loader)
            finally:
                load_time = perf_counter() - start
                c._counters.load_latency.record(load_time)
            ttl_s = c._ttl_for(value, ttl, key)
            if ttl_s == 0:
                return 0.0
            now = c._clock()
            if token is not None:
                assert c._tier is not None
                blob = c._encode_new(key, value, ttl_s, tag_tuple, stamps, now, load_time)
                stored = await c._tier.write_if_lease(
                    key, token, blob, c.settings.physical_ttl(ttl_s), tag_tuple
                )
                token = None
                if not stored:
                    c._counters.fills_refused += 1
                    raise _Refused  # the key was written or invalidated meanwhile
            ticket_open = False
            if reads._install_value(ticket, key, value, ttl_s, tag_tuple):
                self.note(key, now, now + ttl_s, load_time)
                self.refreshed += 1
            return 0.0
        finally:
            if ticket_open:
                c._l1.release(ticket, key)
            if token is not None:
                await reads._give_back_lease(key, token)

    async def _lease(self, key: str) -> tuple[bytes | None, Entry | None]:
        """Try once to take the lease of ``key``: (the token or None, the valid entry L2
        holds now or None)."""
        c = self._cache
        assert c._tier is not None
        reads = c._reads
        candidate = os.urandom(12)
        try:
            blob, taken = await c._tier.read_or_lease(key, candidate, c.settings.lease_ttl)
        except RedisUnavailableError as exc:
            if exc.transient:
                c._invalidator.release_lease_later(key, candidate)
            raise
        except BaseException:
            # cancelled with the command perhaps sent: it may still take the lease
            c._invalidator.release_lease_later(key, candidate, unreachable=False)
            raise
        token = candidate if taken else None
        try:
            entry = reads._decode(key, blob, count=False)
            if entry is not None:
                entry = await reads._valid(key, entry)
            if entry is not None and reads._expired(entry):
                entry = None
        except BaseException:
            if token is not None:
                await reads._give_back_lease(key, token)
            raise
        return token, entry
