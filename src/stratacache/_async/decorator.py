"""``AsyncCache.cached``: the decorator that caches a function's results by its arguments.

Its wrappers keep the hit as short as ``get_or_set``'s: a plain decorated function (no
per-function early refresh, copy on read or adaptive TTL) answers an L1 hit with one L1
lookup (sync: one C call, the L1's memoized callable); every other call, and every miss,
goes through one ``load`` that calls :meth:`AsyncCache.get_or_set`, so the decorator
never has a read path of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .._adaptive import AdaptiveTTL, check_ttl_option
from .._copying import copy_option
from .._keys import KeyMaker
from .._loader import limits_for
from .._options import Duration
from .._primitives import async_bind_fast_cached
from .._sentinel import MISSING, MissingType
from .cache_base import AsyncCacheBase

if TYPE_CHECKING:
    from .bloom import AsyncBloomFilter

F = TypeVar("F", bound=Callable[..., Any])


class AsyncCacheDecorator(AsyncCacheBase):
    """The ``cached`` decorator of ``AsyncCache``."""

    def cached(
        self,
        ttl: Any = None,
        tags: Iterable[str] = (),
        key: str | Callable[..., str] | None = None,
        *,
        early_refresh: bool | float | None = None,
        copy_on_read: bool | None = None,
        soft_timeout: Duration | MissingType | None = MISSING,
        hard_timeout: Duration | MissingType | None = MISSING,
        bloom: AsyncBloomFilter | None = None,
        bloom_item: Callable[..., Any] | None = None,
        bloom_default: Any = None,
    ) -> Callable[[F], F]:
        """Decorate a function so its results are cached by its arguments.

        ``key`` is a template such as ``"user:{user_id}"`` (fields are parameter names),
        a callable taking the function's arguments and returning the key, or ``None``
        for a key built injectively from the function's name and arguments. The wrapper
        has ``.invalidate(*args, **kwargs)`` to delete the entry for those arguments
        (and ``.cache_key(*args, **kwargs)``); for a method, pass the instance or class
        first, as the wrapper receives it.

        Methods: the default key cannot tell instances apart, so a function whose first
        parameter is ``self`` is refused with ``TypeError`` at decoration unless ``key``
        is given — a template naming what identifies the instance
        (``key="repo:{self.region}:{item_id}"``) or a callable. A classmethod's ``cls``
        is part of the default key (as the class's qualified name: subclasses do not
        share entries); a staticmethod is keyed like a function. The decorator may sit
        above or below ``@staticmethod`` / ``@classmethod``.

        ``soft_timeout`` / ``hard_timeout`` override the cache's for this function's
        loads (``None``: off; default: the cache's); see ``docs/loader.md``.
        ``bloom``: guard the function with a Bloom filter of the ids that exist (see
        :meth:`get_or_set`): ``bloom_item`` takes the function's arguments and returns
        the id to check (default: the cache key); a definitely absent id returns
        ``bloom_default`` without calling the function.
        ``ttl``, ``early_refresh`` and ``copy_on_read`` are as for :meth:`get_or_set`
        (a ttl callable receives the function's result).
        """
        tag_tuple = self._tags(tags)
        limits_for(self._loader_limits, soft_timeout, hard_timeout)  # bad ones fail here
        check_ttl_option(ttl, allow_zero=False)
        if early_refresh is not None:
            self._refresher.beta(early_refresh)  # a bad option fails at decoration
        if copy_on_read is not None:
            copy_option(copy_on_read)
        # hits of the plain kind may skip Python entirely (sync: one C call)
        plain = (
            self._plain_hits
            and early_refresh is None
            and copy_on_read is None
            and not isinstance(ttl, AdaptiveTTL)
        )

        def decorate(fn: F) -> F:
            if isinstance(fn, (staticmethod, classmethod)):
                return cast(F, type(fn)(decorate(fn.__func__)))
            make_key = KeyMaker(fn, key)

            def guard(cache_key: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                if bloom is None:
                    return {}
                item = cache_key if bloom_item is None else bloom_item(*args, **kwargs)
                return {"bloom": bloom, "bloom_item": item, "bloom_default": bloom_default}

            async def load(cache_key: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                return await self.get_or_set(
                    cache_key,
                    functools.partial(fn, *args, **kwargs),
                    ttl,
                    tag_tuple,
                    early_refresh=early_refresh,
                    copy_on_read=copy_on_read,
                    soft_timeout=soft_timeout,
                    hard_timeout=hard_timeout,
                    **guard(cache_key, args, kwargs),
                )

            # sync: the L1's memoized callable answers hits in one C call
            wrapper: Any = async_bind_fast_cached(self._l1, make_key, load) if plain else None
            if wrapper is not None:
                functools.update_wrapper(wrapper, fn)
            elif plain:

                @functools.wraps(fn)
                async def wrapper(*args: Any, **kwargs: Any) -> Any:
                    cache_key = make_key(args, kwargs)
                    value = self._l1.get(cache_key, MISSING)
                    if value is not MISSING:
                        return value
                    return await load(cache_key, args, kwargs)

            else:

                @functools.wraps(fn)
                async def wrapper(*args: Any, **kwargs: Any) -> Any:
                    return await load(make_key(args, kwargs), args, kwargs)

            async def invalidate(*args: Any, **kwargs: Any) -> bool:
                return await self.delete(make_key(args, kwargs))

            wrapper.invalidate = invalidate
            wrapper.cache_key = lambda *a, **kw: make_key(a, kw)
            return cast(F, wrapper)

        return decorate
