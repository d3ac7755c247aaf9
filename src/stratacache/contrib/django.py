"""A Django cache backend over stratacache: in-process L1 + Redis + invalidation bus.

    CACHES = {
        "default": {
            "BACKEND": "stratacache.contrib.django.StrataCache",
            "LOCATION": "redis://127.0.0.1:6379/0",
            "OPTIONS": {"serializer": "pickle"},  # or "msgpack" (the default)
        }
    }

Every ``django.core.cache`` method works (add, get, set, touch, delete, get_many,
set_many, delete_many, has_key, incr/decr, clear, versions, ``KEY_PREFIX``,
``KEY_FUNCTION``, key warnings, timeouts), with the async ``a*`` methods running natively
on :class:`~stratacache.AsyncCache`; tags (:meth:`StrataCache.invalidate_tag`) and
:func:`invalidate_on_change` (a model's saves and deletes invalidate its tag) go beyond it.
The full guide is ``docs/django.md``.

Design notes
------------
* **One stratacache per process and configuration.** Django makes a backend object per
  thread (and again after ``override_settings``); each would otherwise hold its own L1,
  Redis pool and bus subscriber. Backends with the same ``LOCATION`` and ``OPTIONS``
  share one :class:`~stratacache.Cache` (``_Shared``) and one :class:`AsyncCache` per
  event loop (a redis.asyncio client belongs to its loop). A write through one of them
  drops the key from the L1 of the others at once (the bus would, a moment later), so a
  process reads its own writes whichever API wrote them.
* **Values.** ``msgpack`` (default) stores what stratacache's codec supports and keeps
  live objects in L1 (a mutated returned object is the cached one). ``pickle`` stores any
  picklable object, as Django's own backends do: ints stay ints (so ``incr`` works),
  everything else is pickled bytes, unpickled at every read (a copy each time). The
  codec is then *always* signed (HMAC-SHA256, key derived from ``SECRET_KEY`` and
  ``SECRET_KEY_FALLBACKS``, or ``OPTIONS["secret"]``): the envelope is checked before it
  is unpacked, so bytes that anyone without the key wrote to Redis are a miss and are
  never unpickled.
* **Timeouts.** Django's: ``None`` is forever (stored for ``FOREVER`` seconds, a
  century), ``0`` or less stores nothing and deletes the key, the default is the
  alias's ``TIMEOUT``.
* **Keys.** Django's ``make_key`` (prefix, version, ``KEY_FUNCTION``) and its memcached
  portability warnings; a made key longer than stratacache's limit (1024 characters) is
  replaced by its SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Optional

from django.core.cache import caches
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured

from .. import MISSING, AsyncCache, Cache, Codec
from .._keys import MAX_KEY_LENGTH

__all__ = [
    "FOREVER",
    "StrataCache",
    "ashutdown",
    "invalidate_on_change",
    "model_tag",
    "shutdown",
]

FOREVER = 100 * 365 * 86400.0
"""The TTL (seconds) of an entry stored with ``timeout=None``: a century."""

_SERIALIZERS = ("msgpack", "pickle")
# OPTIONS read by the backend itself; every other one is a keyword of Cache/AsyncCache
_OWN_OPTIONS = frozenset({"serializer", "secret", "pickle_protocol", "namespace"})


class _PlainValues:
    """msgpack mode: values go to the codec as they are."""

    @staticmethod
    def dumps(value: Any) -> Any:
        return value

    @staticmethod
    def loads(value: Any) -> Any:
        return value


class _PickleValues:
    """pickle mode: an exact ``int`` stays an int (atomic ``incr``), anything else is
    pickled bytes; the signed codec guarantees that only trusted bytes reach ``loads``."""

    def __init__(self, protocol: int) -> None:
        self._protocol = protocol

    def dumps(self, value: Any) -> Any:
        if type(value) is int:
            return value
        return pickle.dumps(value, self._protocol)

    @staticmethod
    def loads(value: Any) -> Any:
        if type(value) is bytes:
            # the envelope's HMAC was verified before unpacking: these bytes are our own
            return pickle.loads(value)
        return value


def _secrets(option: Any) -> tuple[bytes, ...]:
    """The signing keys: ``OPTIONS["secret"]`` (one or a list; the first signs), else
    derived from ``SECRET_KEY`` then each of ``SECRET_KEY_FALLBACKS`` (key rotation)."""
    if option is not None:
        given = [option] if isinstance(option, (str, bytes)) else list(option)
        return tuple(s.encode() if isinstance(s, str) else bytes(s) for s in given)
    from django.conf import settings

    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ())]
    keys = [k for k in keys if k]
    if not keys:
        raise ImproperlyConfigured(
            "stratacache's pickle serializer signs every value: set SECRET_KEY or "
            "OPTIONS['secret']"
        )
    return tuple(
        hashlib.sha256(b"stratacache.contrib.django.StrataCache\x00" + _b(k)).digest()
        for k in keys
    )


def _b(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


class _Shared:
    """The stratacache objects of one configuration in this process (see the notes)."""

    _registry: dict[str, _Shared] = {}
    _registry_lock = threading.Lock()

    def __init__(self, location: str, kwargs: dict[str, Any], codec: Codec) -> None:
        self._location = location
        self._kwargs = kwargs
        self._codec = codec
        self._lock = threading.Lock()
        self._sync: Cache | None = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncCache] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def get(cls, location: str, kwargs: dict[str, Any], codec: Codec, ident: str) -> _Shared:
        with cls._registry_lock:
            shared = cls._registry.get(ident)
            if shared is None:
                shared = cls._registry[ident] = cls(location, kwargs, codec)
            return shared

    def sync(self) -> Cache:
        cache = self._sync
        if cache is None:
            with self._lock:
                if self._sync is None:
                    self._sync = Cache(self._location, codec=self._codec, **self._kwargs)
                cache = self._sync
        return cache

    def for_loop(self) -> AsyncCache:
        loop = asyncio.get_running_loop()
        cache = self._async.get(loop)
        if cache is None:
            with self._lock:
                cache = self._async.get(loop)
                if cache is None:
                    cache = AsyncCache(self._location, codec=self._codec, **self._kwargs)
                    self._async[loop] = cache
        return cache

    def siblings(self, of: Any) -> list[Any]:
        """The other caches of this configuration in the process (their L1s)."""
        with self._lock:  # for_loop may add one from another thread meanwhile
            others: list[Any] = list(self._async.values())
        if self._sync is not None:
            others.append(self._sync)
        return [c for c in others if c is not of]

    def drop_keys(self, of: Any, keys: Iterable[str]) -> None:
        keys = list(keys)
        for other in self.siblings(of):
            for key in keys:
                other.l1.invalidate(key)

    def drop_tags(self, of: Any, tags: Sequence[str]) -> None:
        for other in self.siblings(of):
            other.l1.invalidate_tags(tags)

    def drop_all(self, of: Any) -> None:
        for other in self.siblings(of):
            other.l1.clear()

    def close(self) -> None:
        with self._lock:
            cache, self._sync = self._sync, None
        if cache is not None:
            cache.close()

    async def aclose_loop(self) -> None:
        cache = self._async.pop(asyncio.get_running_loop(), None)
        if cache is not None:
            await cache.close()


def shutdown() -> None:
    """Close every sync stratacache the backends of this process opened (bus threads,
    Redis connections), e.g. at process exit or between tests; they reopen on next use.
    Async caches belong to their event loop: close them with :func:`ashutdown` in it."""
    for shared in list(_Shared._registry.values()):
        shared.close()


async def ashutdown() -> None:
    """Close the async stratacaches the backends opened on the running event loop."""
    for shared in list(_Shared._registry.values()):
        await shared.aclose_loop()


class StrataCache(BaseCache):  # type: ignore[misc]
    """``django.core.cache`` backend: stratacache's L1 + Redis + bus behind Django's API.

    ``LOCATION``: the Redis URL (``redis://``, ``rediss://``, ``unix://``).
    ``OPTIONS``:

    * ``serializer``: ``"msgpack"`` (default; stratacache's safe codec, live objects in
      L1) or ``"pickle"`` (any picklable object, like Django's own backends; always
      signed: see ``secret``).
    * ``secret``: signing key(s) of the codec and the bus (bytes or str, or a list: the
      first signs, all verify). Default with ``pickle``: derived from ``SECRET_KEY`` (and
      ``SECRET_KEY_FALLBACKS``); with ``msgpack``: unsigned unless given.
    * ``pickle_protocol``: default ``pickle.HIGHEST_PROTOCOL``.
    * ``namespace``: stratacache namespace (Redis key prefix and bus channel), default
      ``"django"``; ``clear()`` empties exactly this namespace.
    * anything else is passed to :class:`~stratacache.Cache` / ``AsyncCache``
      (``l1_maxsize``, ``l1_max_ttl``, ``redis_timeout``, ``cluster``, ``jitter``...).

    Beyond Django's API: ``tags=`` on ``set``/``add``/``set_many`` (and their async
    twins), :meth:`invalidate_tag` / :meth:`ainvalidate_tag`, and :attr:`stratacache`
    (the underlying :class:`~stratacache.Cache`) for everything else.
    """

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        if not isinstance(server, str) or not server:
            raise ImproperlyConfigured("StrataCache needs LOCATION: one Redis URL")
        options = dict(params.get("OPTIONS", {}))
        options.pop("MAX_ENTRIES", None)  # Django's culling options: L1 is an LRU already
        options.pop("CULL_FREQUENCY", None)
        serializer = options.get("serializer", "msgpack")
        if serializer not in _SERIALIZERS:
            raise ImproperlyConfigured(
                f"OPTIONS['serializer'] must be one of {_SERIALIZERS}, got {serializer!r}"
            )
        secret = options.get("secret")
        secrets: tuple[bytes, ...] = ()
        if serializer == "pickle":
            secrets = _secrets(secret)
            self._values: _PlainValues | _PickleValues = _PickleValues(
                int(options.get("pickle_protocol", pickle.HIGHEST_PROTOCOL))
            )
        else:
            if secret is not None:
                secrets = _secrets(secret)
            self._values = _PlainValues()
        kwargs = {k: v for k, v in options.items() if k not in _OWN_OPTIONS}
        kwargs["namespace"] = options.get("namespace", "django")
        codec = Codec(secret=secrets) if secrets else Codec()
        ident = repr((server, sorted(kwargs.items(), key=lambda kv: kv[0]), serializer, secrets))
        self._shared = _Shared.get(server, kwargs, codec, ident)

    # -- helpers -----------------------------------------------------------------------

    @property
    def stratacache(self) -> Cache:
        """The process's :class:`~stratacache.Cache` behind this backend (sync API)."""
        return self._shared.sync()

    def astratacache(self) -> AsyncCache:
        """The :class:`~stratacache.AsyncCache` behind this backend on the running loop."""
        return self._shared.for_loop()

    def _key(self, key: Any, version: Optional[int]) -> str:
        made: str = self.make_and_validate_key(key, version=version)
        if len(made) > MAX_KEY_LENGTH:
            made = "sha256:" + hashlib.sha256(made.encode("utf-8", "surrogatepass")).hexdigest()
        return made

    def _ttl(self, timeout: Any) -> float:
        """Django's timeout as stratacache's TTL; ``0.0``: do not store (delete)."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return FOREVER
        return max(0.0, float(timeout))

    def _load(self, value: Any, default: Any) -> Any:
        return default if value is MISSING else self._values.loads(value)

    # -- the sync API --------------------------------------------------------------------

    def add(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: Optional[int] = None,
        *,
        tags: Iterable[str] = (),
    ) -> bool:
        """Store ``value`` only if ``key`` is not cached (atomic); True if stored."""
        k = self._key(key, version)
        stored = self._values.dumps(value)
        ttl = self._ttl(timeout)
        cache = self.stratacache
        if not ttl:
            return cache.get(k, MISSING) is MISSING
        added = cache.add(k, stored, ttl, tags)
        if added:
            self._shared.drop_keys(cache, (k,))
        return added

    def get(self, key: Any, default: Any = None, version: Optional[int] = None) -> Any:
        """The cached value of ``key``, or ``default``."""
        return self._load(self.stratacache.get(self._key(key, version), MISSING), default)

    def set(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: Optional[int] = None,
        *,
        tags: Iterable[str] = (),
    ) -> None:
        """Store ``value`` (``timeout`` 0: delete ``key`` instead; ``None``: forever)."""
        k = self._key(key, version)
        stored = self._values.dumps(value)
        ttl = self._ttl(timeout)
        cache = self.stratacache
        if ttl:
            cache.set(k, stored, ttl, tags)
        else:
            cache.delete(k)
        self._shared.drop_keys(cache, (k,))

    def touch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Optional[int] = None
    ) -> bool:
        """Give ``key`` a new timeout from now; False if it is not cached."""
        k = self._key(key, version)
        ttl = self._ttl(timeout)
        cache = self.stratacache
        touched = cache.touch(k, ttl) if ttl else cache.delete(k)
        self._shared.drop_keys(cache, (k,))
        return touched

    def delete(self, key: Any, version: Optional[int] = None) -> bool:
        """Remove ``key`` here, in Redis and (through the bus) in every process."""
        k = self._key(key, version)
        cache = self.stratacache
        existed = cache.delete(k)
        self._shared.drop_keys(cache, (k,))
        return existed

    def get_many(self, keys: Iterable[Any], version: Optional[int] = None) -> dict[Any, Any]:
        """The cached ones of ``keys`` (one Redis round trip for the L1 misses)."""
        key_map = {self._key(key, version): key for key in keys}
        found = self.stratacache.get_many(key_map)
        return {key_map[k]: self._values.loads(v) for k, v in found.items()}

    def has_key(self, key: Any, version: Optional[int] = None) -> bool:
        """Whether ``key`` is cached."""
        return self.stratacache.get(self._key(key, version), MISSING) is not MISSING

    def incr(self, key: Any, delta: int = 1, version: Optional[int] = None) -> int:
        """Add ``delta`` to the cached int (atomic in Redis); ``ValueError`` if absent."""
        k = self._key(key, version)
        cache = self.stratacache
        try:
            value = cache.incr(k, delta)
        except KeyError:
            raise ValueError(f"Key '{key}' not found") from None
        self._shared.drop_keys(cache, (k,))
        return value

    def set_many(
        self,
        data: dict[Any, Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: Optional[int] = None,
        *,
        tags: Iterable[str] = (),
    ) -> list[Any]:
        """Store every item (one pipeline); returns the keys that failed: none (a value
        that cannot be stored raises before anything is written)."""
        if not data:
            return []
        mapping = {self._key(key, version): self._values.dumps(v) for key, v in data.items()}
        ttl = self._ttl(timeout)
        cache = self.stratacache
        if ttl:
            cache.set_many(mapping, ttl, tags)
        else:
            for k in mapping:
                cache.delete(k)
        self._shared.drop_keys(cache, mapping)
        return []

    def delete_many(self, keys: Iterable[Any], version: Optional[int] = None) -> None:
        """Delete each of ``keys``."""
        made = [self._key(key, version) for key in keys]
        cache = self.stratacache
        for k in made:
            cache.delete(k)
        self._shared.drop_keys(cache, made)

    def clear(self) -> None:
        """Make every entry of this namespace a miss in every process (O(1): the
        namespace epoch is raised); other namespaces in the same Redis are untouched."""
        cache = self.stratacache
        cache.invalidate_all(reason="django cache.clear()")
        self._shared.drop_all(cache)

    def close(self, **kwargs: Any) -> None:
        """Called by Django at the end of every request: nothing to do (the shared
        stratacache keeps its connections; see :func:`shutdown`)."""

    def invalidate_tag(self, tag: str) -> int:
        """Invalidate every entry tagged ``tag`` (or a tag below it), in every process."""
        return self.invalidate_tags(tag)

    def invalidate_tags(self, *tags: str) -> int:
        """:meth:`invalidate_tag` for several tags at once."""
        cache = self.stratacache
        count = cache.invalidate_tags(*tags)
        self._shared.drop_tags(cache, tags)
        return count

    # -- the async API: native, over AsyncCache -------------------------------------------

    async def aadd(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: Optional[int] = None,
        *,
        tags: Iterable[str] = (),
    ) -> bool:
        """See :meth:`add`."""
        k = self._key(key, version)
        stored = self._values.dumps(value)
        ttl = self._ttl(timeout)
        cache = self.astratacache()
        if not ttl:
            return await cache.get(k, MISSING) is MISSING
        added = await cache.add(k, stored, ttl, tags)
        if added:
            self._shared.drop_keys(cache, (k,))
        return added

    async def aget(self, key: Any, default: Any = None, version: Optional[int] = None) -> Any:
        """See :meth:`get`."""
        return self._load(await self.astratacache().get(self._key(key, version), MISSING), default)

    async def aset(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: Optional[int] = None,
        *,
        tags: Iterable[str] = (),
    ) -> None:
        """See :meth:`set`."""
        k = self._key(key, version)
        stored = self._values.dumps(value)
        ttl = self._ttl(timeout)
        cache = self.astratacache()
        if ttl:
            await cache.set(k, stored, ttl, tags)
        else:
            await cache.delete(k)
        self._shared.drop_keys(cache, (k,))

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Optional[int] = None
    ) -> bool:
        """See :meth:`touch`."""
        k = self._key(key, version)
        ttl = self._ttl(timeout)
        cache = self.astratacache()
        touched = await cache.touch(k, ttl) if ttl else await cache.delete(k)
        self._shared.drop_keys(cache, (k,))
        return touched

    async def adelete(self, key: Any, version: Optional[int] = None) -> bool:
        """See :meth:`delete`."""
        k = self._key(key, version)
        cache = self.astratacache()
        existed = await cache.delete(k)
        self._shared.drop_keys(cache, (k,))
        return existed

    async def aget_many(self, keys: Iterable[Any], version: Optional[int] = None) -> dict[Any, Any]:
        """See :meth:`get_many`."""
        key_map = {self._key(key, version): key for key in keys}
        found = await self.astratacache().get_many(key_map)
        return {key_map[k]: self._values.loads(v) for k, v in found.items()}

    async def ahas_key(self, key: Any, version: Optional[int] = None) -> bool:
        """See :meth:`has_key`."""
        return await self.astratacache().get(self._key(key, version), MISSING) is not MISSING

    async def aincr(self, key: Any, delta: int = 1, version: Optional[int] = None) -> int:
        """See :meth:`incr`."""
        k = self._key(key, version)
        cache = self.astratacache()
        try:
            value = await cache.incr(k, delta)
        except KeyError:
            raise ValueError(f"Key '{key}' not found") from None
        self._shared.drop_keys(cache, (k,))
        return value

    async def aset_many(
        self,
        data: dict[Any, Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: Optional[int] = None,
        *,
        tags: Iterable[str] = (),
    ) -> list[Any]:
        """See :meth:`set_many`."""
        if not data:
            return []
        mapping = {self._key(key, version): self._values.dumps(v) for key, v in data.items()}
        ttl = self._ttl(timeout)
        cache = self.astratacache()
        if ttl:
            await cache.set_many(mapping, ttl, tags)
        else:
            for k in mapping:
                await cache.delete(k)
        self._shared.drop_keys(cache, mapping)
        return []

    async def adelete_many(self, keys: Iterable[Any], version: Optional[int] = None) -> None:
        """See :meth:`delete_many`."""
        made = [self._key(key, version) for key in keys]
        cache = self.astratacache()
        for k in made:
            await cache.delete(k)
        self._shared.drop_keys(cache, made)

    async def aclear(self) -> None:
        """See :meth:`clear`."""
        cache = self.astratacache()
        await cache.invalidate_all(reason="django cache.aclear()")
        self._shared.drop_all(cache)

    async def aclose(self, **kwargs: Any) -> None:
        """See :meth:`close`: nothing to do (see :func:`ashutdown`)."""

    async def ainvalidate_tag(self, tag: str) -> int:
        """See :meth:`invalidate_tag`."""
        return await self.ainvalidate_tags(tag)

    async def ainvalidate_tags(self, *tags: str) -> int:
        """See :meth:`invalidate_tags`."""
        cache = self.astratacache()
        count = await cache.invalidate_tags(*tags)
        self._shared.drop_tags(cache, tags)
        return count


# -- models ------------------------------------------------------------------------------


def model_tag(model: Any) -> str:
    """The tag of a model class (``"app_label.modelname"``), or of one instance
    (``"app_label.modelname:<pk>"``, below the model's tag: invalidating the model's tag
    reaches every instance's). Tag what you cache with it, e.g.
    ``cache.set(key, page, tags=[model_tag(Article)])``."""
    meta = model._meta
    base = f"{meta.app_label}.{meta.model_name}"
    if isinstance(model, type):
        return base
    return f"{base}:{model.pk}"


def invalidate_on_change(*models: Any, using: str = "default") -> Callable[[], None]:
    """Invalidate ``model_tag(model)`` in cache ``using`` whenever an instance of one of
    ``models`` is saved or deleted (``post_save`` / ``post_delete``), once the
    transaction commits (``transaction.on_commit``: a reader cannot re-cache the old
    rows before they are replaced). Returns a function that disconnects the handlers.

    Call it once, e.g. in ``AppConfig.ready()``. Bulk operations (``QuerySet.update``,
    ``bulk_create``) send no signals: invalidate the tag yourself after them.
    """
    from django.db import transaction
    from django.db.models.signals import post_delete, post_save

    if not models:
        raise TypeError("invalidate_on_change() needs at least one model")
    handlers: list[tuple[Any, Any, str]] = []
    for model in models:
        tag = model_tag(model)

        def handler(sender: Any, instance: Any = None, tag: str = tag, **kwargs: Any) -> None:
            backend = caches[using]
            if not isinstance(backend, StrataCache):
                raise ImproperlyConfigured(
                    f"invalidate_on_change: cache {using!r} is not a StrataCache backend"
                )
            transaction.on_commit(
                lambda: backend.invalidate_tag(tag), using=kwargs.get("using")
            )

        uid = f"stratacache.invalidate_on_change:{using}:{tag}"
        post_save.connect(handler, sender=model, weak=False, dispatch_uid=uid)
        post_delete.connect(handler, sender=model, weak=False, dispatch_uid=uid)
        handlers.append((model, handler, uid))

    def disconnect() -> None:
        for model, _handler, uid in handlers:
            post_save.disconnect(sender=model, dispatch_uid=uid)
            post_delete.disconnect(sender=model, dispatch_uid=uid)

    return disconnect
