"""StrataCache (the Django backend) beyond Django's own suite: the native async methods,
pickle signing, tags, model signals, atomic incr, other processes, and a cluster.

Real Redis throughout: the session's Django Redis (``django_suite``) and, for one smoke
test, the shared 3-master cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from stratacache import AsyncCache, Cache, Codec
from stratacache.contrib.django import (
    FOREVER,
    StrataCache,
    ashutdown,
    invalidate_on_change,
    model_tag,
    shutdown,
)

from django_suite import DJANGO_REDIS_URL
from strata_djapp.models import Article

PEER = Path(__file__).with_name("django_peer.py")


class Pickled:
    """Unpickling this would run code: a forged entry must never get that far."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, ("raise SystemExit('pickle executed')",))


def backend(namespace: str, serializer: str = "pickle", **options: Any) -> StrataCache:
    opts = {"serializer": serializer, "namespace": namespace, "redis_timeout": 2.0, **options}
    return StrataCache(DJANGO_REDIS_URL, {"OPTIONS": opts})


@pytest.fixture
def default() -> Iterator[StrataCache]:
    cache = caches["default"]
    assert isinstance(cache, StrataCache)
    cache.clear()
    yield cache
    cache.clear()


@pytest.fixture
async def adefault() -> AsyncIterator[StrataCache]:
    cache = caches["default"]
    assert isinstance(cache, StrataCache)
    await cache.aclear()
    yield cache
    await cache.aclear()
    await ashutdown()  # this test's event loop ends: close its AsyncCache


def until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# -- async: native, over AsyncCache ---------------------------------------------------------


async def test_async_methods_run_on_async_cache(adefault: StrataCache) -> None:
    c = adefault
    native = c.astratacache()
    assert isinstance(native, AsyncCache)
    await c.aset("a", {"x": 1})
    key = c.make_key("a")
    assert key in native.l1  # written by the AsyncCache itself, not a thread's sync Cache
    assert await c.aget("a") == {"x": 1}
    assert await c.aget("missing", "dflt") == "dflt"
    assert await c.aadd("a", 2) is False
    assert await c.aadd("b", 2) is True
    assert await c.ahas_key("b") is True
    assert await c.aget_many(["a", "b", "nope"]) == {"a": {"x": 1}, "b": 2}
    assert await c.aincr("b", 5) == 7
    assert await c.adecr("b") == 6
    with pytest.raises(ValueError):
        await c.aincr("nope")
    assert await c.aset_many({"c": 3, "d": 4}) == []
    await c.adelete_many(["c", "d"])
    assert await c.aget_many(["c", "d"]) == {}
    assert await c.atouch("a", 100) is True
    assert await c.atouch("nope", 100) is False
    assert await c.adelete("a") is True
    assert await c.adelete("a") is False
    assert await c.aget_or_set("g", lambda: "made") == "made"
    assert await c.aget_or_set("g", "other") == "made"
    assert await c.aincr_version("g") == 2
    assert await c.aget("g", version=2) == "made"
    await c.aclear()
    assert await c.aget("g", version=2) is None


async def test_async_timeouts(adefault: StrataCache) -> None:
    c = adefault
    await c.aset("zero", 1, 0)
    assert await c.ahas_key("zero") is False
    assert await c.aadd("zero", 1, 0) is True  # absent: "added", but not stored
    assert await c.ahas_key("zero") is False
    await c.aset("forever", 1, None)
    remaining = c.stratacache.redis.pttl(c.stratacache._keys.data_key(c.make_key("forever")))
    assert remaining > (FOREVER - 3600) * 1000
    assert await c.atouch("forever", 0) is True
    assert await c.ahas_key("forever") is False


async def test_sync_and_async_writes_are_read_back_at_once(adefault: StrataCache) -> None:
    c = adefault
    await c.aset("k", "old")
    assert await c.aget("k") == "old"  # now in the AsyncCache's L1
    c.set("k", "new")  # the sync Cache: the AsyncCache's L1 copy is dropped at once
    assert await c.aget("k") == "new"
    assert c.get("k") == "new"
    await c.aset("k", "newer")
    assert c.get("k") == "newer"
    await c.adelete("k")
    assert c.get("k") is None


# -- pickle: always signed ------------------------------------------------------------------


def test_pickle_values_are_signed_and_forgeries_are_misses(default: StrataCache) -> None:
    import pickle

    default.set("obj", {"a": (1, 2)})
    assert default.get("obj") == {"a": (1, 2)}
    key = default.make_key("forged")
    # a writer without the key: an unsigned envelope holding a pickle that runs code
    forger = Cache(DJANGO_REDIS_URL, namespace="django", bus=False, redis_timeout=2.0)
    try:
        forger.set(key, pickle.dumps(Pickled()), ttl=60)
        assert forger.redis.exists(forger._keys.data_key(key))
    finally:
        forger.close()
    before = default.stratacache.stats().decode_errors
    assert default.get("forged", "miss") == "miss"  # never unpickled
    assert default.stratacache.stats().decode_errors > before


def test_pickle_key_comes_from_secret_key_with_fallbacks() -> None:
    with override_settings(SECRET_KEY="old-secret-key-0123456789"):
        old = backend("rotation")
        old.set("k", "v")
    with override_settings(SECRET_KEY="new-secret-key-0123456789"):
        strange = backend("rotation")
        assert strange.get("k", "miss") == "miss"  # another key: a miss
    with override_settings(
        SECRET_KEY="new-secret-key-0123456789", SECRET_KEY_FALLBACKS=["old-secret-key-0123456789"]
    ):
        rotated = backend("rotation")
        assert rotated.get("k") == "v"  # the old key still verifies
    with override_settings(SECRET_KEY=""), pytest.raises(ImproperlyConfigured):
        backend("nokey")


def test_msgpack_mode_keeps_live_objects_and_refuses_the_unsupported() -> None:
    from stratacache import SerializationError

    c = backend("msgpack-mode", serializer="msgpack")
    c.clear()
    c.set("n", [1, 2])
    assert c.get("n") == [1, 2]
    with pytest.raises(SerializationError):
        c.set("f", lambda: 1)
    assert c.stratacache._codec.secrets == ()  # unsigned unless a secret is given
    signed = backend("msgpack-signed", serializer="msgpack", secret="s" * 32)
    assert signed.stratacache._codec.secrets != ()


def test_bad_options_are_refused() -> None:
    with pytest.raises(ImproperlyConfigured):
        backend("bad", serializer="json")
    with pytest.raises(ImproperlyConfigured):
        StrataCache("", {})


def test_long_keys_are_hashed(default: StrataCache) -> None:
    key = "k" * 2000
    with pytest.warns(Warning):  # Django's memcached portability warning
        default.set(key, 1)
    with pytest.warns(Warning):
        assert default.get(key) == 1


# -- tags and models ------------------------------------------------------------------------


def test_tags_through_caches(default: StrataCache) -> None:
    default.set("page:1", "one", tags=["pages"])
    default.set_many({"page:2": "two", "page:3": "three"}, tags=["pages"])
    assert default.add("page:4", "four", tags=["pages:4"]) is True
    default.set("other", "kept")
    assert caches["default"].invalidate_tag("pages") >= 4
    assert default.get_many(["page:1", "page:2", "page:3", "page:4", "other"]) == {
        "other": "kept"
    }


async def test_async_tags(adefault: StrataCache) -> None:
    await adefault.aset("t", 1, tags=["group"])
    await adefault.aset_many({"u": 2}, tags=["group"])
    assert await adefault.aadd("v", 3, tags=["group"]) is True
    await adefault.ainvalidate_tag("group")
    assert await adefault.aget_many(["t", "u", "v"]) == {}


def test_model_saves_and_deletes_invalidate_its_tag(default: StrataCache) -> None:
    disconnect = invalidate_on_change(Article)
    try:
        assert model_tag(Article) == "strata_djapp.article"
        default.set("articles", ["none yet"], tags=[model_tag(Article)])
        article = Article.objects.create(title="first")
        assert default.get("articles") is None  # the save invalidated the model's tag
        default.set("articles", ["first"], tags=[model_tag(Article)])
        default.set("article", "first", tags=[model_tag(article)])
        assert model_tag(article) == f"strata_djapp.article:{article.pk}"
        article.title = "changed"
        article.save()
        assert default.get("articles") is None
        assert default.get("article") is None  # below the model's tag
        default.set("articles", ["changed"], tags=[model_tag(Article)])
        article.delete()
        assert default.get("articles") is None
    finally:
        disconnect()
        Article.objects.all().delete()
    default.set("articles", ["after"], tags=[model_tag(Article)])
    Article.objects.create(title="not watched")
    assert default.get("articles") == ["after"]  # disconnected
    Article.objects.all().delete()


def test_invalidation_waits_for_the_commit(default: StrataCache) -> None:
    from django.db import transaction

    disconnect = invalidate_on_change(Article)
    try:
        default.set("articles", ["old"], tags=[model_tag(Article)])
        with transaction.atomic():
            Article.objects.create(title="in a transaction")
            assert default.get("articles") == ["old"]  # not committed yet
        assert default.get("articles") is None
    finally:
        disconnect()
        Article.objects.all().delete()


# -- atomicity and other processes ----------------------------------------------------------


def test_incr_is_atomic_across_threads(default: StrataCache) -> None:
    default.set("hits", 0)
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            cache = caches["default"]  # each thread its own backend object, one stratacache
            for _ in range(25):
                cache.incr("hits")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert default.get("hits") == 100
    a = backend("other-config", l1_maxsize=10)
    b = backend("other-config", l1_maxsize=10)
    assert a.stratacache is b.stratacache  # one per configuration and process


class Peer:
    """Another Django process on the same Redis (tests/contrib/django_peer.py)."""

    def __init__(self, namespace: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER), DJANGO_REDIS_URL, namespace],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.read() == "ready"

    def read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the peer process exited"
        return json.loads(line)

    def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.mark.slow
def test_a_delete_in_one_process_is_seen_by_another() -> None:
    here = backend("two-processes", serializer="msgpack", l1_max_ttl=600)
    here.clear()
    peer = Peer("two-processes")
    try:
        here.set("k", "v1")
        assert peer.ask("get k") == "v1"
        assert peer.ask("inl1 k") is True  # the peer serves it from its L1 from now on
        here.delete("k")
        until(lambda: peer.ask("get k") is None)  # the bus dropped the peer's L1 copy
        peer.ask('set k "v2"')
        until(lambda: here.get("k") == "v2")
        assert peer.ask("delete k") is True
        until(lambda: here.get("k") is None)
    finally:
        peer.close()


@pytest.mark.cluster
def test_cluster_smoke(redis_cluster_url: str) -> None:
    c = StrataCache(
        redis_cluster_url,
        {"OPTIONS": {"cluster": True, "namespace": "dj-cluster", "redis_timeout": 2.0}},
    )
    try:
        c.set("a", 1, tags=["t"])
        c.set_many({"b": 2, "c": 3})
        assert c.get_many(["a", "b", "c"]) == {"a": 1, "b": 2, "c": 3}
        assert c.add("a", 9) is False
        assert c.incr("b", 10) == 12
        assert c.invalidate_tag("t") >= 1
        assert c.get("a") is None
        c.clear()
        assert c.get("b") is None
    finally:
        shutdown()


def test_codec_is_shared_signing_for_the_bus(default: StrataCache) -> None:
    codec = default.stratacache._codec
    assert isinstance(codec, Codec)
    assert codec.secrets  # pickle mode: signed (the bus too, by default)
