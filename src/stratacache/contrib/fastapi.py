"""FastAPI integration: an :class:`~stratacache.AsyncCache` for the app's lifetime, a
dependency that gives it to endpoints, a response-caching decorator, ``/healthz`` and
Prometheus ``/metrics``.

    from fastapi import FastAPI
    from stratacache.contrib.fastapi import CacheDep, StrataCache

    strata = StrataCache("redis://localhost:6379/0", namespace="shop")
    app = FastAPI(lifespan=strata.lifespan)
    strata.init_app(app)                       # /healthz (and /metrics with prometheus)

    @app.get("/items/{item_id}")
    @strata.cached(ttl=60, tags=lambda request: [f"items:{request.path_params['item_id']}"])
    async def item(item_id: int):
        return await load_item(item_id)

    @app.put("/items/{item_id}")
    async def update(item_id: int, cache: CacheDep):
        await save_item(item_id)
        await cache.invalidate_tag(f"items:{item_id}")   # every process, at once

The decorator's HTTP behaviour (key, ``Cache-Control``, ``ETag``/304, what is stored) is
described in ``stratacache.contrib._http`` and ``docs/fastapi.md``.
"""

from __future__ import annotations

import functools
import inspect
import time
import typing
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Callable, Optional

from fastapi import Depends, FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .. import AsyncCache
from ._http import (
    CACHEABLE_METHODS,
    StoredResponse,
    TagsSpec,
    Uncacheable,
    etag_matches,
    request_directives,
    response_key,
    skips_read,
    storable,
    tags_for,
)

__all__ = ["CacheDep", "StrataCache", "get_cache"]

_STATE = "stratacache"
_REQUEST_PARAM = "_stratacache_request"


async def get_cache(request: Request) -> AsyncCache:
    """Dependency: the app's :class:`~stratacache.AsyncCache` (``Depends(get_cache)``)."""
    cache: Optional[AsyncCache] = getattr(request.app.state, _STATE, None)
    if cache is None:
        raise RuntimeError(
            "no stratacache on this app: pass lifespan=StrataCache(...).lifespan to FastAPI"
        )
    return cache


CacheDep = Annotated[AsyncCache, Depends(get_cache)]
"""An endpoint parameter annotated ``cache: CacheDep`` receives the app's ``AsyncCache``."""


class StrataCache:
    """The integration object of one FastAPI app.

    Parameters:
        redis: the Redis URL (or client) of the :class:`~stratacache.AsyncCache`;
            ``None``: L1 only.
        health_path: where :meth:`init_app` mounts the health check (``None``: not).
        metrics_path: where :meth:`init_app` mounts Prometheus metrics, if
            ``prometheus-client`` is installed (``None``: not).
        metrics_registry: the prometheus-client registry to export to (default: a new
            one, served at ``metrics_path``).
        key_prefix: prefix of the response keys in the cache.
        **options: keyword arguments of :class:`~stratacache.AsyncCache`.
    """

    def __init__(
        self,
        redis: Any = None,
        *,
        health_path: Optional[str] = "/healthz",
        metrics_path: Optional[str] = "/metrics",
        metrics_registry: Any = None,
        key_prefix: str = "http",
        **options: Any,
    ) -> None:
        self._redis = redis
        self._options = options
        self._health_path = health_path
        self._metrics_path = metrics_path
        self._registry = metrics_registry
        self.key_prefix = key_prefix
        self.cache: Optional[AsyncCache] = None
        """The running app's cache (set by :meth:`lifespan`)."""

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """``FastAPI(lifespan=...)``: open the cache at startup, close it at shutdown."""
        cache = AsyncCache(self._redis, **self._options)
        self.cache = cache
        setattr(app.state, _STATE, cache)
        registered = self._register_metrics(cache)
        try:
            yield
        finally:
            if registered is not None:
                from stratacache import prometheus

                prometheus.unregister(cache, registered)
            await cache.close()
            self.cache = None

    def _register_metrics(self, cache: AsyncCache) -> Any:
        if self._metrics_path is None:
            return None
        try:
            from prometheus_client import CollectorRegistry

            from stratacache import prometheus
        except ImportError:  # the prometheus extra is not installed
            return None
        if self._registry is None:
            self._registry = CollectorRegistry()
        prometheus.register(cache, self._registry)
        return self._registry

    def init_app(self, app: FastAPI) -> None:
        """Mount ``/healthz`` (``cache.health()`` as JSON; 503 when it is ``failing``, 200
        when ``ok`` or ``degraded``) and, when prometheus-client is installed,
        ``/metrics``."""
        if self._health_path is not None:

            async def healthz(request: Request) -> JSONResponse:
                health = (await get_cache(request)).health()
                # 503 only when failing: a degraded cache still serves (through the loader)
                status = 503 if health.status == "failing" else 200
                return JSONResponse(health.to_dict(), status_code=status)

            app.add_api_route(self._health_path, healthz, methods=["GET"], include_in_schema=False)
        if self._metrics_path is not None:
            try:
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
            except ImportError:
                return

            async def metrics() -> Response:
                if self._registry is None:
                    return Response(b"", media_type=CONTENT_TYPE_LATEST)
                return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)

            app.add_api_route(self._metrics_path, metrics, methods=["GET"], include_in_schema=False)

    def cached(
        self,
        ttl: float = 60.0,
        *,
        tags: TagsSpec = (),
        vary: Sequence[str] = (),
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Cache an endpoint's responses for ``ttl`` seconds (put it *below* the route
        decorator). ``tags``: a list, or a function of the ``Request`` (e.g. of its path
        parameters); ``vary``: request headers whose values are part of the key.

        A result that is not a ``Response`` is rendered as JSON (``jsonable_encoder``),
        so a ``response_model`` is not applied to it. Misses are single-flight: one
        request per key runs the endpoint, in this process and (through a lease) across
        processes, while the others wait for its response.
        """
        vary_headers = tuple(vary)

        def decorate(endpoint: Callable[..., Any]) -> Callable[..., Any]:
            signature = inspect.signature(endpoint)
            is_async = inspect.iscoroutinefunction(endpoint)

            async def run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Response:
                result = (
                    await endpoint(*args, **kwargs)
                    if is_async
                    else await run_in_threadpool(endpoint, *args, **kwargs)
                )
                if isinstance(result, Response):
                    return result
                return JSONResponse(jsonable_encoder(result))

            @functools.wraps(endpoint)
            async def wrapper(*args: Any, **kwargs: Any) -> Response:
                request: Request = kwargs.pop(_REQUEST_PARAM)
                if request.method not in CACHEABLE_METHODS:
                    return await run(args, kwargs)
                directives = request_directives(request.headers.get("cache-control"))
                if "no-store" in directives:
                    response = await run(args, kwargs)
                    response.headers["X-Cache"] = "BYPASS"
                    return response
                cache = await get_cache(request)
                key = response_key(
                    self.key_prefix,
                    request.url.path,
                    request.query_params.multi_items(),
                    [request.headers.get(h, "") for h in vary_headers],
                )
                outcome = "MISS"

                async def render() -> Any:
                    response = await run(args, kwargs)
                    body = getattr(response, "body", None)
                    headers = list(response.headers.items())
                    if not isinstance(body, bytes) or not storable(response.status_code, headers):
                        raise Uncacheable(response)
                    stored = StoredResponse.build(
                        response.status_code, body, headers, time.time() + ttl
                    )
                    return stored.to_record()

                try:
                    if skips_read(directives):
                        record = await render()
                        await cache.set(key, record, ttl, tags_for(tags, request))
                    else:
                        probe = await cache.get(key)
                        if probe is not None:
                            outcome, record = "HIT", probe
                        else:
                            record = await cache.get_or_set(
                                key, render, ttl, tags_for(tags, request)
                            )
                except Uncacheable as passed:
                    response = passed.response
                    response.headers["X-Cache"] = "BYPASS"
                    return response  # type: ignore[no-any-return]
                stored = StoredResponse.from_record(record)
                if stored is None:  # not a response record: someone else's value
                    return await run(args, kwargs)
                return _serve(stored, request, outcome)

            # annotations resolved in the endpoint's module: FastAPI would resolve string
            # annotations (``from __future__ import annotations``) in this one
            hints = typing.get_type_hints(endpoint, include_extras=True)
            params = [
                p.replace(annotation=hints.get(p.name, p.annotation))
                for p in signature.parameters.values()
                if p.name != _REQUEST_PARAM
            ]
            extra = inspect.Parameter(
                _REQUEST_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=Request
            )
            # keyword-only parameters must follow the others (and precede **kwargs)
            at = next(
                (i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD),
                len(params),
            )
            params.insert(at, extra)
            wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
                parameters=params,
                return_annotation=hints.get("return", signature.return_annotation),
            )
            return wrapper

        return decorate


def _serve(stored: StoredResponse, request: Request, outcome: str) -> Response:
    now = time.time()
    headers = dict(stored.headers)
    headers.update(stored.cache_headers(now, outcome))
    if etag_matches(request.headers.get("if-none-match"), stored.etag):
        kept = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        return Response(status_code=304, headers=kept)
    return Response(stored.body, status_code=stored.status, headers=headers)
