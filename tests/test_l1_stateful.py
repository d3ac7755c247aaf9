"""Random operation sequences against a plain model of the L1 (both implementations).

The model is deliberately naive: a dict in write order, a list in recency order, linear
scans for tags and deadlines, and an event log for the stale-fill guard (a ticket is
refused if any later event touches its key, one of its tags, or clears the cache). It
shares no code with either implementation.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)
from hypothesis.stateful import run_state_machine_as_test as run_machine

from l1_impls import IMPL_IDS, FakeClock, Recorder, load_l1

KEYS = st.sampled_from(["a", "b", "c", "ab", "ba", 7])
TAG_NAMES = ["x", "y", "z"]
TAGS = st.lists(st.sampled_from(TAG_NAMES), max_size=3)
TTLS = st.sampled_from([None, None, 0, 0.5, 1, 2, 3])
WEIGHTS = st.integers(0, 3)
GLOBS = st.sampled_from(["a*", "*b", "?", "[ab]*", "*", "zz"])


@pytest.fixture(params=IMPL_IDS)
def l1_impl(request: pytest.FixtureRequest) -> Any:
    """Each L1 implementation in turn."""
    return load_l1(request.param)


@dataclass
class Entry:
    value: Any
    deadline: float
    tags: tuple[str, ...]
    weight: int
    seq: int


class Model:
    """What the L1 should do, written as plainly as possible."""

    def __init__(self, maxsize: int, max_weight: int | None, clock: FakeClock) -> None:
        self.maxsize = maxsize
        self.max_weight = max_weight
        self.clock = clock
        self.entries: dict[Any, Entry] = {}  # in order of the last write
        self.recency: list[Any] = []  # least recently used first
        self.seq = 0
        self.counters = dict.fromkeys(
            ("hits", "misses", "evictions", "expirations", "invalidations"), 0
        )
        self.notes: list[tuple[Any, Any, str]] = []
        self.log: list[tuple[Any, ...]] = []  # ("key", k) / ("tag", t) / ("glob", g) / ("clear",)

    # helpers
    def expired(self, entry: Entry) -> bool:
        return entry.deadline <= self.clock.now

    def weight(self) -> int:
        return sum(e.weight for e in self.entries.values())

    def remove(self, key: Any, cause: str | None) -> Entry:
        entry = self.entries.pop(key)
        self.recency.remove(key)
        if cause is not None:
            self.notes.append((key, entry.value, cause))
            name = {"size": "evictions", "expired": "expirations"}.get(cause, "invalidations")
            self.counters[name] += 1
        return entry

    def live(self, key: Any) -> Entry | None:
        entry = self.entries.get(key)
        if entry is not None and self.expired(entry):
            self.remove(key, "expired")
            return None
        return entry

    def live_keys(self) -> list[Any]:
        return [k for k, e in self.entries.items() if not self.expired(e)]

    # operations
    def get(self, key: Any) -> Any:
        entry = self.live(key)
        if entry is None:
            self.counters["misses"] += 1
            return None
        self.counters["hits"] += 1
        self.recency.remove(key)
        self.recency.append(key)
        return entry.value

    def store(self, key: Any, value: Any, ttl: float | None, tags: list[str]) -> None:
        self.log.append(("key", key))
        if key in self.entries:
            self.remove(key, "expired" if self.expired(self.entries[key]) else None)
        now = self.clock.now
        deadline = math.inf if ttl is None else now + ttl
        if deadline <= now:
            return
        weight = value[1]
        while len(self.entries) >= self.maxsize or (
            self.max_weight is not None and self.weight() + weight > self.max_weight
        ):
            timed = [(e.deadline, e.seq, k) for k, e in self.entries.items()]
            first = min(timed, key=lambda t: (t[0], t[1]))
            if first[0] <= now:
                self.remove(first[2], "expired")
            else:
                self.remove(self.recency[0], "size")
        self.seq += 1
        self.entries[key] = Entry(value, deadline, tuple(dict.fromkeys(tags)), weight, self.seq)
        self.recency.append(key)

    def take(self, key: Any, cause: str | None) -> Entry | None:
        self.log.append(("key", key))
        entry = self.live(key)
        if entry is not None:
            self.remove(key, cause)
        return entry

    def invalidate_keys(self, keys: list[Any]) -> int:
        count = 0
        for key in keys:
            if self.expired(self.entries[key]):
                self.remove(key, "expired")
            else:
                self.remove(key, "invalidated")
                count += 1
        return count

    def invalidate_tags(self, tags: list[str]) -> int:
        count = 0
        for tag in dict.fromkeys(tags):
            self.log.append(("tag", tag))
            keys = [k for k, e in self.entries.items() if tag in e.tags]
            self.log.extend(("key", k) for k in keys)
            count += self.invalidate_keys(keys)
        return count

    def invalidate_matching(self, glob: str) -> int:
        self.log.append(("glob", glob))
        keys = [k for k in self.entries if isinstance(k, str) and fnmatch.fnmatchcase(k, glob)]
        return self.invalidate_keys(keys)

    def expire(self, limit: int) -> int:
        done = 0
        while done < limit:
            timed = [(e.deadline, e.seq, k) for k, e in self.entries.items() if self.expired(e)]
            if not timed:
                break
            self.remove(min(timed, key=lambda t: (t[0], t[1]))[2], "expired")
            done += 1
        return done

    def clear(self) -> None:
        self.log.append(("clear",))
        self.entries.clear()
        self.recency.clear()

    def install_allowed(self, since: int, key: Any, tags: list[str]) -> bool:
        for event in self.log[since:]:
            kind = event[0]
            if kind == "clear" or (kind == "key" and event[1] == key):
                return False
            if kind == "tag" and event[1] in tags:
                return False
            if kind == "glob" and isinstance(key, str) and fnmatch.fnmatchcase(key, event[1]):
                return False
        return True


class L1Machine(RuleBasedStateMachine):
    tickets = Bundle("tickets")

    def __init__(self, impl: Any) -> None:
        super().__init__()
        self.impl = impl
        self.serial = 0

    @initialize(maxsize=st.integers(1, 5), max_weight=st.sampled_from([None, 2, 4, 6]))
    def create(self, maxsize: int, max_weight: int | None) -> None:
        self.clock = FakeClock(100.0)
        self.events = Recorder()
        self.cache = self.impl(
            maxsize,
            max_weight=max_weight,
            weigher=lambda key, value: value[1],
            timer=self.clock,
            on_evict=self.events,
        )
        self.model = Model(maxsize, max_weight, self.clock)

    def value(self, weight: int) -> tuple[int, int]:
        self.serial += 1
        return (self.serial, weight)

    def too_heavy(self, weight: int) -> bool:
        return self.model.max_weight is not None and weight > self.model.max_weight

    @rule(key=KEYS, weight=WEIGHTS, ttl=TTLS, tags=TAGS)
    def set(self, key: Any, weight: int, ttl: float | None, tags: list[str]) -> None:
        value = self.value(weight)
        if self.too_heavy(weight):
            with pytest.raises(ValueError):
                self.cache.set(key, value, ttl=ttl, tags=tags)
            return
        self.cache.set(key, value, ttl=ttl, tags=tags)
        self.model.store(key, value, ttl, tags)

    @rule(key=KEYS)
    def get(self, key: Any) -> None:
        assert self.cache.get(key) == self.model.get(key)

    @rule(key=KEYS)
    def peek(self, key: Any) -> None:
        entry = self.model.live(key)
        assert self.cache.peek(key) == (None if entry is None else entry.value)

    @rule(key=KEYS)
    def tags_of(self, key: Any) -> None:
        entry = self.model.live(key)
        assert self.cache.tags_of(key) == (() if entry is None else entry.tags)

    @rule(key=KEYS)
    def contains(self, key: Any) -> None:
        assert (key in self.cache) == (self.model.live(key) is not None)

    @rule(key=KEYS)
    def delete(self, key: Any) -> None:
        assert self.cache.delete(key) == (self.model.take(key, None) is not None)

    @rule(key=KEYS)
    def pop(self, key: Any) -> None:
        entry = self.model.take(key, None)
        assert self.cache.pop(key, "absent") == ("absent" if entry is None else entry.value)

    @rule(key=KEYS)
    def invalidate(self, key: Any) -> None:
        assert self.cache.invalidate(key) == (self.model.take(key, "invalidated") is not None)

    @rule(tags=TAGS)
    def invalidate_tags(self, tags: list[str]) -> None:
        if len(tags) == 1:
            assert self.cache.invalidate_tag(tags[0]) == self.model.invalidate_tags(tags)
        else:
            assert self.cache.invalidate_tags(tags) == self.model.invalidate_tags(tags)

    @rule(glob=GLOBS)
    def invalidate_matching(self, glob: str) -> None:
        assert self.cache.invalidate_matching(glob) == self.model.invalidate_matching(glob)

    @rule(seconds=st.sampled_from([0.5, 1, 2, 5]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(limit=st.integers(0, 3))
    def expire(self, limit: int) -> None:
        assert self.cache.expire(limit) == self.model.expire(limit)

    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.clear()

    @rule(target=tickets, key=KEYS)
    def take_ticket(self, key: Any) -> tuple[int, Any, int]:
        return (self.cache.ticket(key), key, len(self.model.log))

    @rule(ticket=consumes(tickets), weight=WEIGHTS, ttl=TTLS, tags=TAGS)
    def install(
        self, ticket: tuple[int, Any, int], weight: int, ttl: float | None, tags: list[str]
    ) -> None:
        number, key, since = ticket
        value = self.value(weight)
        if self.too_heavy(weight):
            with pytest.raises(ValueError):
                self.cache.install(number, key, value, ttl=ttl, tags=tags)
            return
        allowed = self.model.install_allowed(since, key, tags)
        assert self.cache.install(number, key, value, ttl=ttl, tags=tags) == allowed
        if allowed:
            self.model.store(key, value, ttl, tags)

    @rule(ticket=consumes(tickets))
    def release(self, ticket: tuple[int, Any, int]) -> None:
        self.cache.release(ticket[0], ticket[1])

    @invariant()
    def same_state(self) -> None:
        if not hasattr(self, "model"):
            return
        model = self.model
        # reading the state must not change it, so compare before any dropping read
        assert len(self.cache) == len(model.entries)
        assert self.cache.weight == model.weight()
        assert self.cache.keys() == model.live_keys()
        for tag in TAG_NAMES:
            expected = [
                k for k, e in model.entries.items() if tag in e.tags and not model.expired(e)
            ]
            assert self.cache.keys_for_tag(tag) == expected
        assert self.cache.counters() == model.counters
        assert self.events.calls == model.notes


def test_l1_matches_the_model(l1_impl: Any) -> None:
    run_machine(
        lambda: L1Machine(l1_impl),
        settings=settings(
            max_examples=300,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
