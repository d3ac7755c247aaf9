"""Early refresh (XFetch), callable and adaptive TTLs, copy on read — on real Redis
(standalone and cluster) and without Redis; written once for AsyncCache, Cache runs the
generated twin. The XFetch draw is injected (``rand=``) and the clocks are fake, so a
refresh happens exactly when a test says; background work is awaited by polling the
cache's state, never by sleeping."""

from __future__ import annotations

import time
from typing import Any

import pytest

from stratacache import AdaptiveTTL, AsyncCache
from stratacache._keys import KeySpace
from stratacache._primitives import async_sleep
from stratacache._sentinel import MISSING

from concurrency import AsyncEvent, FakeClock, async_until, async_wait_event

NS = "ro"
TTL = 50.0  # below l1_max_ttl (60): L1 and L2 expire together


class Draw:
    """The XFetch draw, set by the test: 1.0 never refreshes early (ln 1 = 0), 0.0
    always does (ln 0 = -inf)."""

    def __init__(self, value: float = 1.0) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


class Loader:
    """Counts its calls; returns ``prefix-N``; optionally blocks until released."""

    def __init__(self, prefix: str = "v") -> None:
        self.calls = 0
        self.prefix = prefix
        self.gate: AsyncEvent | None = None
        self.entered = AsyncEvent()
        self.error: Exception | None = None

    def block(self) -> None:
        """Make the next calls wait for ``gate``; ``entered`` tells when one started."""
        self.gate = AsyncEvent()
        self.entered = AsyncEvent()

    async def __call__(self) -> str:
        self.calls += 1
        n = self.calls
        self.entered.set()
        if self.gate is not None:
            await async_wait_event(self.gate)
        if self.error is not None:
            raise self.error
        return f"{self.prefix}-{n}"


def make(
    target: tuple[str, bool] | None, clock: FakeClock, draw: Draw, **options: Any
) -> AsyncCache:
    options.setdefault("redis_timeout", 2.0)
    if target is None:
        return AsyncCache(None, namespace=NS, timer=clock, clock=clock, rand=draw, **options)
    url, cluster = target
    return AsyncCache(
        url, cluster=cluster, namespace=NS, timer=clock, clock=clock, rand=draw, **options
    )


async def ready(*caches: AsyncCache) -> None:
    """Wait for each cache's bus to be healthy: its first subscription flushes L1, which
    would drop what a test just filled."""
    for cache in caches:
        if cache._bus is not None:
            await cache._bus_started()
            await async_until(lambda cache=cache: cache.stats().bus_state == "healthy", 30)


async def refreshes_done(cache: AsyncCache) -> None:
    await async_until(lambda: cache._refresher.running() == 0, 30)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- early refresh ---------------------------------------------------------------------


async def test_refresh_happens_early_and_serves_the_current_value(
    target: tuple[str, bool], raw, clock: FakeClock
) -> None:
    draw = Draw(0.0)  # drawn when the entry is noted: its refresh time is now
    cache = make(target, clock, draw)
    await ready(cache)
    load = Loader()
    try:
        assert await cache.get_or_set("k", load, ttl=TTL, early_refresh=True) == "v-1"
        # the load time travelled in the envelope
        entry = cache._codec.decode("k", await raw.get(KeySpace(NS).data_key("k")))
        assert entry.load_time > 0
        clock.advance(TTL - 1)  # one second before expiry
        # a call without early refresh never refreshes, whatever the draw
        assert await cache.get_or_set("k", load, ttl=TTL) == "v-1"
        await refreshes_done(cache)
        assert load.calls == 1
        # with it: the caller gets the current value at once, the refresh runs behind
        load.block()
        assert await cache.get_or_set("k", load, ttl=TTL, early_refresh=True) == "v-1"
        await async_wait_event(load.entered)
        # the reader that started it took the key out of ``due``: the others return
        # from get_or_set's inline check, as from a plain hit
        assert "k" not in cache._refresher.due
        assert await cache.get_or_set("k", load, ttl=TTL, early_refresh=True) == "v-1"
        assert load.calls == 2  # one refresh per key at a time
        load.gate.set()
        await refreshes_done(cache)
        assert cache.l1.peek("k") == "v-2"
        assert "k" in cache._refresher.due  # the new entry's refresh time
        assert await cache.get_or_set("k", load, ttl=TTL) == "v-2"
        assert cache.stats().early_refreshes == 1
        # the refreshed entry lives a full TTL from the refresh
        pttl = await raw.pttl(KeySpace(NS).data_key("k"))
        assert TTL * 1000 - 5000 < pttl <= TTL * 1000
    finally:
        await cache.close()


async def test_refresh_follows_the_xfetch_rule(clock: FakeClock) -> None:
    """now - delta * beta * ln(r) >= expiry, with delta the measured load time."""
    draw = Draw(1.0)
    cache = make(None, clock, draw)

    async def slow() -> str:
        await async_sleep(0.02)
        return "slow"

    try:
        # a draw of 1 (lead 0): the refresh time is the expiry itself
        await cache.get_or_set("k", slow, ttl=TTL, early_refresh=True)
        delta = cache._refresher._noted["k"][3]
        assert delta >= 0.02
        clock.advance(TTL - delta / 100)
        await cache.get_or_set("k", slow, ttl=TTL, early_refresh=True)
        assert cache._refresher.running() == 0
        # one draw per entry, when it is noted: a later draw changes nothing for it
        draw.value = 0.0
        await cache.get_or_set("k", slow, ttl=TTL, early_refresh=True)
        assert cache._refresher.running() == 0
        clock.advance(delta)  # expired: the miss path fills it (draw -ln(r) = 5 now)
        draw.value = 2.718281828459045**-5
        await cache.get_or_set("k", slow, ttl=TTL, early_refresh=True)
        assert cache._refresher.running() == 0
        delta = cache._refresher._noted["k"][3]
        assert delta >= 0.02
        # refresh time: expiry - 5 * delta (beta 1)
        clock.advance(TTL - 6 * delta)  # 6 load times before expiry: not yet
        await cache.get_or_set("k", slow, ttl=TTL, early_refresh=True)
        assert cache._refresher.running() == 0
        clock.advance(2 * delta)  # 4 load times before expiry: refresh
        await cache.get_or_set("k", slow, ttl=TTL, early_refresh=True)
        assert cache._refresher.running() == 1
        await refreshes_done(cache)
        assert cache.stats().early_refreshes == 1
        # beta = 0.5 halves the lead: -ln(r) = 15 is 7.5 load times, the entry is fresh
        # again (a full TTL ahead), so nothing happens
        await cache.get_or_set("k", slow, ttl=TTL, early_refresh=0.5)
        assert cache._refresher.running() == 0
    finally:
        await cache.close()


async def test_one_loader_call_for_two_instances(
    target: tuple[str, bool], clock: FakeClock
) -> None:
    """Two caches on one Redis (two processes, as far as L1 and the lease go): one of
    them refreshes, the other adopts its entry without loading."""
    draw = Draw(0.0)  # every entry noted is due at once
    a = make(target, clock, draw)
    b = make(target, clock, draw)
    await ready(a, b)
    load = Loader()
    try:
        assert await a.get_or_set("k", load, ttl=TTL, early_refresh=True) == "v-1"
        assert load.calls == 1
        clock.advance(TTL - 1)
        load.block()
        assert await a.get_or_set("k", load, ttl=TTL, early_refresh=True) == "v-1"
        await async_wait_event(load.entered)  # a holds the lease and loads
        # b's L2 hit notes the entry (due) and tries to refresh it
        assert await b.get_or_set("k", load, ttl=TTL, early_refresh=True) == "v-1"
        await refreshes_done(b)  # b found the lease taken and left it to a
        assert b._refresher.due["k"] > clock()  # b's readers rest for a load time
        load.gate.set()
        await refreshes_done(a)
        assert a.l1.peek("k") == "v-2"
        clock.advance(0.5)  # past b's quiet period (it found the lease taken)
        # b's next read refreshes again (its entry is still the old one): it takes the
        # lease, finds a's newer entry in L2 and installs it
        assert await b.get_or_set("k", load, ttl=TTL, early_refresh=True) == "v-1"
        await refreshes_done(b)
        assert b.l1.peek("k") == "v-2"
        assert load.calls == 2  # one fill, one refresh: none by b
        assert a.stats().early_refreshes == 1
        assert b.stats().early_refreshes == 0
        assert b.stats().early_refreshes_adopted == 1
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("write", ["set", "delete", "invalidate_tag"])
async def test_a_write_during_a_refresh_wins(
    target: tuple[str, bool], raw, clock: FakeClock, write: str
) -> None:
    draw = Draw(0.0)
    cache = make(target, clock, draw)
    await ready(cache)
    load = Loader()
    try:
        await cache.get_or_set("k", load, ttl=TTL, tags=["t"], early_refresh=True)
        load.block()
        await cache.get_or_set("k", load, ttl=TTL, tags=["t"], early_refresh=True)
        await async_wait_event(load.entered)
        if write == "set":
            await cache.set("k", "written", ttl=TTL)
        elif write == "delete":
            await cache.delete("k")
        else:
            await cache.invalidate_tag("t")
        load.gate.set()
        await refreshes_done(cache)
        assert cache.stats().early_refreshes == 0
        assert cache.stats().fills_refused >= 1
        expected = "written" if write == "set" else MISSING
        assert cache.l1.peek("k", MISSING) == expected
        assert await cache.get("k", MISSING) == expected
        if write == "delete":
            assert await raw.get(KeySpace(NS).data_key("k")) is None
    finally:
        await cache.close()


async def test_a_failed_refresh_keeps_serving(clock: FakeClock, target: tuple[str, bool]) -> None:
    draw = Draw(0.0)
    cache = make(target, clock, draw)
    await ready(cache)
    load = Loader()
    try:
        await cache.get_or_set("k", load, ttl=TTL, early_refresh=True)
        load.error = RuntimeError("source down")
        assert await cache.get_or_set("k", load, ttl=TTL, early_refresh=True) == "v-1"
        await refreshes_done(cache)
        assert cache.stats().early_refresh_failures == 1
        assert await cache.get_or_set("k", load, ttl=TTL) == "v-1"
        # the lease was given back: the next refresh (source back, and the quiet second
        # after a failure over) takes it and loads
        load.error = None
        await cache.get_or_set("k", load, ttl=TTL, early_refresh=True)
        assert cache._refresher.running() == 0  # still quiet
        clock.advance(1)
        await cache.get_or_set("k", load, ttl=TTL, early_refresh=True)
        await refreshes_done(cache)
        assert cache.l1.peek("k") == "v-3"
    finally:
        await cache.close()


async def test_redis_paused_mid_refresh_fails_quietly(redis_server_factory) -> None:
    server = redis_server_factory()
    clock = FakeClock()
    draw = Draw(0.0)
    # no bus: a paused Redis would make it unhealthy and empty L1, another feature
    cache = AsyncCache(
        server.url,
        namespace=NS,
        timer=clock,
        clock=clock,
        rand=draw,
        bus=False,
        redis_timeout=0.2,
    )
    load = Loader()
    try:
        await cache.get_or_set("k", load, ttl=TTL, early_refresh=True)
        load.block()
        await cache.get_or_set("k", load, ttl=TTL, early_refresh=True)
        await async_wait_event(load.entered)  # the lease is taken, the loader runs
        server.pause()
        try:
            load.gate.set()
            await refreshes_done(cache)  # its write timed out
            assert cache.stats().early_refresh_failures == 1
            assert cache.stats().early_refreshes == 0
            # the current value is still served from L1, no load
            assert await cache.get_or_set("k", load, ttl=TTL) == "v-1"
            assert load.calls == 2
        finally:
            server.resume()
    finally:
        await cache.close()


async def test_close_stops_refreshes_and_leaks_no_lease(
    target: tuple[str, bool], raw, clock: FakeClock
) -> None:
    draw = Draw(0.0)
    cache = make(target, clock, draw)
    await ready(cache)
    load = Loader()
    await cache.get_or_set("k", load, ttl=TTL, early_refresh=True)
    load.gate = AsyncEvent()
    load.entered = AsyncEvent()
    await cache.get_or_set("k", load, ttl=TTL, early_refresh=True)
    await async_wait_event(load.entered)
    assert await raw.exists(KeySpace(NS).lease_key("k")) == 1
    load.gate.set()  # (async: close cancels the refresh first; sync: it ends by itself)
    await cache.close()
    assert cache._refresher.running() == 0
    assert await raw.exists(KeySpace(NS).lease_key("k")) == 0


async def test_early_refresh_without_redis_and_per_decorator(clock: FakeClock) -> None:
    draw = Draw(0.0)
    cache = make(None, clock, draw, early_refresh=True)  # on by default for this cache
    calls = []

    @cache.cached(ttl=TTL, key="f:{x}")
    async def f(x: int) -> str:
        calls.append(x)
        return f"f{x}-{len(calls)}"

    @cache.cached(ttl=TTL, key="g:{x}", early_refresh=False)
    async def g(x: int) -> str:
        calls.append(-x)
        return f"g{x}-{len(calls)}"

    try:
        assert await f(1) == "f1-1"
        draw.value = 1.0  # the refreshed entry's draw: not due before its expiry
        assert await f(1) == "f1-1"  # the hit starts a refresh (the fill's draw was 0)
        await refreshes_done(cache)
        assert await f(1) == "f1-2"
        assert await f(1) == "f1-2"
        await refreshes_done(cache)
        draw.value = 0.0
        assert await g(1) == "g1-3"
        assert await g(1) == "g1-3"
        await refreshes_done(cache)
        assert calls == [1, 1, -1]
    finally:
        await cache.close()


def test_bad_early_refresh_options_are_refused(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="early_refresh"):
        make(None, clock, Draw(), early_refresh=-1.0)
    cache = make(None, clock, Draw())
    with pytest.raises(TypeError, match="early_refresh"):
        cache.cached(early_refresh="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="copy_on_read"):
        cache.cached(copy_on_read=1)  # type: ignore[arg-type]


# -- callable and adaptive TTLs --------------------------------------------------------


async def test_callable_ttl_everywhere(target: tuple[str, bool], raw, clock: FakeClock) -> None:
    cache = make(target, clock, Draw())
    await ready(cache)
    keys = KeySpace(NS)

    def by_status(user: dict[str, Any]) -> float:
        return 60 if user["active"] else 3600

    async def pttl(key: str) -> int:
        return int(await raw.pttl(keys.data_key(key)))

    try:
        await cache.set("a", {"active": True}, ttl=by_status)
        await cache.set("b", {"active": False}, ttl=by_status)
        assert 55_000 < await pttl("a") <= 60_000
        assert 3_595_000 < await pttl("b") <= 3_600_000
        await cache.set_many(
            {"c": {"active": True}, "d": {"active": False}, "e": {"active": True}}, ttl=by_status
        )
        assert 55_000 < await pttl("c") <= 60_000
        assert 3_595_000 < await pttl("d") <= 3_600_000
        assert 55_000 < await pttl("e") <= 60_000

        async def inactive() -> dict[str, Any]:
            return {"active": False}

        await cache.get_or_set("f", inactive, ttl=by_status)
        assert 3_595_000 < await pttl("f") <= 3_600_000

        @cache.cached(ttl=by_status, key="g:{x}")
        async def g(x: int) -> dict[str, Any]:
            return {"active": x > 0}

        await g(1)
        assert 55_000 < await pttl("g:1") <= 60_000
        # the callable's result is checked like a ttl
        with pytest.raises(ValueError):
            await cache.set("h", 1, ttl=lambda v: -1)
        with pytest.raises(TypeError):
            await cache.set("h", 1, ttl="long")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await cache.touch("a", by_status)  # type: ignore[arg-type]
    finally:
        await cache.close()


async def test_adaptive_ttl_lengthens_read_keys(
    target: tuple[str, bool], raw, clock: FakeClock
) -> None:
    cache = make(target, clock, Draw(), l1_max_ttl=10_000)
    await ready(cache)
    adaptive = AdaptiveTTL(10, 100, timer=clock)
    load = Loader()
    keys = KeySpace(NS)

    async def given_ttl_within(key: str, low: int, high: int, since: float) -> None:
        """The TTL Redis was given for ``key`` (written after ``since``) is in (low, high]
        ms: it lies between its PTTL now and that PTTL plus the real time that passed
        since, however slowly this machine ran the test."""
        left = int(await raw.pttl(keys.data_key(key)))
        passed = int((time.monotonic() - since) * 1000) + 1
        assert left <= high and low < left + passed, (key, left, passed)

    try:
        written = time.monotonic()
        await cache.get_or_set("hot", load, ttl=adaptive)
        await cache.get_or_set("cold", load, ttl=adaptive)
        await given_ttl_within("hot", 9_999, 10_000, written)
        for _ in range(4):  # four L1 hits counted for hot
            await cache.get_or_set("hot", load, ttl=adaptive)
        assert adaptive.reads("hot") == 4
        assert adaptive.reads("cold") == 0
        clock.advance(1000)  # both expired; read again 1000 s after their fill
        written = time.monotonic()
        await cache.get_or_set("hot", load, ttl=adaptive)
        await cache.get_or_set("cold", load, ttl=adaptive)
        # hot: gap 1000 / (4 + 1) = 200 -> sqrt(200^2 + 100^2) - 200 ~ 23.6 s
        await given_ttl_within("hot", 23_600, 23_607, written)
        # cold: gap 1000 -> ~5 s, clamped to min
        await given_ttl_within("cold", 9_999, 10_000, written)
    finally:
        await cache.close()


# -- copy on read ------------------------------------------------------------------------


@pytest.mark.parametrize("redis", ["redis", "l1only"])
async def test_copy_on_read_isolates_mutations(
    target: tuple[str, bool], clock: FakeClock, redis: str
) -> None:
    cache = make(target if redis == "redis" else None, clock, Draw())
    await ready(cache)

    async def load() -> dict[str, Any]:
        return {"n": 1, "items": [1, 2], "t": (1, 2)}

    try:
        # the default: live objects, shared (documented)
        shared = await cache.get_or_set("live", load)
        shared["n"] = 99
        assert (await cache.get_or_set("live", load))["n"] == 99
        # per call: a copy each time, also for the value the loader just returned
        first = await cache.get_or_set("k", load, copy_on_read=True)
        first["items"].append(3)
        again = await cache.get_or_set("k", load, copy_on_read=True)
        assert again == {"n": 1, "items": [1, 2], "t": (1, 2)}
        again["n"] = 5
        assert (await cache.get_many(["k"], copy_on_read=True))["k"]["n"] == 1

        @cache.cached(key="c:{x}", copy_on_read=True)
        async def c(x: int) -> dict[str, Any]:
            return {"x": [x]}

        (await c(1))["x"].append(2)
        assert await c(1) == {"x": [1]}
    finally:
        await cache.close()
    # per cache: get, get_many and get_or_set all copy
    copying = make(target if redis == "redis" else None, clock, Draw(), copy_on_read=True)
    await ready(copying)
    try:
        await copying.set("k", {"a": [1]})
        (await copying.get("k"))["a"].append(2)
        (await copying.get_many(["k"]))["k"]["a"].append(3)
        (await copying.get_or_set("k", load))["a"].append(4)
        assert await copying.get("k") == {"a": [1]}
        assert await copying.get("missing", "dflt") == "dflt"
        # a call may opt out
        live = await copying.get_or_set("k", load, copy_on_read=False)
        assert live is await copying.get_or_set("k", load, copy_on_read=False)
    finally:
        await copying.close()
