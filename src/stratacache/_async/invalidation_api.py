"""``AsyncCache``'s invalidation API: by key, tag, pattern, dependency and rule, and what
invalidation leaves behind to look at (dead letters, the audit stream, a tag's keys).

The work is the invalidator's (``invalidator.py``: the outbox, the cascade, the audit
stream, the bus message); these methods check their arguments, start the bus if it is not
running, and apply ``on_write_error``: with ``"raise"`` the primary Redis's failure is
raised once the call is over, though what failed waits in the outbox all the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._errors import RedisUnavailableError
from .._invalidation import AuditRecord, InvalidationRule
from .._keys import validate_key, validate_tag
from .._options import Duration, to_seconds
from .._outbox import DeadLetter
from .cache_base import AsyncCacheBase
from .invalidator import watch_failures, watched_failures


class AsyncCacheInvalidation(AsyncCacheBase):
    """The invalidation members of ``AsyncCache``."""

    async def invalidate(self, key: str, reason: str | None = None) -> int:
        """Invalidate ``key`` everywhere: L1 here, L2 (and its lease), every other
        instance's L1 through the bus; then, transitively, every key that depends on it
        (:meth:`add_dependency`), and the rules it triggers (:meth:`add_rule`).

        Returns how many entries were removed (the key and its dependents). A Redis
        failure is not raised: the invalidation is retried in the background (see
        :meth:`dead_letters`). ``reason`` goes to the audit stream.
        """
        validate_key(key)
        return int(await self._run_invalidation(self._invalidator.invalidate_keys, reason, [key]))

    async def invalidate_related(self, key: str, reason: str | None = None) -> int:
        """Invalidate ``key`` and everything that depends on it, transitively (the seed's
        ``InvalidateRelated``; :meth:`invalidate` cascades the same way). A dependency
        cycle ends the cascade where it closes and is counted (``cycles_detected``)."""
        validate_key(key)
        return int(
            await self._run_invalidation(
                self._invalidator.invalidate_keys, reason, [key], kind="related"
            )
        )

    async def invalidate_tag(self, tag: str, reason: str | None = None) -> int:
        """Invalidate every entry tagged ``tag`` or a tag below it (``product`` reaches
        ``product:42``); tag names are literal, never patterns.

        Effective at once and O(1) whatever the number of keys: the tag's version is
        raised and entries stamped with an older one are misses; their L2 keys are then
        deleted in the background, in bounded chunks. Returns the number of keys written
        with the tag since its last invalidation (some may have expired since).
        """
        return await self.invalidate_tags(tag, reason=reason)

    async def invalidate_tags(self, *tags: str, reason: str | None = None) -> int:
        """:meth:`invalidate_tag` for several tags: one pipeline and one bus message."""
        checked = [validate_tag(tag) for tag in tags]
        if not checked:
            return 0
        return int(await self._run_invalidation(self._invalidator.invalidate_tags, reason, checked))

    async def invalidate_pattern(self, glob: str, reason: str | None = None) -> int:
        """Invalidate every key matching ``glob`` (Redis syntax: ``*``, ``?``, ``[...]``,
        ``\\x``): L1 here and everywhere at once, L2 by a chunked ``SCAN`` + ``UNLINK`` on
        every master (loads in flight lose their lease too). Returns the number of L2
        entries removed (L1's count without Redis). Keys longer than the hashing
        threshold (see ``KeySpace``) cannot be matched in L2."""
        validate_key(glob)
        return int(await self._run_invalidation(self._invalidator.invalidate_pattern, reason, glob))

    async def invalidate_all(self, reason: str | None = None) -> None:
        """Make every entry of the namespace a miss, on every instance, in O(1) (the
        namespace epoch is raised; every L1 is flushed)."""
        await self._run_invalidation(self._invalidator.bump_epoch, reason)

    async def add_dependency(self, key: str, *depends_on: str, ttl: Duration | None = None) -> None:
        """Record (in Redis) that ``key`` is derived from each of ``depends_on``: whenever
        one of them is invalidated, so is ``key`` (and what depends on ``key``).

        The dependency expires with the entry it protects (so Redis does not keep edges
        of keys long gone): it lasts as long as the entry of ``key`` stored now, and at
        least ``ttl`` (default: ``default_ttl``; plus the fail-safe window when enabled),
        the life of an entry of ``key`` written from now on. An entry of ``key`` that is
        written later and outlives it is not reached: declare the dependency again after
        such a write (declaring it again only ever extends it)."""
        validate_key(key)
        parents = [validate_key(parent) for parent in depends_on]
        if not parents:
            raise ValueError("add_dependency needs at least one key to depend on")
        lifetime = (
            self.settings.default_ttl if ttl is None else to_seconds(ttl, "ttl", allow_zero=False)
        )
        if self._tier is None:
            raise ValueError("dependencies are kept in Redis: this cache has none")
        await self._invalidator.add_dependency(key, parents, self.settings.physical_ttl(lifetime))

    async def remove_dependency(self, key: str, *depends_on: str) -> None:
        """Forget that ``key`` depends on each of ``depends_on``."""
        validate_key(key)
        parents = [validate_key(parent) for parent in depends_on]
        if self._tier is None:
            raise ValueError("dependencies are kept in Redis: this cache has none")
        await self._invalidator.remove_dependency(key, parents)

    def add_rule(self, rule: InvalidationRule) -> None:
        """Add an invalidation rule: invalidating a key that matches ``rule.trigger``
        (via :meth:`invalidate`, :meth:`invalidate_related` or another rule) also
        invalidates its targets, now and again after ``rule.delay`` if it is set. Rules
        live in this instance."""
        self._invalidator.add_rule(rule)

    def dead_letters(self) -> list[DeadLetter]:
        """Operations Redis refused for good (``NOPERM``, ``WRONGTYPE``, a script error),
        and those still pending when :meth:`close` gave up; transient failures never
        land here (they wait in the outbox until Redis answers)."""
        return self._invalidator.dead_letters()

    async def replay_dead_letters(self) -> int:
        """Apply every dead letter again; returns how many succeeded (one that fails with a
        transient error waits in the outbox, one refused again is a dead letter again)."""
        return await self._invalidator.replay_dead_letters()

    async def audit_log(self, count: int = 100) -> list[AuditRecord]:
        """The newest ``count`` records of the audit stream (every instance's), newest
        first: instance, action, target, count, time and reason of each invalidation."""
        if type(count) is not int or count < 1:
            raise ValueError(f"count must be an int >= 1, got {count!r}")
        try:
            return await self._invalidator.audit_log(count)
        except RedisUnavailableError:
            return []

    async def keys_for_tag(self, tag: str) -> list[str]:
        """The keys written with ``tag`` (or a tag below it) since its last invalidation
        (the seed's ``TagStore.GetKeysByTag``; some may have expired since)."""
        validate_tag(tag)
        if self._tier is None:
            return sorted(k for k in self._l1.keys_for_tag(tag) if isinstance(k, str))
        return await self._tier.tag_members(tag)

    async def _run_invalidation(
        self, invalidation: Callable[..., Any], reason: str | None, *args: Any, **kwargs: Any
    ) -> Any:
        """Start the bus if it is not running, then run ``invalidation(*args, reason,
        **kwargs)`` as :meth:`_strict` does."""
        await self._bus_started()
        return await self._strict(invalidation, *args, self._reason(reason), **kwargs)

    async def _strict(self, invalidation: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run an invalidation; with ``on_write_error="raise"``, raise the primary Redis's
        failure once the call is over (what failed waits in the outbox all the same)."""
        if not self._raise_on_write_error:
            return await invalidation(*args, **kwargs)
        token = watch_failures()
        try:
            result = await invalidation(*args, **kwargs)
        finally:
            failures = watched_failures(token)
        if failures:
            raise RedisUnavailableError(
                f"{len(failures)} Redis step(s) failed; queued in the outbox: {failures[0]}"
            ) from failures[0]
        return result

    @staticmethod
    def _reason(reason: str | None) -> str | None:
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"reason must be a str or None, not {type(reason).__name__}")
        return reason

