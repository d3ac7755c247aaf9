"""Flask integration: a :class:`~stratacache.Cache` per app, a view decorator that caches
responses, ``/healthz`` and Prometheus ``/metrics``.

    from flask import Flask
    from stratacache.contrib.flask import StrataCache

    strata = StrataCache()                   # app factories: strata.init_app(app) later

    def create_app():
        app = Flask(__name__)
        app.config["STRATACACHE_URL"] = "redis://localhost:6379/0"
        app.config["STRATACACHE_OPTIONS"] = {"namespace": "shop"}
        strata.init_app(app)
        return app

    @bp.get("/items/<int:item_id>")
    @strata.cached(ttl=60, tags=lambda request: [f"items:{request.view_args['item_id']}"])
    def item(item_id):
        return load_item(item_id)

    @bp.put("/items/<int:item_id>")
    def update(item_id):
        save_item(item_id)
        strata.cache.invalidate_tag(f"items:{item_id}")   # every process, at once
        return "", 204

The decorator behaves as the FastAPI one (``stratacache.contrib._http``, ``docs/flask.md``).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

from flask import Flask, Response, current_app, jsonify, make_response, request

from .. import Cache
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

__all__ = ["StrataCache"]

_EXTENSION = "stratacache"


class _AppState:
    """What the extension keeps per app (``app.extensions["stratacache"]``)."""

    def __init__(self, url: Any, options: dict[str, Any]) -> None:
        self.url = url
        self.options = options
        self.cache: Optional[Cache] = None
        self.registry: Any = None
        self._lock = threading.Lock()

    def get(self) -> Cache:
        """The app's cache, created (and registered for metrics) by the first caller."""
        cache = self.cache
        if cache is None:
            with self._lock:
                if self.cache is None:
                    self.cache = Cache(self.url, **self.options)
                    if self.registry is not None:
                        from stratacache import prometheus

                        prometheus.register(self.cache, self.registry)
                cache = self.cache
        return cache

    def close(self) -> None:
        """Close the cache (and stop exporting its metrics)."""
        with self._lock:
            cache, self.cache = self.cache, None
        if cache is not None:
            if self.registry is not None:
                from stratacache import prometheus

                prometheus.unregister(cache, self.registry)
            cache.close()


class StrataCache:
    """The Flask extension: ``StrataCache(app)``, or ``StrataCache()`` then
    ``init_app(app)`` in an app factory.

    Configuration (``app.config``): ``STRATACACHE_URL`` (the Redis URL; unset: L1 only),
    ``STRATACACHE_OPTIONS`` (keyword arguments of :class:`~stratacache.Cache`),
    ``STRATACACHE_HEALTH_PATH`` (default ``"/healthz"``: 503 when ``failing``, else 200;
    ``None``: not mounted),
    ``STRATACACHE_METRICS_PATH`` (default ``"/metrics"`` when prometheus-client is
    installed, ``None``: not mounted), ``STRATACACHE_KEY_PREFIX`` (default ``"http"``).
    The cache is created on first use in each process (so a pre-fork server's workers
    each get their own connections and bus) and closed by :meth:`close`.
    """

    def __init__(self, app: Optional[Flask] = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Attach the extension to ``app`` and mount its routes."""
        config = app.config
        options = dict(config.get("STRATACACHE_OPTIONS", {}))
        state = _AppState(config.get("STRATACACHE_URL"), options)
        app.extensions[_EXTENSION] = state
        health_path = config.get("STRATACACHE_HEALTH_PATH", "/healthz")
        if health_path is not None:
            app.add_url_rule(health_path, "stratacache_healthz", self._healthz)
        metrics_path = config.get("STRATACACHE_METRICS_PATH", "/metrics")
        if metrics_path is not None:
            try:
                from prometheus_client import CollectorRegistry
            except ImportError:  # the prometheus extra is not installed
                return
            state.registry = CollectorRegistry()
            app.add_url_rule(metrics_path, "stratacache_metrics", self._metrics)

    @staticmethod
    def _state(app: Optional[Flask] = None) -> _AppState:
        target = app if app is not None else current_app
        state = target.extensions.get(_EXTENSION)
        if state is None:
            raise RuntimeError("StrataCache.init_app(app) was not called for this app")
        return state  # type: ignore[no-any-return]

    @property
    def cache(self) -> Cache:
        """The current app's :class:`~stratacache.Cache` (created on first use)."""
        return self.cache_for(None)

    def cache_for(self, app: Optional[Flask]) -> Cache:
        """``app``'s cache (default: the current app's)."""
        return self._state(app).get()

    def close(self, app: Optional[Flask] = None) -> None:
        """Close ``app``'s cache (bus thread, Redis connections); reopened on next use."""
        self._state(app).close()

    def _healthz(self) -> Response:
        health = self.cache.health()
        response = jsonify(health.to_dict())
        # 503 only when failing: a degraded cache still serves (through the loader)
        response.status_code = 503 if health.status == "failing" else 200
        return response

    def _metrics(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self.cache  # noqa: B018 - a scrape before any request still shows the cache
        state = self._state()
        return Response(generate_latest(state.registry), mimetype=CONTENT_TYPE_LATEST)

    def cached(
        self,
        ttl: float = 60.0,
        *,
        tags: TagsSpec = (),
        vary: Sequence[str] = (),
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Cache a view's responses for ``ttl`` seconds (put it *below* the route
        decorator). ``tags``: a list, or a function of ``flask.request``; ``vary``:
        request headers whose values are part of the key. Misses are single-flight
        (one request per key runs the view, here and across processes)."""
        vary_headers = tuple(vary)

        def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if request.method not in CACHEABLE_METHODS:
                    return view(*args, **kwargs)
                directives = request_directives(request.headers.get("Cache-Control"))
                if "no-store" in directives:
                    response = make_response(view(*args, **kwargs))
                    response.headers["X-Cache"] = "BYPASS"
                    return response
                prefix = current_app.config.get("STRATACACHE_KEY_PREFIX", "http")
                key = response_key(
                    prefix,
                    request.path,
                    request.args.items(multi=True),
                    [request.headers.get(h, "") for h in vary_headers],
                )
                cache = self.cache
                outcome = "MISS"

                def render() -> Any:
                    response = make_response(view(*args, **kwargs))
                    headers = list(response.headers.items())
                    if response.is_streamed or not storable(response.status_code, headers):
                        raise Uncacheable(response)
                    body = response.get_data()
                    stored = StoredResponse.build(
                        response.status_code, body, headers, time.time() + ttl
                    )
                    return stored.to_record()

                try:
                    if skips_read(directives):
                        record = render()
                        cache.set(key, record, ttl, tags_for(tags, request))
                    else:
                        probe = cache.get(key)
                        if probe is not None:
                            outcome, record = "HIT", probe
                        else:
                            record = cache.get_or_set(key, render, ttl, tags_for(tags, request))
                except Uncacheable as passed:
                    response = passed.response
                    response.headers["X-Cache"] = "BYPASS"
                    return response
                stored = StoredResponse.from_record(record)
                if stored is None:  # not a response record: someone else's value
                    return view(*args, **kwargs)
                return _serve(stored, outcome)

            return wrapper

        return decorate


def _serve(stored: StoredResponse, outcome: str) -> Response:
    now = time.time()
    headers = list(stored.headers) + stored.cache_headers(now, outcome)
    if etag_matches(request.headers.get("If-None-Match"), stored.etag):
        kept = [(k, v) for k, v in headers if k.lower() != "content-type"]
        return Response(status=304, headers=kept)
    return Response(stored.body, status=stored.status, headers=headers)
