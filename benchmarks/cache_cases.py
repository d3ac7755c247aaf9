"""Benchmark cases for the tiered cache, each beside its baseline and its peers.

A case is a zero-argument callable that performs ``n`` operations; both the
pytest-benchmark suite (``bench_cache.py``) and the one-table report
(``cache_report.py``) time the same callables, so their figures agree.
Redis cases need a server: the caller passes its URL (benchmarks start their own,
pinned to the benchmark's CPU by ``taskset`` in ``make bench``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import cachebox
import cachetools
import msgpack
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
import theine
from dogpile.cache import make_region

from stratacache import AsyncCache, Cache

Case = Callable[[], None]

# Clients and caches the cases opened; close_resources() closes them (sync and async).
_sync_resources: list[Any] = []
_async_resources: list[Any] = []


def close_resources(loop: asyncio.AbstractEventLoop) -> None:
    """Close every client and cache the cases opened."""
    while _sync_resources:
        _sync_resources.pop().close()
    while _async_resources:
        loop.run_until_complete(_async_resources.pop().aclose())


VALUE = {"id": 42, "name": "Ada Lovelace", "email": "ada@example.com", "roles": ["admin"]}
KEY = "user:42"


class _AsyncClosing:
    """Adapts ``AsyncCache.close`` to the ``aclose`` name redis.asyncio clients use."""

    def __init__(self, cache: AsyncCache) -> None:
        self.cache = cache

    async def aclose(self) -> None:
        await self.cache.close()


def _loop_sync(get: Callable[..., Any], key: Any, n: int) -> Case:
    def run() -> None:
        for _ in range(n):
            get(key)

    return run


def _loop_async(loop: asyncio.AbstractEventLoop, get: Callable[..., Any], key: Any, n: int) -> Case:
    async def many() -> None:
        for _ in range(n):
            await get(key)

    return lambda: loop.run_until_complete(many())


def l1_hit_cases(n: int, loop: asyncio.AbstractEventLoop) -> dict[str, Case]:
    """``get`` of a present key: stratacache's L1 path vs dict.get and peer caches."""
    cases: dict[str, Case] = {}
    d = {KEY: VALUE}
    cases["dict.get (baseline)"] = _loop_sync(d.get, KEY, n)

    cache = Cache(None)
    cache.set(KEY, VALUE)
    cases["stratacache Cache.get"] = _loop_sync(cache.get, KEY, n)

    box = cachebox.TTLCache(10_000, 300)
    box[KEY] = VALUE
    cases["cachebox TTLCache.get"] = _loop_sync(box.get, KEY, n)

    th = theine.Cache(10_000)
    th.set(KEY, VALUE)
    cases["theine Cache.get"] = _loop_sync(th.get, KEY, n)

    region = make_region().configure("dogpile.cache.memory")
    region.set(KEY, VALUE)
    cases["dogpile.cache region.get"] = _loop_sync(region.get, KEY, n)

    async def trivial(key: str) -> Any:
        return d.get(key)

    cases["await trivial coroutine (async baseline)"] = _loop_async(loop, trivial, KEY, n)

    acache = AsyncCache(None)
    loop.run_until_complete(acache.set(KEY, VALUE))
    cases["stratacache await AsyncCache.get"] = _loop_async(loop, acache.get, KEY, n)

    import aiocache
    import cashews

    cashews_cache = cashews.Cache()
    cashews_cache.setup("mem://")
    loop.run_until_complete(cashews_cache.set(KEY, VALUE))
    cases["cashews await get"] = _loop_async(loop, cashews_cache.get, KEY, n)

    aio = aiocache.SimpleMemoryCache()
    loop.run_until_complete(aio.set(KEY, VALUE))
    cases["aiocache await get"] = _loop_async(loop, aio.get, KEY, n)
    return cases


def decorated_hit_cases(n: int) -> dict[str, Case]:
    """A decorated function called with cached arguments."""
    cache = Cache(None)

    def fn(user_id: int) -> dict[str, Any]:
        return VALUE

    cases: dict[str, Case] = {}
    lru = functools.lru_cache(maxsize=10_000)(fn)
    strata = cache.cached(ttl=300)(fn)
    strata_tpl = cache.cached(ttl=300, key="user:{user_id}")(fn)
    ct = cachetools.cached(cachetools.TTLCache(10_000, ttl=300))(fn)
    cb = cachebox.cached(cachebox.TTLCache(10_000, 300))(fn)
    th = theine.Memoize(10_000, timedelta(seconds=300))(fn)
    for name, f in [
        ("functools.lru_cache (baseline)", lru),
        ("stratacache @cached (default key)", strata),
        ("stratacache @cached (template key)", strata_tpl),
        ("cachetools @cached(TTLCache)", ct),
        ("cachebox @cached(TTLCache)", cb),
        ("theine @Memoize", th),
    ]:
        f(42)
        cases[name] = _loop_sync(f, 42, n)
    return cases


def l2_hit_cases(url: str, n: int, loop: asyncio.AbstractEventLoop) -> dict[str, Case]:
    """An L1 miss served by Redis, vs raw redis-py GET + msgpack.unpackb (sync and async).

    Two keys alternate in an L1 of one entry, so every stratacache read is an L2 hit plus
    its L1 fill — the whole cost a caller pays.
    """
    cases = _l2_hit_pair(
        redis.Redis.from_url(url),
        Cache(url, namespace="bench", l1_maxsize=1),
        n,
        "redis-py GET + msgpack.unpackb (baseline)",
        "stratacache Cache.get (L2 hit)",
    )
    cases.update(
        _async_l2_hit_pair(
            redis.asyncio.Redis.from_url(url),
            AsyncCache(url, namespace="bench", l1_maxsize=1),
            n,
            loop,
            "redis.asyncio GET + msgpack.unpackb (async baseline)",
            "stratacache await AsyncCache.get (L2 hit)",
        )
    )
    return cases


def l2_hit_cluster_cases(url: str, n: int, loop: asyncio.AbstractEventLoop) -> dict[str, Case]:
    """The L2 hit of :func:`l2_hit_cases` on a Redis Cluster (``url``: one of its nodes):
    ``Cache(url, cluster=True).get`` vs ``RedisCluster.get`` + msgpack.unpackb, sync and
    async (``redis.asyncio.cluster.RedisCluster``)."""
    cases = _l2_hit_pair(
        redis.cluster.RedisCluster.from_url(url),
        Cache(url, namespace="bench", l1_maxsize=1, cluster=True),
        n,
        "redis-py cluster GET + msgpack.unpackb (baseline)",
        "stratacache Cache(cluster=True).get (L2 hit)",
    )
    cases.update(
        _async_l2_hit_pair(
            redis.asyncio.cluster.RedisCluster.from_url(url),
            AsyncCache(url, namespace="bench", l1_maxsize=1, cluster=True),
            n,
            loop,
            "redis.asyncio cluster GET + unpackb (async baseline)",
            "stratacache await AsyncCache(cluster=True).get (L2 hit)",
        )
    )
    return cases


_L2_KEYS = ["a", "b"]


def _l2_hit_pair(raw: Any, cache: Cache, n: int, raw_name: str, name: str) -> dict[str, Case]:
    """The sync baseline and cache cases of an L2 hit, on ``raw`` and ``cache``."""
    _sync_resources.extend([raw, cache])
    for k in _L2_KEYS:
        raw.set(f"raw:{k}", msgpack.packb(VALUE))
        cache.set(k, VALUE)
    keys = _L2_KEYS

    def raw_get() -> None:
        for i in range(n):
            msgpack.unpackb(raw.get(f"raw:{keys[i & 1]}"))

    def strata_get() -> None:
        for i in range(n):
            cache.get(keys[i & 1])

    return {raw_name: raw_get, name: strata_get}


def _async_l2_hit_pair(
    raw: Any, cache: AsyncCache, n: int, loop: asyncio.AbstractEventLoop, raw_name: str, name: str
) -> dict[str, Case]:
    """The async twin of :func:`_l2_hit_pair`."""
    _async_resources.extend([raw, _AsyncClosing(cache)])
    keys = _L2_KEYS

    async def fill() -> None:
        for k in keys:
            await raw.set(f"raw:{k}", msgpack.packb(VALUE))

    loop.run_until_complete(fill())

    async def araw_many() -> None:
        for i in range(n):
            msgpack.unpackb(await raw.get(f"raw:{keys[i & 1]}"))

    async def astrata_many() -> None:
        for i in range(n):
            await cache.get(keys[i & 1])

    return {
        raw_name: lambda: loop.run_until_complete(araw_many()),
        name: lambda: loop.run_until_complete(astrata_many()),
    }


def get_many_cases(
    url: str, n: int, loop: asyncio.AbstractEventLoop | None = None
) -> dict[str, Case]:
    """100 keys in one call: ``get_many`` vs raw MGET + decode of each value; with
    ``loop``, the async pair too (``AsyncCache.get_many`` vs ``redis.asyncio`` MGET)."""
    keys = [f"m{i}" for i in range(100)]
    raw = redis.Redis.from_url(url)
    raw.mset({f"raw:{k}": msgpack.packb(VALUE) for k in keys})
    cache = Cache(url, namespace="bench", l1_maxsize=100)
    _sync_resources.extend([raw, cache])
    cache.set_many({k: VALUE for k in keys})
    raw_keys = [f"raw:{k}" for k in keys]

    def raw_mget() -> None:
        for _ in range(n):
            [msgpack.unpackb(b) for b in raw.mget(raw_keys)]

    def strata_get_many() -> None:
        for _ in range(n):
            cache.l1.clear()  # every key an L1 miss: one MGET for all 100
            cache.get_many(keys)

    cases = {
        "redis-py MGET(100) + msgpack.unpackb (baseline)": raw_mget,
        "stratacache get_many(100) (L2)": strata_get_many,
    }
    if loop is None:
        return cases
    araw = redis.asyncio.Redis.from_url(url)
    acache = AsyncCache(url, namespace="bench", l1_maxsize=100)
    _async_resources.extend([araw, _AsyncClosing(acache)])

    async def araw_mget() -> None:
        for _ in range(n):
            [msgpack.unpackb(b) for b in await araw.mget(raw_keys)]

    async def astrata_get_many() -> None:
        for _ in range(n):
            acache.l1.clear()
            await acache.get_many(keys)

    cases["redis.asyncio MGET(100) + msgpack.unpackb (async baseline)"] = lambda: (
        loop.run_until_complete(araw_mget())
    )
    cases["stratacache await AsyncCache.get_many(100) (L2)"] = lambda: loop.run_until_complete(
        astrata_get_many()
    )
    return cases


def miss_cases(url: str, n: int) -> dict[str, Case]:
    """A miss filled by its loader: ``get_or_set`` (read + lease, then the guarded write)
    vs raw GET + SET of the same bytes, untagged and tagged. Each operation uses a new key."""
    raw = redis.Redis.from_url(url)
    cache = Cache(url, namespace="bench-miss", l1_maxsize=10)
    _sync_resources.extend([raw, cache])
    blob = msgpack.packb(VALUE)
    counter = iter(range(10**9))

    def raw_get_set() -> None:
        for _ in range(n):
            key = f"raw-miss:{next(counter)}"
            raw.get(key)
            raw.set(key, blob, px=60_000)

    def strata(tags: tuple[str, ...]) -> Case:
        def run() -> None:
            for _ in range(n):
                cache.get_or_set(f"miss:{next(counter)}", lambda: VALUE, ttl=60, tags=tags)

        return run

    return {
        "redis-py GET + SET (baseline)": raw_get_set,
        "stratacache get_or_set miss (untagged)": strata(()),
        "stratacache get_or_set miss (tagged)": strata(("t1",)),
    }
