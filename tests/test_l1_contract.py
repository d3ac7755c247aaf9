"""The L1 contract, run over every implementation (ids ``c`` / ``py``)."""

from __future__ import annotations

import copy
import datetime
import functools
import gc
import logging
import math
import os
import pickle
import random
import subprocess
import sys
import threading
import weakref
from typing import Any

import pytest

from stratacache._sentinel import MISSING

from l1_impls import IMPL_IDS, FakeClock, Recorder, load_l1


@pytest.fixture(
    params=[(impl, policy) for impl in IMPL_IDS for policy in ("lru", "tinylfu")],
    ids=lambda p: "-".join(p),
)
def l1_impl(request: pytest.FixtureRequest) -> Any:
    """Each L1 implementation in turn, with each eviction policy."""
    impl_id, policy = request.param
    cls = load_l1(impl_id)
    if policy == "lru":
        return cls
    factory = functools.partial(cls, policy=policy)
    factory.policy_name = policy  # type: ignore[attr-defined]
    return factory


def lru_only(l1_impl: Any) -> None:
    """Skip a test of which entry LRU evicts (tinylfu's choice is tests/test_l1_policy.py's)."""
    if getattr(l1_impl, "policy_name", "lru") != "lru":
        pytest.skip("asserts the LRU eviction order")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- construction ---------------------------------------------------------------------


@pytest.mark.parametrize("maxsize", [0, -1])
def test_maxsize_must_be_positive(l1_impl: Any, maxsize: int) -> None:
    with pytest.raises(ValueError):
        l1_impl(maxsize)


@pytest.mark.parametrize("maxsize", ["3", 2.0, True, None])
def test_maxsize_must_be_an_int(l1_impl: Any, maxsize: Any) -> None:
    with pytest.raises(TypeError):
        l1_impl(maxsize)


def test_max_weight_must_be_positive(l1_impl: Any) -> None:
    with pytest.raises(ValueError):
        l1_impl(3, max_weight=0)


@pytest.mark.parametrize("name", ["weigher", "timer", "on_evict"])
def test_callables_are_checked(l1_impl: Any, name: str) -> None:
    with pytest.raises(TypeError):
        l1_impl(3, **{name: 42})


def test_properties(l1_impl: Any) -> None:
    cache = l1_impl(10, max_weight=100, weigher=lambda k, v: 1)
    assert (cache.maxsize, cache.max_weight, cache.weight, len(cache)) == (10, 100, 0, 0)
    assert l1_impl(10).max_weight is None


# -- reading and writing --------------------------------------------------------------


def test_set_then_get(l1_impl: Any) -> None:
    cache = l1_impl(10)
    cache.set("k", {"v": 1})
    assert cache.get("k") == {"v": 1}
    assert cache.get("other") is None
    assert cache.get("other", MISSING) is MISSING


def test_none_is_a_cacheable_value(l1_impl: Any) -> None:
    cache = l1_impl(10)
    cache.set("k", None)
    assert cache.get("k", MISSING) is None
    assert "k" in cache
    assert cache.hits == 1


def test_any_hashable_key(l1_impl: Any) -> None:
    cache = l1_impl(10)
    for key in (1, ("a", 2), b"raw", frozenset({1})):
        cache.set(key, key)
        assert cache.get(key) == key


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.get([]),
        lambda c: c.peek({}),
        lambda c: c.set([], 1),
        lambda c: c.delete([]),
        lambda c: c.pop([]),
        lambda c: c.invalidate([]),
        lambda c: [] in c,
        lambda c: c.ticket([]),
        lambda c: c.tickets([[]]),
    ],
)
def test_unhashable_key_is_a_type_error(l1_impl: Any, call: Any) -> None:
    cache = l1_impl(10)
    with pytest.raises(TypeError):
        call(cache)
    assert len(cache) == 0


def test_get_marks_recently_used(l1_impl: Any) -> None:
    cache = l1_impl(2)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.get("a")
    cache.set("c", 3)  # evicts b, the least recently used
    assert "a" in cache and "c" in cache and "b" not in cache


def test_peek_does_not_touch_recency_or_counters(l1_impl: Any) -> None:
    lru_only(l1_impl)
    cache = l1_impl(2)
    cache.set("a", 1)
    cache.set("b", 2)
    assert cache.peek("a") == 1
    assert cache.peek("zzz", "d") == "d"
    cache.set("c", 3)  # a is still the LRU entry
    assert "a" not in cache
    assert (cache.hits, cache.misses) == (0, 0)


def test_get_unless_due_answers_the_value_until_its_time_in_due(l1_impl: Any) -> None:
    lru_only(l1_impl)
    cache = l1_impl(2)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.set("c", 3)  # evicts a
    now = [100.0]
    calls: list[None] = []

    def clock() -> float:
        calls.append(None)
        return now[0]

    due = {"b": 100.5}
    assert cache.get_unless_due("b", MISSING, due, clock) == 2  # before its time
    assert cache.get_unless_due("c", MISSING, due, clock) == 3  # not in due
    assert len(calls) == 1  # the clock is read only for a key in due
    assert cache.get_unless_due("a", "d", due, clock) == "d"  # a miss
    now[0] = 100.5
    assert cache.get_unless_due("b", "d", due, clock) == "d"  # its time has come
    assert due == {"b": 100.5}  # left as it is
    assert (cache.hits, cache.misses) == (3, 1)  # a due value is a hit all the same
    cache.set("d", 4)  # c is the LRU entry: the reads of b marked it recently used
    assert "b" in cache and "c" not in cache


def test_get_unless_due_survives_a_clock_that_empties_due(l1_impl: Any) -> None:
    cache = l1_impl(2)
    cache.set("a", 1)
    due = {"a": 100.0}

    def clock() -> float:
        due.clear()  # the refresh time read before the call must stay alive
        return 200.0

    assert cache.get_unless_due("a", "d", due, clock) == "d"


@pytest.mark.parametrize("due", [None, [], ("a", 1.0)])
def test_get_unless_due_needs_a_dict(l1_impl: Any, due: Any) -> None:
    with pytest.raises(TypeError):
        l1_impl(2).get_unless_due("a", None, due, lambda: 0.0)


def test_contains_does_not_touch_recency(l1_impl: Any) -> None:
    lru_only(l1_impl)
    cache = l1_impl(2)
    cache.set("a", 1)
    cache.set("b", 2)
    assert "a" in cache
    cache.set("c", 3)
    assert "a" not in cache


def test_set_existing_replaces_value_ttl_tags_and_moves_to_mru(
    l1_impl: Any, clock: FakeClock
) -> None:
    events = Recorder()
    cache = l1_impl(2, timer=clock, on_evict=events)
    cache.set("a", 1, ttl=1, tags=("old",))
    cache.set("b", 2)
    cache.set("a", 10, tags=("new",))  # no ttl any more, new tags, now MRU
    assert cache.keys_for_tag("old") == []
    assert cache.keys_for_tag("new") == ["a"]
    clock.advance(5)
    assert cache.get("a") == 10
    cache.set("c", 3)
    assert "b" not in cache  # a was moved to the MRU end by the replacement
    assert len(cache) == 2
    assert events.calls == [("b", 2, "size")]  # a replacement is not an eviction


def test_delete(l1_impl: Any) -> None:
    events = Recorder()
    cache = l1_impl(10, on_evict=events)
    cache.set("a", 1, tags=("t",))
    assert cache.delete("a") is True
    assert cache.delete("a") is False
    assert "a" not in cache
    assert cache.keys_for_tag("t") == []
    assert events.calls == []
    assert cache.counters()["invalidations"] == 0


def test_pop(l1_impl: Any) -> None:
    cache = l1_impl(10)
    cache.set("a", 1)
    cache.set("n", None)
    assert cache.pop("a") == 1
    assert "a" not in cache
    assert cache.pop("a", "dflt") == "dflt"
    assert cache.pop("a", None) is None
    assert cache.pop("n", "dflt") is None
    with pytest.raises(KeyError):
        cache.pop("a")


def test_len_and_clear(l1_impl: Any) -> None:
    events = Recorder()
    cache = l1_impl(10, on_evict=events)
    for i in range(5):
        cache.set(i, i, tags=("t",))
    cache.get(0)
    before = cache.counters()
    assert len(cache) == 5
    cache.clear()
    assert len(cache) == 0
    assert cache.keys() == []
    assert cache.keys_for_tag("t") == []
    assert cache.weight == 0
    assert events.calls == []  # clear() is a flush: no listener calls, no counters
    assert cache.counters() == before
    cache.set("after", 1)
    assert cache.get("after") == 1


def test_keys_is_a_snapshot(l1_impl: Any) -> None:
    cache = l1_impl(10)
    cache.set("a", 1)
    cache.set("b", 2)
    keys = cache.keys()
    assert isinstance(keys, list)
    assert sorted(keys) == ["a", "b"]
    cache.set("c", 3)
    assert sorted(keys) == ["a", "b"]


# -- eviction and weight --------------------------------------------------------------


def test_lru_eviction_by_count(l1_impl: Any) -> None:
    lru_only(l1_impl)
    events = Recorder()
    cache = l1_impl(3, on_evict=events)
    for i in range(5):
        cache.set(i, str(i))
    assert sorted(cache.keys()) == [2, 3, 4]
    assert events.calls == [(0, "0", "size"), (1, "1", "size")]
    assert cache.evictions == 2


def test_weight_bound(l1_impl: Any) -> None:
    lru_only(l1_impl)
    events = Recorder()
    cache = l1_impl(100, max_weight=10, weigher=lambda k, v: len(v), on_evict=events)
    cache.set("a", "xxxx")
    cache.set("b", "xxxx")
    assert cache.weight == 8
    cache.set("c", "xxxxx")  # 13 > 10: evict a (LRU)
    assert sorted(cache.keys()) == ["b", "c"]
    assert cache.weight == 9
    assert events.calls == [("a", "xxxx", "size")]
    cache.set("b", "x")  # replacement: weight is recomputed
    assert cache.weight == 6


def test_zero_weight_entries(l1_impl: Any) -> None:
    cache = l1_impl(3, max_weight=1, weigher=lambda k, v: 0)
    for i in range(3):
        cache.set(i, i)
    assert len(cache) == 3
    assert cache.weight == 0


def test_too_heavy_is_refused_and_nothing_is_evicted(l1_impl: Any) -> None:
    events = Recorder()
    cache = l1_impl(10, max_weight=10, weigher=lambda k, v: len(v), on_evict=events)
    cache.set("a", "xxxxx")
    cache.set("b", "xxxxx")
    with pytest.raises(ValueError):
        cache.set("a", "x" * 11)
    assert cache.get("a") == "xxxxx"  # the old entry for that key stays too
    assert sorted(cache.keys()) == ["a", "b"]
    assert events.calls == []
    assert cache.weight == 10


@pytest.mark.parametrize("bad", ["3", 1.5, None, True])
def test_weigher_must_return_an_int(l1_impl: Any, bad: Any) -> None:
    cache = l1_impl(10, weigher=lambda k, v: bad)
    with pytest.raises(TypeError):
        cache.set("a", 1)
    assert len(cache) == 0


def test_weigher_must_not_return_a_negative_weight(l1_impl: Any) -> None:
    cache = l1_impl(10, weigher=lambda k, v: -1)
    with pytest.raises(ValueError):
        cache.set("a", 1)
    assert len(cache) == 0


def test_weigher_runs_before_the_cache_changes(l1_impl: Any) -> None:
    seen = []

    def weigher(key: Any, value: Any) -> int:
        seen.append((key, cache.peek(key), len(cache)))  # re-entering is fine here
        if value == "boom":
            raise RuntimeError("weigher failed")
        return 1

    cache = l1_impl(10, weigher=weigher)
    cache.set("a", 1)
    cache.set("a", 2)
    assert seen == [("a", None, 0), ("a", 1, 1)]
    with pytest.raises(RuntimeError):
        cache.set("a", "boom")
    assert cache.get("a") == 2


# -- ttl and expiry -------------------------------------------------------------------


def test_entry_expires_at_its_deadline(l1_impl: Any, clock: FakeClock) -> None:
    events = Recorder()
    cache = l1_impl(10, timer=clock, on_evict=events)
    cache.set("k", "v", ttl=10)
    clock.advance(9.999)
    assert cache.get("k") == "v"
    clock.advance(0.001)
    assert cache.get("k", "gone") == "gone"
    assert len(cache) == 0  # get dropped it
    assert cache.counters() == {
        "hits": 1,
        "misses": 1,
        "evictions": 0,
        "expirations": 1,
        "invalidations": 0,
    }
    assert events.calls == [("k", "v", "expired")]


def test_timedelta_ttl(l1_impl: Any, clock: FakeClock) -> None:
    cache = l1_impl(10, timer=clock)
    cache.set("k", "v", ttl=datetime.timedelta(minutes=1))
    clock.advance(59)
    assert "k" in cache
    clock.advance(1)
    assert "k" not in cache


def test_ttl_zero_stores_nothing_and_drops_the_old_entry(l1_impl: Any, clock: FakeClock) -> None:
    events = Recorder()
    cache = l1_impl(10, timer=clock, on_evict=events)
    cache.set("k", "old")
    cache.set("k", "new", ttl=0)
    assert "k" not in cache
    assert len(cache) == 0
    assert events.calls == []
    assert cache.expirations == 0


def test_no_ttl_never_expires_and_never_reads_the_clock(l1_impl: Any, clock: FakeClock) -> None:
    cache = l1_impl(10, timer=clock)
    cache.set("a", 1)
    cache.set("b", 2, ttl=None)
    cache.set("c", 3, ttl=math.inf)
    clock.advance(1e12)
    assert [cache.get(k) for k in "abc"] == [1, 2, 3]
    cache.peek("a")
    cache.delete("b")
    assert clock.reads == 0


@pytest.mark.parametrize("ttl", [-1, -0.001, math.nan, datetime.timedelta(seconds=-1)])
def test_bad_ttl_is_a_value_error(l1_impl: Any, ttl: Any) -> None:
    cache = l1_impl(10)
    cache.set("k", "old")
    with pytest.raises(ValueError):
        cache.set("k", "v", ttl=ttl)
    assert cache.get("k") == "old"


def test_positional_calls_behave_as_keyword_calls(l1_impl: Any, clock: FakeClock) -> None:
    # the compiled L1 takes positional-only set/get calls by a path of their own
    cache = l1_impl(10, timer=clock)
    cache.set("a", 1, 5.0)
    cache.set("b", 2, ttl=5.0)
    cache.set("c", 3)
    clock.advance(6)
    assert [cache.get(k, "gone") for k in "abc"] == ["gone", "gone", 3]
    assert cache.get("a", default="gone") == "gone" and cache.get("a") is None
    with pytest.raises(ValueError):
        cache.set("c", 4, -1.0)
    with pytest.raises(TypeError):
        cache.set("c", 4, "10")
    assert cache.get("c") == 3
    for bad_call in (lambda: cache.set("k"), lambda: cache.set("k", 1, None, (), "x")):
        with pytest.raises(TypeError):
            bad_call()
    with pytest.raises(TypeError):
        cache.get()
    with pytest.raises(TypeError):
        cache.set([], 1)
    assert len(cache) == 1


@pytest.mark.parametrize("ttl", ["10", True, object()])
def test_ttl_of_the_wrong_type_is_a_type_error(l1_impl: Any, ttl: Any) -> None:
    with pytest.raises(TypeError):
        l1_impl(10).set("k", "v", ttl=ttl)


def test_default_timer(l1_impl: Any) -> None:
    cache = l1_impl(10)
    cache.set("long", 1, ttl=3600)
    cache.set("zero", 1, ttl=0)
    assert cache.get("long") == 1
    assert "zero" not in cache
    assert cache.expire() == 0


def test_len_counts_expired_entries_until_dropped_but_keys_do_not(
    l1_impl: Any, clock: FakeClock
) -> None:
    cache = l1_impl(10, timer=clock)
    cache.set("a", 1, ttl=1, tags=("t",))
    cache.set("b", 2)
    clock.advance(1)
    assert len(cache) == 2
    assert cache.keys() == ["b"]
    assert cache.keys_for_tag("t") == []
    assert cache.expire() == 1
    assert len(cache) == 1


def test_peek_contains_pop_delete_drop_expired_entries(l1_impl: Any, clock: FakeClock) -> None:
    events = Recorder()
    cache = l1_impl(10, timer=clock, on_evict=events)
    for key in "abcd":
        cache.set(key, key, ttl=1)
    clock.advance(1)
    assert cache.peek("a") is None
    assert "b" not in cache
    assert cache.pop("c", "dflt") == "dflt"
    assert cache.delete("d") is False
    assert len(cache) == 0
    assert cache.expirations == 4
    assert (cache.hits, cache.misses) == (0, 0)
    assert [c[2] for c in events.calls] == ["expired"] * 4


def test_expire_is_bounded_and_earliest_first(l1_impl: Any, clock: FakeClock) -> None:
    events = Recorder()
    cache = l1_impl(100, timer=clock, on_evict=events)
    for i in range(10):
        cache.set(i, i, ttl=10 - i)  # key 9 has the earliest deadline
    cache.set("forever", 0)
    clock.advance(100)
    assert cache.expire(3) == 3
    assert [c[0] for c in events.calls] == [9, 8, 7]
    assert cache.expire(0) == 0
    assert cache.expire() == 7
    assert cache.expire() == 0
    assert cache.keys() == ["forever"]
    assert cache.expirations == 10


def test_expire_limit_is_checked(l1_impl: Any) -> None:
    cache = l1_impl(10)
    with pytest.raises(ValueError):
        cache.expire(-1)
    with pytest.raises(TypeError):
        cache.expire(1.5)


def test_making_room_drops_expired_entries_before_live_ones(l1_impl: Any, clock: FakeClock) -> None:
    events = Recorder()
    cache = l1_impl(3, timer=clock, on_evict=events)
    cache.set("lru", 1)
    cache.set("short", 2, ttl=1)
    cache.set("mru", 3)
    clock.advance(1)
    cache.set("new", 4)
    assert sorted(cache.keys()) == ["lru", "mru", "new"]
    assert events.calls == [("short", 2, "expired")]
    assert (cache.evictions, cache.expirations) == (0, 1)


def test_equal_deadlines_expire_oldest_write_first(l1_impl: Any, clock: FakeClock) -> None:
    events = Recorder()
    cache = l1_impl(3, timer=clock, on_evict=events)
    cache.set("b", 1, ttl=5)
    cache.set("a", 1, ttl=5)
    cache.set("c", 1, ttl=5)
    clock.advance(5)
    cache.set("x", 1)
    assert events.calls == [("b", 1, "expired")]


def test_writing_over_an_expired_entry_reports_the_expiry(l1_impl: Any, clock: FakeClock) -> None:
    events = Recorder()
    cache = l1_impl(10, timer=clock, on_evict=events)
    cache.set("k", "v1", ttl=1)
    clock.advance(2)
    cache.set("k", "v2")
    assert events.calls == [("k", "v1", "expired")]
    assert cache.get("k") == "v2"


# -- tags and invalidation ------------------------------------------------------------


def test_invalidate_tag(l1_impl: Any) -> None:
    events = Recorder()
    cache = l1_impl(10, on_evict=events)
    cache.set("u1", 1, tags=("user", "eu"))
    cache.set("u2", 2, tags=["user"])
    cache.set("o1", 3, tags=("order",))
    assert sorted(cache.keys_for_tag("user")) == ["u1", "u2"]
    assert cache.invalidate_tag("user") == 2
    assert cache.keys() == ["o1"]
    assert cache.keys_for_tag("eu") == []  # u1's other tag forgot it too
    assert cache.invalidate_tag("user") == 0
    assert cache.invalidate_tag("never-used") == 0
    assert cache.invalidations == 2
    assert sorted(events.calls) == [("u1", 1, "invalidated"), ("u2", 2, "invalidated")]


def test_invalidate_tags_counts_each_entry_once(l1_impl: Any) -> None:
    cache = l1_impl(10)
    cache.set("a", 1, tags=("x", "y"))
    cache.set("b", 2, tags=("y",))
    cache.set("c", 3, tags=("z",))
    assert cache.invalidate_tags(["x", "y", "nope"]) == 2
    assert cache.keys() == ["c"]
    assert cache.invalidations == 2


def test_invalidating_one_tag_updates_the_index_of_the_others(l1_impl: Any) -> None:
    cache = l1_impl(10)
    cache.set("a", 1, tags=("x", "y"))
    cache.set("b", 2, tags=("y",))
    assert cache.invalidate_tag("x") == 1
    cache.set("a", 3, tags=("x",))  # back under x only
    assert cache.invalidate_tag("y") == 1  # b; "a" is no longer under y
    assert cache.keys() == ["a"]
    assert cache.invalidate_tag("x") == 1
    assert len(cache) == 0


def test_tags_of(l1_impl: Any, clock: FakeClock) -> None:
    cache = l1_impl(10, timer=clock)
    cache.set("a", 1, tags=["x", "y", "x"])
    cache.set("b", 2)
    cache.set("c", 3, ttl=1, tags=("z",))
    assert cache.tags_of("a") == ("x", "y")
    assert cache.tags_of("b") == ()
    assert cache.tags_of("absent") == ()
    clock.advance(1)
    assert cache.tags_of("c") == ()
    assert cache.expirations == 1
    with pytest.raises(TypeError):
        cache.tags_of([])


def test_duplicate_tags_are_harmless(l1_impl: Any) -> None:
    cache = l1_impl(10)
    cache.set("a", 1, tags=("x", "x"))
    assert cache.keys_for_tag("x") == ["a"]
    assert cache.delete("a")
    assert cache.keys_for_tag("x") == []


def test_invalidating_an_expired_entry_counts_as_expiry(l1_impl: Any, clock: FakeClock) -> None:
    events = Recorder()
    cache = l1_impl(10, timer=clock, on_evict=events)
    cache.set("a", 1, ttl=1, tags=("t",))
    cache.set("b", 2, tags=("t",))
    clock.advance(1)
    assert cache.invalidate_tag("t") == 1
    assert sorted(events.calls) == [("a", 1, "expired"), ("b", 2, "invalidated")]
    assert (cache.expirations, cache.invalidations) == (1, 1)


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.set("k", 1, tags=(1,)),
        lambda c: c.set("k", 1, tags=("ok", b"bytes")),
        lambda c: c.set("k", 1, tags="abc"),  # a bare string is not a set of tags
        lambda c: c.set("k", 1, tags=None),
        lambda c: c.invalidate_tag(1),
        lambda c: c.invalidate_tags(["ok", None]),
        lambda c: c.invalidate_tags("abc"),
        lambda c: c.keys_for_tag(b"t"),
        lambda c: c.invalidate_matching(b"*"),
    ],
)
def test_non_str_tag_is_a_type_error(l1_impl: Any, call: Any) -> None:
    cache = l1_impl(10)
    with pytest.raises(TypeError):
        call(cache)
    assert len(cache) == 0


def test_invalidate_key(l1_impl: Any) -> None:
    events = Recorder()
    cache = l1_impl(10, on_evict=events)
    cache.set("a", 1, tags=("t",))
    assert cache.invalidate("a") is True
    assert cache.invalidate("a") is False
    assert cache.keys_for_tag("t") == []
    assert events.calls == [("a", 1, "invalidated")]
    assert cache.invalidations == 1


def test_invalidate_matching_uses_fnmatchcase(l1_impl: Any) -> None:
    events = Recorder()
    cache = l1_impl(100, on_evict=events)
    for key in ("user:1", "user:2", "user:10", "User:3", "order:1", 7, ("user:1",)):
        cache.set(key, key)
    assert cache.invalidate_matching("user:?") == 2
    assert sorted(map(str, cache.keys())) == sorted(
        ["user:10", "User:3", "order:1", "7", "('user:1',)"]
    )
    assert cache.invalidate_matching("[uU]ser:*") == 2
    assert cache.invalidate_matching("*") == 1  # non-str keys never match
    assert sorted(map(str, cache.keys())) == ["('user:1',)", "7"]
    assert cache.invalidations == 5
    assert all(cause == "invalidated" for _, _, cause in events.calls)


# -- counters -------------------------------------------------------------------------


def test_counters_and_reset(l1_impl: Any) -> None:
    cache = l1_impl(1)
    cache.set("a", 1)
    cache.get("a")
    cache.get("b")
    cache.set("b", 2)
    cache.set("c", 3, tags=("t",))
    cache.invalidate_tag("t")
    counters = cache.counters()
    assert counters == {
        "hits": 1,
        "misses": 1,
        "evictions": 2,
        "expirations": 0,
        "invalidations": 1,
    }
    assert counters == {name: getattr(cache, name) for name in counters}
    counters["hits"] = 99  # a copy
    assert cache.hits == 1
    cache.reset_counters()
    assert set(cache.counters().values()) == {0}


def test_counters_are_read_only(l1_impl: Any) -> None:
    cache = l1_impl(1)
    with pytest.raises(AttributeError):
        cache.hits = 5


# -- the eviction listener ------------------------------------------------------------


def test_listener_runs_after_the_mutation(l1_impl: Any) -> None:
    lru_only(l1_impl)
    seen = []

    def on_evict(key: Any, value: Any, cause: str) -> None:
        seen.append((key, key in cache, sorted(cache.keys())))
        if isinstance(key, str):
            cache.set(("echo", key), value)  # re-entering from the listener is allowed

    cache = l1_impl(2, on_evict=on_evict)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.set("c", 3)
    assert seen[0] == ("a", False, ["b", "c"])


def test_listener_exceptions_are_logged_and_swallowed(
    l1_impl: Any, caplog: pytest.LogCaptureFixture
) -> None:
    lru_only(l1_impl)
    calls = []

    def on_evict(key: Any, value: Any, cause: str) -> None:
        calls.append(key)
        raise RuntimeError(f"listener failed on {key}")

    cache = l1_impl(3, max_weight=3, weigher=lambda k, v: v, on_evict=on_evict)
    cache.set("a", 1)
    cache.set("b", 1)
    with caplog.at_level(logging.ERROR, logger="stratacache.l1"):
        cache.set("c", 3)  # evicts a and b: both listener calls happen
    assert calls == ["a", "b"]
    assert cache.keys() == ["c"]
    assert cache.weight == 3
    assert len([r for r in caplog.records if r.name == "stratacache.l1"]) == 2
    assert "listener failed on a" in caplog.text


# -- the stale-fill guard -------------------------------------------------------------


def test_install_without_interference_stores(l1_impl: Any) -> None:
    cache = l1_impl(10)
    ticket = cache.ticket("k")
    assert isinstance(ticket, int)
    assert cache.install(ticket, "k", "v", tags=("t",)) is True
    assert cache.get("k") == "v"
    assert cache.keys_for_tag("t") == ["k"]


def test_events_before_the_ticket_do_not_matter(l1_impl: Any) -> None:
    cache = l1_impl(10)
    other = cache.ticket("other")  # keeps the guard recording
    cache.delete("k")
    cache.invalidate_tag("t")
    cache.clear()
    ticket = cache.ticket("k")
    assert cache.install(ticket, "k", "v", tags=("t",)) is True
    cache.release(other, "other")


@pytest.mark.parametrize(
    "interference",
    [
        pytest.param(lambda c: c.delete("k"), id="delete"),
        pytest.param(lambda c: c.pop("k", None), id="pop"),
        pytest.param(lambda c: c.invalidate("k"), id="invalidate"),
        pytest.param(lambda c: c.set("k", "newer"), id="set"),
        pytest.param(lambda c: c.set("k", "newer", ttl=0), id="set-ttl0"),
        pytest.param(lambda c: c.invalidate_tag("t2"), id="invalidate_tag"),
        pytest.param(lambda c: c.invalidate_tags(["zz", "t1"]), id="invalidate_tags"),
        pytest.param(lambda c: c.invalidate_matching("k*"), id="invalidate_matching"),
        pytest.param(lambda c: c.clear(), id="clear"),
    ],
)
def test_install_is_refused_after_an_invalidation(l1_impl: Any, interference: Any) -> None:
    events = Recorder()
    cache = l1_impl(10, on_evict=events)
    ticket = cache.ticket("k")
    interference(cache)
    assert cache.install(ticket, "k", "stale", tags=("t1", "t2")) is False
    assert cache.get("k") != "stale"
    assert all(value != "stale" for _, value, _ in events.calls)


def test_tag_invalidation_refuses_a_key_that_had_the_tag(l1_impl: Any) -> None:
    cache = l1_impl(10)
    cache.set("k", "old", tags=("t",))
    ticket = cache.ticket("k")
    cache.invalidate_tag("t")
    assert cache.install(ticket, "k", "new") is False  # new tags don't include t


def test_unrelated_events_do_not_refuse(l1_impl: Any, clock: FakeClock) -> None:
    cache = l1_impl(2, timer=clock)
    cache.set("k", "old", ttl=1)
    ticket = cache.ticket("k")
    cache.set("other", 1, tags=("t9",))
    cache.invalidate_tag("t9")
    cache.delete("other")
    cache.invalidate_matching("x*")
    clock.advance(5)
    assert cache.get("k") is None  # an expiry is not an invalidation
    cache.set("a", 1)
    cache.set("b", 2)
    cache.set("c", 3)  # evictions are not invalidations either
    assert cache.install(ticket, "k", "v", tags=("t1",)) is True
    assert cache.get("k") == "v"


def test_tickets_takes_one_ticket_per_key(l1_impl: Any) -> None:
    cache = l1_impl(10)
    cache.set("b", "old")
    tickets = cache.tickets(["a", "b", "a"])
    assert tickets == [cache.ticket("c")] * 3
    cache.release(tickets[0], "a")
    assert cache.install(tickets[2], "a", "v") is True  # the second ticket on "a"
    cache.set("b", "newer")  # a write after the ticket: its install is refused
    assert cache.install(tickets[1], "b", "stale") is False
    assert cache.get("b") == "newer"
    cache.release(0, "c")
    for key in ("a", "b", "c"):  # every ticket is back
        with pytest.raises(ValueError):
            cache.release(0, key)
    assert cache.tickets([]) == []


def test_tickets_takes_none_if_a_key_is_unhashable(l1_impl: Any) -> None:
    cache = l1_impl(10)
    with pytest.raises(TypeError):
        cache.tickets(["a", []])
    with pytest.raises(ValueError):
        cache.release(0, "a")


def test_install_always_gives_the_ticket_back(l1_impl: Any) -> None:
    cache = l1_impl(10)
    ticket = cache.ticket("k")
    cache.delete("k")
    assert cache.install(ticket, "k", "v") is False
    with pytest.raises(ValueError):
        cache.install(ticket, "k", "v")
    with pytest.raises(ValueError):
        cache.release(ticket, "k")


def test_release(l1_impl: Any) -> None:
    cache = l1_impl(10)
    ticket = cache.ticket("k")
    cache.release(ticket, "k")
    with pytest.raises(ValueError):
        cache.release(ticket, "k")
    with pytest.raises(ValueError):
        cache.release(0, "never-ticketed")


def test_install_with_bad_input_releases_and_raises(l1_impl: Any) -> None:
    cache = l1_impl(10, max_weight=5, weigher=lambda k, v: len(v))
    for bad in (
        {"ttl": -1},
        {"tags": (1,)},
        {"value": "x" * 6},
    ):
        ticket = cache.ticket("k")
        kwargs = {"value": "v", **bad}
        with pytest.raises((TypeError, ValueError)):
            cache.install(ticket, "k", **kwargs)
        with pytest.raises(ValueError):
            cache.release(ticket, "k")
    assert len(cache) == 0


def test_forged_tickets_are_refused(l1_impl: Any) -> None:
    cache = l1_impl(10)
    ticket = cache.ticket("k")
    with pytest.raises(ValueError):
        cache.install(ticket + 1_000_000, "k", "v")
    with pytest.raises(TypeError):
        cache.install("1", "k", "v")
    cache.release(ticket, "k")


def test_concurrent_tickets_for_one_key(l1_impl: Any) -> None:
    cache = l1_impl(10)
    first = cache.ticket("k")
    second = cache.ticket("k")
    assert cache.install(first, "k", "v1") is True
    # The first install is itself a write of k after the second ticket was taken.
    assert cache.install(second, "k", "v2") is False
    assert cache.get("k") == "v1"


def test_many_tag_invalidations_collapse_into_a_safe_floor(l1_impl: Any) -> None:
    cache = l1_impl(10)
    ticket = cache.ticket("k")
    for i in range(5000):
        cache.invalidate_tag(f"tag-{i}")
    # Past the limit the guard forgets which tags: any tagged install is refused ...
    assert cache.install(ticket, "k", "v", tags=("unrelated",)) is False
    ticket = cache.ticket("k")
    for i in range(5000):
        cache.invalidate_tag(f"tag-{i}")
    # ... but an untagged one still only depends on the key.
    assert cache.install(ticket, "k", "v") is True
    # With no ticket outstanding nothing is remembered.
    for i in range(5000):
        cache.invalidate_tag(f"tag-{i}")
    ticket = cache.ticket("k")
    assert cache.install(ticket, "k", "v2", tags=("tag-1",)) is True


# -- garbage collection ---------------------------------------------------------------


class _Holder:
    """A value that refers back to its cache: a reference cycle through the cache."""

    cache: Any = None


def test_cycles_through_cached_values_are_collected(l1_impl: Any) -> None:
    cache = l1_impl(10)
    value = _Holder()
    value.cache = cache
    cache.set("self", value, tags=("t",))
    cache.set(("tuple", "key"), [value])
    probe = weakref.ref(value)
    del cache, value
    gc.collect()
    assert probe() is None


def test_gc_does_not_free_live_entries(l1_impl: Any) -> None:
    cache = l1_impl(100)
    for i in range(50):
        holder = _Holder()
        holder.cache = [holder]  # a cycle that is only reachable from the cache
        cache.set(i, holder, tags=(f"t{i % 3}",))
    gc.collect()
    gc.collect()
    assert all(cache.get(i).cache[0] is cache.get(i) for i in range(50))


# -- threads --------------------------------------------------------------------------


def test_threads_hammering_keep_the_invariants(l1_impl: Any) -> None:
    tags = [f"t{i}" for i in range(8)]
    cache = l1_impl(64, max_weight=200, weigher=lambda k, v: len(v))
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            start.wait()
            for _ in range(4000):
                key = f"k{rnd.randrange(200)}"
                op = rnd.random()
                if op < 0.5:
                    entry_tags = tuple(rnd.sample(tags, rnd.randrange(3)))
                    cache.set(key, entry_tags + ("w",) * rnd.randrange(4), tags=entry_tags)
                elif op < 0.8:
                    cache.get(key)
                elif op < 0.9:
                    cache.invalidate_tag(rnd.choice(tags))
                elif op < 0.95:
                    ticket = cache.ticket(key)
                    cache.install(ticket, key, ("w",), tags=())
                else:
                    assert len(cache) <= 64
                    assert cache.weight <= 200
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert errors == []
    keys = cache.keys()
    assert len(keys) == len(cache) <= 64
    assert cache.weight == sum(len(cache.peek(k)) for k in keys) <= 200
    for tag in tags:
        for key in cache.keys_for_tag(tag):
            assert tag in cache.peek(key)  # the value records the entry's tags
    for key in keys:
        for tag in cache.peek(key):
            if tag != "w":
                assert key in cache.keys_for_tag(tag)
    gc.collect()


# -- the switch -----------------------------------------------------------------------


def test_switch_honours_no_extensions() -> None:
    env = {**os.environ, "STRATACACHE_NO_EXTENSIONS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", "import stratacache._l1 as m; print(m.L1.__module__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "stratacache._l1_py"


def test_switch_picks_compiled_in_the_compiled_run() -> None:
    if os.environ.get("STRATACACHE_NO_EXTENSIONS"):
        pytest.skip("pure run: STRATACACHE_NO_EXTENSIONS=1")
    import stratacache._l1 as switch
    import stratacache._l1_c as compiled

    assert switch.L1 is compiled.L1


def test_getter_answers_hits_and_passes_misses_to_the_fallback(
    l1_impl: Any, clock: FakeClock
) -> None:
    cache = l1_impl(10, timer=clock)
    misses: list[tuple[Any, Any]] = []

    def fallback(key: Any, default: Any) -> Any:
        misses.append((key, default))
        return ("fallback", key, default)

    get = cache.getter(fallback)
    cache.set("a", None)
    cache.set("b", 2, ttl=1)
    assert get("a") is None  # a cached None is a hit, not a miss
    assert get("b", "d") == 2
    assert get("zzz") == ("fallback", "zzz", None)
    assert get("zzz", default=5) == ("fallback", "zzz", 5)
    clock.advance(1)
    assert get("b") == ("fallback", "b", None)  # expired: a miss
    assert misses == [("zzz", None), ("zzz", 5), ("b", None)]
    assert (cache.hits, cache.misses) == (2, 3)
    with pytest.raises(TypeError):
        get([])  # unhashable, like get()
    with pytest.raises(TypeError):
        cache.getter(42)


# -- memoized (the sync decorator's hit path) -------------------------------------------


class _ToyKeyMaker:
    """A ``make_key`` that keeps a memo the way ``KeyMaker`` does (exact str/int only)."""

    def __init__(self, skip: int = 0) -> None:
        self.skip = skip
        self.memo: dict[Any, str] = {}
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        self.calls.append((args, dict(kwargs)))
        values = args[self.skip :]
        if isinstance(kwargs.get("fail"), BaseException):
            raise kwargs["fail"]
        key = repr([(type(v).__name__, v) for v in values]) + repr(sorted(kwargs.items()))
        if not kwargs and all(type(v) is str or type(v) is int for v in values):
            self.memo[values[0] if len(values) == 1 else values] = key
        return key


def test_memoized_answers_hits_and_passes_misses_to_the_fallback(
    l1_impl: Any, clock: FakeClock
) -> None:
    cache = l1_impl(10, timer=clock)
    make_key = _ToyKeyMaker()
    misses: list[tuple[Any, ...]] = []

    def fallback(key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        misses.append((key, args, kwargs))
        value = ("loaded", args, kwargs)
        cache.set(key, value, ttl=5)
        return value

    f = cache.memoized(make_key, fallback, make_key.memo)
    assert f(1, "a") == ("loaded", (1, "a"), {})
    assert f(1, "a") == ("loaded", (1, "a"), {})
    assert f(1, b=2) == ("loaded", (1,), {"b": 2})
    assert f(1, b=2) == ("loaded", (1,), {"b": 2})
    assert [m[1:] for m in misses] == [((1, "a"), {}), ((1,), {"b": 2})]
    assert misses[0][0] == make_key((1, "a"), {})
    assert (cache.hits, cache.misses) == (2, 2)
    clock.advance(5)
    assert f(1, "a") == ("loaded", (1, "a"), {})  # expired: a miss
    assert len(misses) == 3
    cache.set(make_key((None,), {}), None)
    assert f(None) is None  # a cached None is a hit
    assert len(misses) == 3


def test_memoized_never_confuses_equal_arguments_of_different_types(l1_impl: Any) -> None:
    cache = l1_impl(10)
    make_key = _ToyKeyMaker()

    class S(str):
        pass

    def fallback(key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        cache.set(key, type(args[0]).__name__)
        return cache.get(key)

    f = cache.memoized(make_key, fallback, make_key.memo)
    for _ in range(2):
        assert [f(x) for x in (1, True, 1.0, "a", S("a"))] == ["int", "bool", "float", "str", "S"]
    assert set(make_key.memo) == {1, "a"}  # only make_key writes the memo


def test_memoized_skips_leading_arguments_in_the_memo(l1_impl: Any) -> None:
    cache = l1_impl(10)
    make_key = _ToyKeyMaker(skip=1)

    def fallback(key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        cache.set(key, args)
        return args

    f = cache.memoized(make_key, fallback, make_key.memo, 1)
    first, second = object(), object()
    assert f(first, 7) == (first, 7)
    assert f(second, 7) == (first, 7)  # the key leaves the first argument out
    assert f(second, 7.0) == (second, 7.0)
    assert set(make_key.memo) == {7}


def test_memoized_is_function_like(l1_impl: Any) -> None:
    cache = l1_impl(10)
    make_key = _ToyKeyMaker(skip=1)

    def fallback(key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return args

    def method(self: Any, x: int) -> Any:
        """A method."""

    f = cache.memoized(make_key, fallback, make_key.memo, 1)
    functools.update_wrapper(f, method)
    f.extra = 1
    assert (f.__name__, f.__doc__, f.__wrapped__, f.extra) == ("method", "A method.", method, 1)
    assert weakref.ref(f)() is f

    class Owner:
        m = f

    owner = Owner()
    assert Owner.m is f
    assert owner.m(5) == (owner, 5)  # bound like a function
    assert owner.m(x=5) == (owner,) and make_key.calls[-1] == ((owner,), {"x": 5})
    bound = owner.m  # fetched, not called at once: a bound method as for a function
    assert bound.__self__ is owner and bound(6) == Owner.m(owner, 6) == (owner, 6)
    # pickled and copied by reference, like a function
    f.__module__, f.__qualname__ = __name__, "_memoized_for_pickle"
    globals()["_memoized_for_pickle"] = f
    try:
        assert pickle.loads(pickle.dumps(f)) is f
        assert copy.copy(f) is f and copy.deepcopy(f) is f
    finally:
        del globals()["_memoized_for_pickle"]


def test_memoized_takes_every_form_of_call(l1_impl: Any) -> None:
    cache = l1_impl(10)
    make_key = _ToyKeyMaker(skip=1)
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def fallback(key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        seen.append((args, dict(kwargs)))
        kwargs["changed"] = True  # the callable's own dict, as a **kwargs parameter's
        return key

    f = cache.memoized(make_key, fallback, make_key.memo, 1)
    mine = {"b": 2}
    keys = {
        f(1, **mine),
        f(1, b=2),
        f.__call__(1, b=2),
        functools.partial(f, 1)(b=2),
        f(*[1], **{"b": 2}),
    }
    assert mine == {"b": 2} and len(keys) == 1
    assert seen == [((1,), {"b": 2})] * 5
    assert f() == make_key((), {})  # fewer arguments than skip: nothing to leave out
    assert seen[-1] == ((), {})
    assert f(0, "a", "b") == make_key((0, "a", "b"), {})
    assert make_key.memo[("a", "b")] == f(1, "a", "b")


def test_memoized_reads_the_memo_before_make_key(l1_impl: Any) -> None:
    cache = l1_impl(10)
    make_key = _ToyKeyMaker()
    f = cache.memoized(make_key, lambda key, args, kwargs: cache.set(key, args), make_key.memo)
    calls = [f(*args) for args in [("a",), (1, "a"), (), ("a",), (1, "a"), ()]]
    assert calls[3:] == [("a",), (1, "a"), ()]  # hits
    assert set(make_key.memo) == {"a", (1, "a"), ()}
    # the pure spec builds every key; the compiled callable only those the memo lacks
    assert len(make_key.calls) == (6 if type(cache).__module__.endswith("_py") else 3)


def test_memoized_propagates_errors_and_checks_its_arguments(l1_impl: Any) -> None:
    cache = l1_impl(10)
    make_key = _ToyKeyMaker()

    def fallback(key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise LookupError(key)

    f = cache.memoized(make_key, fallback)
    with pytest.raises(ValueError):
        f(fail=ValueError("from make_key"))
    with pytest.raises(LookupError):
        f(1)
    with pytest.raises(TypeError):
        cache.memoized(lambda args, kwargs: [], fallback)(1)  # unhashable key, like get()
    with pytest.raises(TypeError):
        cache.memoized(42, fallback)
    with pytest.raises(TypeError):
        cache.memoized(make_key, 42)
    with pytest.raises(TypeError):
        cache.memoized(make_key, fallback, [])
    with pytest.raises(ValueError):
        cache.memoized(make_key, fallback, {}, -1)


def test_reset_forgets_entries_tickets_and_counters_but_keeps_bound_callables(
    l1_impl: Any,
) -> None:
    cache = l1_impl(10)
    get = cache.getter(lambda key, default: ("miss", key))
    cache.set("a", 1, tags=["t"])
    assert get("a") == 1
    ticket = cache.ticket("b")
    for i in range(5000):  # tag invalidations recorded while the ticket is out
        cache.invalidate_tag(f"tag{i}")
    cache.reset()
    assert len(cache) == 0
    assert cache.counters() == dict.fromkeys(cache.counters(), 0)
    with pytest.raises(ValueError):
        cache.install(ticket, "b", 2)  # a ticket from before the reset is forgotten
    fresh = cache.ticket("c")
    assert cache.install(fresh, "c", 3, tags=["x"]) is True  # the tag guard starts afresh
    assert get("c") == 3  # the getter bound before the reset sees the same, reset cache
