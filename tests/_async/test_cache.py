"""The tiered cache's contract, written once for AsyncCache; Cache runs the generated twin.

Every test that touches Redis runs on a real standalone server and on a real 3-master
cluster (ids ``standalone`` / ``cluster``); ``l1only`` is the cache with no Redis.
"""

from __future__ import annotations

import inspect
import pickle
import time
from datetime import timedelta

import pytest

from stratacache import (
    MISSING,
    AsyncCache,
    InvalidKeyError,
    SerializationError,
)
from stratacache._keys import KeySpace
from stratacache._primitives import AsyncRedisCluster, async_sleep

from concurrency import (
    AsyncEvent,
    AsyncTask,
    FakeClock,
    async_bus_settled,
    async_until,
    async_wait_event,
)

NS = "t"
TEST_REDIS_TIMEOUT = 2.0


class Pickled:
    """Unpickling this would run code: decoding must never get that far."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, ("raise SystemExit('pickle executed')",))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(target: tuple[str, bool], clock: FakeClock | None = None, **options: object) -> AsyncCache:
    url, cluster = target
    if clock is not None:
        options.setdefault("timer", clock)
        options.setdefault("clock", clock)
    # a generous time budget: these tests are about behaviour, not about how fast a busy
    # CI machine schedules Redis (the fault tests set their own short budgets)
    options.setdefault("redis_timeout", TEST_REDIS_TIMEOUT)
    # the bus's own heartbeat, late on a starved CPU, would make L1 step aside for a moment
    # (the safe reaction, tested in test_bus.py) and these tests' L1 hits misses
    options.setdefault("heartbeat_timeout", 5.0)
    return AsyncCache(url, cluster=cluster, namespace=NS, **options)  # type: ignore[arg-type]


@pytest.fixture
async def cache(target: tuple[str, bool], clock: FakeClock):
    c = make(target, clock)
    yield c
    await c.close()


@pytest.fixture
async def other(target: tuple[str, bool], clock: FakeClock):
    """A second instance on the same Redis: another process, as far as L1 is concerned."""
    c = make(target, clock)
    yield c
    await c.close()


async def settled(writer: AsyncCache, reader: AsyncCache) -> None:
    """Wait until ``reader``'s bus has heard everything ``writer`` has published so far,
    so that an invalidation still in flight cannot land in the middle of a test."""
    await async_bus_settled(writer, [reader], 5)


# -- get / set / delete ---------------------------------------------------------------------


async def test_get_of_an_unknown_key_returns_the_default(cache: AsyncCache) -> None:
    assert await cache.get("nope") is None
    assert await cache.get("nope", MISSING) is MISSING
    s = cache.stats()
    assert (s.l1_misses, s.l2_misses, s.loads) == (2, 2, 0)


async def test_set_then_get_is_an_l1_hit(cache: AsyncCache) -> None:
    await cache.set("k", {"a": [1, 2, (3, 4)]})
    assert await cache.get("k") == {"a": [1, 2, (3, 4)]}
    assert cache.stats().l1_hits == 1


async def test_values_are_shared_through_l2(cache: AsyncCache, other: AsyncCache) -> None:
    await cache.set("k", [1, "two", 3.0])
    await settled(cache, other)
    assert await other.get("k") == [1, "two", 3.0]
    assert other.stats().l2_hits == 1
    assert await other.get("k") == [1, "two", 3.0]
    assert other.stats().l1_hits == 1


async def test_none_is_a_value_that_can_be_cached(cache: AsyncCache, other: AsyncCache) -> None:
    await cache.set("k", None)
    assert await cache.get("k", MISSING) is None
    assert await other.get("k", MISSING) is None


async def test_delete_removes_the_key_from_every_tier(cache: AsyncCache, other: AsyncCache) -> None:
    await cache.set("k", 1)
    assert await other.get("k") == 1
    assert await cache.delete("k") is True
    assert await cache.get("k", MISSING) is MISSING
    assert await cache.delete("k") is False
    # the bus drops it from the other instance's L1 (within a bounded wait)
    await async_until(lambda: other.l1.peek("k", MISSING) is MISSING, 5)
    assert await other.get("k", MISSING) is MISSING


async def test_keys_are_namespaced(target: tuple[str, bool], cache: AsyncCache) -> None:
    url, cluster = target
    foreign = AsyncCache(url, cluster=cluster, namespace="other", redis_timeout=2.0)
    try:
        await cache.set("k", "mine")
        assert await foreign.get("k", MISSING) is MISSING
    finally:
        await foreign.close()


async def test_get_many_returns_found_keys_in_one_round_trip(
    cache: AsyncCache, other: AsyncCache
) -> None:
    await cache.set_many({f"k{i}": i for i in range(100)})
    await settled(cache, other)
    # the first L2 hit after start-up also reads the namespace epoch (once, then kept)
    assert await other.get("k0") == 0
    before = other.stats().l2_latency.count
    found = await other.get_many([f"k{i}" for i in range(100)] + ["absent"])
    assert found == {f"k{i}": i for i in range(100)}
    assert other.stats().l2_latency.count - before == 1
    assert await other.get_many(["k1", "k2"]) == {"k1": 1, "k2": 2}
    assert other.stats().l2_latency.count - before == 1  # now from L1


async def test_set_many_writes_every_value_to_l2(cache: AsyncCache, other: AsyncCache) -> None:
    await cache.set_many({"a": 1, "b": (2,)}, ttl=30, tags=["t"])
    assert await other.get("a") == 1
    assert await other.get("b") == (2,)


# -- TTL -------------------------------------------------------------------------------


async def test_entries_expire_after_their_ttl(
    cache: AsyncCache, other: AsyncCache, clock: FakeClock
) -> None:
    await cache.set("k", "v", ttl=10)
    clock.advance(9)
    assert await cache.get("k") == "v"
    assert await other.get("k") == "v"
    clock.advance(2)
    assert await cache.get("k", MISSING) is MISSING
    assert await other.get("k", MISSING) is MISSING


async def test_ttl_accepts_a_timedelta(cache: AsyncCache, clock: FakeClock) -> None:
    await cache.set("k", "v", ttl=timedelta(seconds=5))
    clock.advance(6)
    assert await cache.get("k", MISSING) is MISSING


async def test_l1_never_outlives_the_l2_entry(
    cache: AsyncCache, other: AsyncCache, clock: FakeClock
) -> None:
    await cache.set("k", "v", ttl=20)
    clock.advance(15)
    assert await other.get("k") == "v"  # L2 hit, L1 gets the 5 s that remain
    clock.advance(6)
    assert await other.get("k", MISSING) is MISSING


async def test_l1_max_ttl_caps_the_l1_copy(target: tuple[str, bool], clock: FakeClock) -> None:
    cache = make(target, clock, l1_max_ttl=5)
    try:
        await cache.set("k", "v", ttl=100)
        clock.advance(6)
        assert await cache.get("k") == "v"
        s = cache.stats()
        assert s.l2_hits == 1  # the L1 copy had expired; L2 still had it
    finally:
        await cache.close()


async def test_jitter_only_shortens_the_ttl(
    target: tuple[str, bool], raw, clock: FakeClock
) -> None:
    cache = make(target, clock, jitter=0.5)
    try:
        started = time.monotonic()
        for i in range(20):
            await cache.set(f"k{i}", i, ttl=100)
        pttls = [await raw.pttl(KeySpace(NS).data_key(f"k{i}")) for i in range(20)]
        # Redis counts real time down while we read: allow what really passed, no more
        passed_ms = (time.monotonic() - started) * 1000 + 1
        assert all(50_000 - passed_ms <= p <= 100_000 for p in pttls), (pttls, passed_ms)
        assert len(set(pttls)) > 1
    finally:
        await cache.close()


async def test_touch_gives_a_new_ttl(
    cache: AsyncCache, other: AsyncCache, clock: FakeClock
) -> None:
    await cache.set("k", "v", ttl=10)
    assert await cache.touch("k", 100) is True
    clock.advance(50)
    assert await cache.get("k") == "v"
    assert await other.get("k") == "v"
    assert await cache.touch("absent", 10) is False


# -- loader, single-flight, leases -------------------------------------------------------------


async def test_get_or_set_loads_once_then_hits(cache: AsyncCache) -> None:
    calls = []

    async def loader():
        calls.append(1)
        return {"id": 1}

    assert await cache.get_or_set("u:1", loader, ttl=60) == {"id": 1}
    assert await cache.get_or_set("u:1", loader, ttl=60) == {"id": 1}
    assert len(calls) == 1
    s = cache.stats()
    assert (s.loads, s.l1_hits, s.l1_misses) == (1, 1, 1)
    assert s.hit_rate == 0.5


async def test_get_or_set_reads_l2_before_loading(cache: AsyncCache, other: AsyncCache) -> None:
    await cache.set("k", "from-l2")

    async def loader():
        raise AssertionError("loader must not run")

    assert await other.get_or_set("k", loader) == "from-l2"
    assert other.stats().loads == 0


async def test_loader_errors_reach_the_caller_and_nothing_is_cached(cache: AsyncCache) -> None:
    async def failing():
        raise LookupError("db down")

    with pytest.raises(LookupError, match="db down"):
        await cache.get_or_set("k", failing)
    assert await cache.get("k", MISSING) is MISSING

    async def loader():
        return 7

    assert await cache.get_or_set("k", loader) == 7


async def test_a_plain_function_works_as_loader(cache: AsyncCache) -> None:
    assert await cache.get_or_set("k", lambda: 42) == 42


async def test_concurrent_misses_make_one_loader_call(cache: AsyncCache) -> None:
    release = AsyncEvent()
    calls = []

    async def loader():
        calls.append(1)
        await async_wait_event(release)
        return "value"

    tasks = [AsyncTask(lambda: cache.get_or_set("hot", loader)) for _ in range(10)]
    await async_until(lambda: cache.stats().coalesced >= 9)
    release.set()
    assert [await t.join() for t in tasks] == ["value"] * 10
    assert len(calls) == 1
    assert cache.stats().coalesced == 9


async def test_the_leaders_exception_reaches_every_waiter(cache: AsyncCache) -> None:
    release = AsyncEvent()

    async def loader():
        await async_wait_event(release)
        raise KeyError("gone")

    async def call():
        try:
            await cache.get_or_set("hot", loader)
        except KeyError as exc:
            return exc
        return None

    tasks = [AsyncTask(call) for _ in range(5)]
    await async_until(lambda: cache.stats().coalesced >= 4)
    release.set()
    errors = [await t.join() for t in tasks]
    assert all(isinstance(e, KeyError) for e in errors)
    assert cache.stats().loads == 1
    assert await cache.get("hot", MISSING) is MISSING


async def test_a_lease_holder_elsewhere_fills_for_everyone(
    target: tuple[str, bool], clock: FakeClock
) -> None:
    # Two instances stand for two processes: while A holds the lease and loads, B waits
    # for A's fill instead of calling its own loader.
    a = make(target)
    b = make(target, lease_wait=10)
    loading = AsyncEvent()
    release = AsyncEvent()

    async def slow_loader():
        loading.set()
        await async_wait_event(release)
        return "from-a"

    async def never():
        raise AssertionError("B's loader must not run")

    try:
        task_a = AsyncTask(lambda: a.get_or_set("k", slow_loader))
        await async_wait_event(loading)
        task_b = AsyncTask(lambda: b.get_or_set("k", never))
        await async_until(lambda: b.stats().lease_waits >= 1)
        release.set()
        assert await task_a.join() == "from-a"
        assert await task_b.join() == "from-a"
        assert b.stats().loads == 0
    finally:
        await a.close()
        await b.close()


async def test_a_waiter_loads_itself_after_lease_wait(target: tuple[str, bool]) -> None:
    a = make(target)
    b = make(target, lease_wait=0.05)
    loading = AsyncEvent()
    release = AsyncEvent()

    async def stuck_loader():
        loading.set()
        await async_wait_event(release)
        return "late"

    async def own_loader():
        return "b-loaded"

    try:
        task_a = AsyncTask(lambda: a.get_or_set("k", stuck_loader))
        await async_wait_event(loading)
        assert await b.get_or_set("k", own_loader) == "b-loaded"
        assert b.stats().loads == 1
        release.set()
        assert await task_a.join() == "late"
    finally:
        await a.close()
        await b.close()


# -- the stale-set race ------------------------------------------------------------------------


class Database:
    """A stand-in for the system of record, with a hook to pause a reader after its read."""

    def __init__(self) -> None:
        self.rows = {"user:1": "old"}
        self.read_done = AsyncEvent()
        self.resume = AsyncEvent()

    async def slow_read(self, key: str) -> str:
        value = self.rows[key]
        self.read_done.set()
        await async_wait_event(self.resume)  # paused after the read, before the fill
        return value


async def _writer_updates_and_invalidates(db: Database, writer: AsyncCache) -> None:
    db.rows["user:1"] = "new"
    await writer.delete("user:1")


async def _race_once(
    target: tuple[str, bool], raw, clock: FakeClock, *, same_process: bool
) -> None:
    await raw.delete(KeySpace(NS).data_key("user:1"))
    db = Database()
    reader = make(target, clock)
    writer = reader if same_process else make(target, clock)
    try:
        task = AsyncTask(lambda: reader.get_or_set("user:1", lambda: db.slow_read("user:1")))
        await async_wait_event(db.read_done)
        await _writer_updates_and_invalidates(db, writer)
        db.resume.set()
        assert await task.join() == "old"  # the caller gets what it read...
        # ...but neither tier keeps it
        assert await raw.get(KeySpace(NS).data_key("user:1")) is None
        assert reader.l1.peek("user:1", MISSING) is MISSING
        assert reader.stats().fills_refused == 1

        async def fresh():
            return db.rows["user:1"]

        assert await reader.get_or_set("user:1", fresh) == "new"
    finally:
        await reader.close()
        if writer is not reader:
            await writer.close()


async def test_stale_set_race_is_closed_writer_in_another_process(
    target: tuple[str, bool], raw, clock: FakeClock
) -> None:
    await _race_once(target, raw, clock, same_process=False)


async def test_stale_set_race_is_closed_writer_in_the_same_process(
    target: tuple[str, bool], raw, clock: FakeClock
) -> None:
    await _race_once(target, raw, clock, same_process=True)


async def test_a_naive_fill_shows_the_race_this_test_catches(
    target: tuple[str, bool], raw, clock: FakeClock
) -> None:
    # The same schedule against plain cache-aside (get, load, set): the old value lands
    # in L2 after the writer's delete, and stays there. This proves the schedule above
    # really reproduces the race.
    db = Database()
    reader = make(target, clock)
    writer = make(target, clock)

    async def naive_get_or_set(key: str):
        value = await reader.get(key, MISSING)
        if value is MISSING:
            value = await db.slow_read(key)
            await reader.set(key, value)
        return value

    try:
        task = AsyncTask(lambda: naive_get_or_set("user:1"))
        await async_wait_event(db.read_done)
        await _writer_updates_and_invalidates(db, writer)
        db.resume.set()
        assert await task.join() == "old"
        assert await writer.get("user:1") == "old"  # stale: the race happened
    finally:
        await reader.close()
        await writer.close()


# -- fail-safe, negative caching -----------------------------------------------------------


async def test_fail_safe_serves_the_last_value_when_the_loader_fails(
    target: tuple[str, bool], clock: FakeClock
) -> None:
    cache = make(target, clock, fail_safe=True, fail_safe_max_age=60)
    fresh = make(target, clock, fail_safe=True, fail_safe_max_age=60)

    async def failing():
        raise ConnectionError("db down")

    try:
        await cache.set("k", "last-good", ttl=10)
        clock.advance(11)
        assert await cache.get_or_set("k", failing) == "last-good"  # from the L1 fail-safe copy
        assert await fresh.get_or_set("k", failing) == "last-good"  # from L2, kept past its TTL
        assert cache.stats().stale_served == 1
        assert fresh.stats().stale_served == 1
        clock.advance(61)
        with pytest.raises(ConnectionError):
            await cache.get_or_set("k", failing)
    finally:
        await cache.close()
        await fresh.close()


async def test_without_fail_safe_the_loader_error_is_raised(
    cache: AsyncCache, clock: FakeClock
) -> None:
    async def failing():
        raise ConnectionError("db down")

    await cache.set("k", "last-good", ttl=10)
    clock.advance(11)
    with pytest.raises(ConnectionError):
        await cache.get_or_set("k", failing)


async def test_negative_results_are_cached_for_negative_ttl(
    target: tuple[str, bool], clock: FakeClock
) -> None:
    cache = make(target, clock, negative_ttl=2)
    calls = []

    async def not_found():
        calls.append(1)
        return None

    try:
        assert await cache.get_or_set("u:404", not_found, ttl=300) is None
        assert await cache.get_or_set("u:404", not_found, ttl=300) is None
        assert len(calls) == 1
        clock.advance(3)
        assert await cache.get_or_set("u:404", not_found, ttl=300) is None
        assert len(calls) == 2
    finally:
        await cache.close()


# -- bad input, bad bytes ---------------------------------------------------------------------


async def test_an_unserializable_value_raises_before_anything_is_written(
    cache: AsyncCache, raw
) -> None:
    with pytest.raises(SerializationError) as info:
        await cache.set("k", object())
    assert isinstance(info.value, TypeError)
    assert await raw.get(KeySpace(NS).data_key("k")) is None
    assert cache.l1.peek("k", MISSING) is MISSING


async def test_bad_keys_and_ttls_are_rejected_clearly(cache: AsyncCache) -> None:
    with pytest.raises(TypeError):
        await cache.get(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        await cache.set("", 1)
    with pytest.raises(ValueError):
        await cache.set("k", 1, ttl=-1)
    with pytest.raises(ValueError):
        await cache.set("k", 1, ttl=float("nan"))
    with pytest.raises(TypeError):
        await cache.set("k", 1, ttl="10")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await cache.set("k", 1, tags="single-string")
    with pytest.raises(TypeError):
        await cache.set("k", 1, tags=[1])  # type: ignore[list-item]

    calls = []

    async def loader():
        calls.append(1)
        return 1

    with pytest.raises(ValueError):
        await cache.get_or_set("k", loader, ttl=-5)
    assert calls == []  # rejected before the loader ran


async def test_bytes_that_do_not_decode_are_misses(cache: AsyncCache, raw) -> None:
    keys = KeySpace(NS)
    planted = {
        "pickle": pickle.dumps(Pickled()),
        "truncated": b"\x96\x01\xa1k",
        "bomb": b"\xdd\xff\xff\xff\xff",  # array32 of 4 billion items, no items
        "deep": b"\x91" * 100_000 + b"\xc0",
        "foreign": b"hello world",
    }
    for name, blob in planted.items():
        await raw.set(keys.data_key(name), blob)
    for name in planted:
        assert await cache.get(name, MISSING) is MISSING

        async def loader(name=name):
            return f"reloaded-{name}"

        assert await cache.get_or_set(name, loader) == f"reloaded-{name}"
    assert cache.stats().decode_errors == 2 * len(planted)


async def test_an_entry_under_another_key_is_rejected(cache: AsyncCache, raw) -> None:
    await cache.set("a", "value-of-a")
    keys = KeySpace(NS)
    await raw.set(keys.data_key("b"), await raw.get(keys.data_key("a")))
    assert await cache.get("b", MISSING) is MISSING
    assert cache.stats().decode_errors == 1


# -- the decorator ------------------------------------------------------------------------------


async def test_cached_decorator_with_a_template_key(cache: AsyncCache, other: AsyncCache) -> None:
    calls = []

    @cache.cached(ttl=60, key="user:{user_id}")
    async def get_user(user_id: int):
        calls.append(user_id)
        return {"id": user_id}

    assert await get_user(1) == {"id": 1}
    assert await get_user(user_id=1) == {"id": 1}
    assert calls == [1]
    assert await other.get("user:1") == {"id": 1}
    assert await get_user.invalidate(1) is True
    assert await get_user(1) == {"id": 1}
    assert calls == [1, 1]


async def test_cached_decorator_default_keys_are_injective(cache: AsyncCache) -> None:
    @cache.cached()
    async def join(a: str, b: str):
        return a + "|" + b

    assert await join("a:b", "c") == "a:b|c"
    assert await join("a", "b:c") == "a|b:c"


async def test_cached_decorator_keeps_equal_values_of_different_types_apart(
    cache: AsyncCache,
) -> None:
    calls = []

    @cache.cached()
    async def describe(x):
        calls.append(x)
        return f"{type(x).__name__}:{x!r}"

    for _ in range(2):  # the second round is answered from the cache
        assert await describe(1) == "int:1"
        assert await describe(True) == "bool:True"
        assert await describe(1.0) == "float:1.0"
        assert await describe("1") == "str:'1'"
        assert await describe(x=1) == "int:1"  # a keyword shares the positional entry
    assert [type(x) for x in calls] == [int, bool, float, str]
    assert len({describe.cache_key(x) for x in (1, True, 1.0, "1")}) == 4


async def test_cached_decorator_on_a_method(cache: AsyncCache) -> None:
    calls = []

    class Account:
        def __init__(self, id: int) -> None:
            self.id = id

        @cache.cached(key="rate:{day}")
        async def rate(self, day: str):
            """Shared by all accounts: the key does not name self."""
            calls.append(("rate", self.id, day))
            return f"rate-{day}"

        @cache.cached(key="balance:{self.id}:{day}")
        async def balance(self, day: str):
            calls.append(("balance", self.id, day))
            return self.id * 100

    a, b = Account(1), Account(2)
    assert await a.balance("mon") == 100
    assert await b.balance("mon") == 200
    assert await a.balance("mon") == 100
    assert await b.balance(day="mon") == 200
    assert await Account.balance(a, "mon") == 100
    assert await a.rate("mon") == "rate-mon"
    assert await b.rate("mon") == "rate-mon"
    assert calls == [("balance", 1, "mon"), ("balance", 2, "mon"), ("rate", 1, "mon")]
    assert Account.balance.cache_key(a, "mon") == "balance:1:mon"
    assert await Account.balance.invalidate(a, "mon") is True
    assert await a.balance("mon") == 100
    assert calls[-1] == ("balance", 1, "mon")
    assert Account.rate.__doc__ == "Shared by all accounts: the key does not name self."


async def test_cached_decorator_looks_like_the_function(cache: AsyncCache) -> None:
    async def greet(name: str, punctuation: str = "!"):
        """Say hello."""
        return f"hello {name}{punctuation}"

    wrapped = cache.cached()(greet)
    assert wrapped.__name__ == "greet"
    assert wrapped.__qualname__ == greet.__qualname__
    assert wrapped.__module__ == greet.__module__
    assert wrapped.__doc__ == "Say hello."
    assert wrapped.__wrapped__ is greet
    assert list(inspect.signature(wrapped).parameters) == ["name", "punctuation"]
    assert await wrapped("bob") == "hello bob!"
    assert await wrapped("bob", "!") == "hello bob!"  # defaults applied: the same entry
    assert await wrapped("bob", punctuation="?") == "hello bob?"
    with pytest.raises(TypeError):
        await wrapped()  # does not fit the signature


# -- Redis faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["bypass_l1", "serve_l1"])
async def test_reads_fall_back_to_the_loader_while_redis_is_down(
    redis_server_factory, policy: str
) -> None:
    server = redis_server_factory()
    clock = FakeClock()
    cache = AsyncCache(
        server.url, namespace=NS, timer=clock, breaker_threshold=2, bus_unhealthy=policy
    )
    try:
        await cache.set("k", "v", ttl=60)
        cache.l1.clear()
        server.kill()
        for i in range(5):
            assert await cache.get_or_set(f"x{i}", lambda i=i: i) == i
        assert await cache.get("k", "default") == "default"  # L2 unreachable: a miss
        # with Redis gone the bus cannot be heard: unhealthy within heartbeat_timeout
        await async_until(lambda: cache.stats().bus_state == "unhealthy", 5)
        await cache.set("k2", "local")  # fails soft: counted
        if policy == "serve_l1":
            assert await cache.get("k2") == "local"  # L1 keeps the value
        else:
            assert await cache.get("k2", "default") == "default"  # L1 is bypassed
        s = cache.stats()
        assert s.errors >= 2
        assert s.breaker_state == "open"
        assert s.breaker_opened == 1
        server.restart()
        clock.advance(2)  # past breaker_cooldown: the next call probes Redis
        await cache.set("k3", "back")
        assert cache.stats().breaker_state == "closed"
        cache.l1.clear()
        # served again: at once, or (if a PING of the prober timed out on this loaded
        # machine, which makes older entries suspect for recovery_grace) a moment later
        waited = 0.0
        while await cache.get("k3") != "back":
            assert waited < 10.0, "k3 not served after Redis came back"
            await async_sleep(0.05)
            waited += 0.05
    finally:
        await cache.close()


# -- L1 only, lifecycle, stats --------------------------------------------------------------------


async def test_without_redis_the_cache_is_l1_only(clock: FakeClock) -> None:
    cache = AsyncCache(None, timer=clock, clock=clock)
    assert await cache.get_or_set("k", lambda: 1, ttl=10) == 1
    assert await cache.get("k") == 1
    assert await cache.touch("k", 100) is True
    clock.advance(50)
    assert await cache.get("k") == 1
    assert await cache.delete("k") is True
    assert await cache.get("k", MISSING) is MISSING
    await cache.close()


async def test_l1_policy_tinylfu_keeps_a_hot_key_through_a_scan(clock: FakeClock) -> None:
    cache = AsyncCache(None, timer=clock, clock=clock, l1_maxsize=100, l1_policy="tinylfu")
    for _ in range(5):
        await cache.set("hot", 1, ttl=60)
        assert await cache.get("hot") == 1
    for i in range(1000):
        await cache.set(f"scan{i}", i, ttl=60)
    assert await cache.get("hot") == 1  # under LRU the scan would have evicted it
    with pytest.raises(ValueError):
        AsyncCache(None, l1_policy="lfu")  # type: ignore[arg-type]
    await cache.close()


async def _client_ids(raw) -> set[tuple[str, str]]:
    """The connections the server side lists, as (node, client id) (every node of a
    cluster); ids are never reused, so connections opened later are new ids."""
    if isinstance(raw, AsyncRedisCluster):
        by_node = await raw.client_list(target_nodes=AsyncRedisCluster.ALL_NODES)
        return {(node, c["id"]) for node, clients in by_node.items() for c in clients}
    return {("", c["id"]) for c in await raw.client_list()}


async def test_context_manager_closes_the_client_it_built(target: tuple[str, bool], raw) -> None:
    url, cluster = target
    before = await _client_ids(raw)
    async with AsyncCache(url, cluster=cluster, namespace=NS) as cache:
        await cache.set("k", 1)
        assert await cache.get("k") == 1
        # the cache's own connections (other tests' may close meanwhile, never open)
        ours = await _client_ids(raw) - before
        assert ours
    # the server notices closed sockets in its own time: poll (bounded) rather than race it
    for _ in range(500):
        if not ours & await _client_ids(raw):
            break
        await async_sleep(0.01)
    assert not ours & await _client_ids(raw)


async def test_a_client_passed_in_stays_open(raw, target: tuple[str, bool]) -> None:
    async with AsyncCache(raw, namespace=NS) as cache:
        await cache.set("k", 1)
    assert await raw.ping()


async def test_stats_to_dict_has_every_counter(cache: AsyncCache) -> None:
    await cache.get_or_set("k", lambda: 1)
    await cache.get("k")
    data = cache.stats().to_dict()
    for name in (
        "l1_hits", "l1_misses", "l2_hits", "l2_misses", "loads", "coalesced",
        "stale_served", "errors", "decode_errors", "hit_rate", "load_latency", "l2_latency",
    ):  # fmt: skip
        assert name in data
    assert data["load_latency"]["count"] == 1
    assert data["hit_rate"] == 0.5


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError):
        AsyncCache(None, l1_maxsize=0)
    with pytest.raises(ValueError):
        AsyncCache(None, jitter=1.5)
    with pytest.raises(ValueError):
        AsyncCache(None, default_ttl=0)
    with pytest.raises(TypeError):
        AsyncCache(12345)
