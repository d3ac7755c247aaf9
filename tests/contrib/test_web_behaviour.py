"""The web integrations' behaviour that the example contract does not show: misses are
single-flight, and ``/healthz`` follows ``cache.health()`` when Redis is gone (a real
server, killed): 200 while ``degraded`` (reads go to the loader), 503 once ``failing``
(a write waiting in the outbox).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from stratacache.testing import RedisServerProcess

from web_cases import until


def flask_app(url: str, view: Callable[[], Any]) -> Any:
    from flask import Flask

    from stratacache.contrib.flask import StrataCache

    app = Flask(__name__)
    app.config["STRATACACHE_URL"] = url
    app.config["STRATACACHE_OPTIONS"] = {"namespace": "web-behaviour", "redis_timeout": 2.0}
    strata = StrataCache(app)
    app.add_url_rule("/slow", "slow", strata.cached(ttl=60)(view))
    app.extensions["test_strata"] = strata
    return app


def test_flask_misses_are_single_flight(redis_url: str) -> None:
    release = threading.Event()
    calls: list[int] = []

    def slow() -> Any:
        calls.append(1)
        release.wait(30)
        return {"answer": 42}

    app = flask_app(redis_url, slow)
    strata = app.extensions["test_strata"]
    results: list[Any] = []

    def request() -> None:
        response = app.test_client().get("/slow")
        results.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=request) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        with app.app_context():
            cache = strata.cache
        # every other request waits on the one running the view
        until(lambda: len(calls) == 1 and cache.stats().coalesced >= 3)
    finally:
        release.set()
        for t in threads:
            t.join(30)
        strata.close(app)
    assert calls == [1]
    assert results == [(200, {"answer": 42})] * 4


def test_fastapi_misses_are_single_flight(redis_url: str) -> None:
    import asyncio

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from stratacache.contrib.fastapi import StrataCache

    strata = StrataCache(redis_url, namespace="web-behaviour", redis_timeout=2.0)
    app = FastAPI(lifespan=strata.lifespan)
    calls: list[int] = []
    release = threading.Event()

    @app.get("/slow")
    @strata.cached(ttl=60)
    async def slow() -> dict[str, int]:
        calls.append(1)
        while not release.is_set():
            await asyncio.sleep(0.005)
        return {"answer": 42}

    results: list[Any] = []
    with TestClient(app) as client:

        def request() -> None:
            response = client.get("/slow")
            results.append((response.status_code, response.json()))

        threads = [threading.Thread(target=request) for _ in range(4)]
        try:
            for t in threads:
                t.start()
            until(
                lambda: len(calls) == 1
                and strata.cache is not None
                and strata.cache.stats().coalesced >= 3
            )
        finally:
            release.set()
            for t in threads:
                t.join(30)
    assert calls == [1]
    assert results == [(200, {"answer": 42})] * 4


def follow_outage(get: Callable[[str], Any], put: Callable[[str, Any], Any], kill: Any) -> None:
    """Kill Redis; /healthz must leave "ok", answer 503 exactly when "failing", and be
    "failing" (503) once a write waits in the outbox."""
    code, health = get("/healthz")
    assert (code, health["status"]) == (200, "ok")
    assert get("/items/1")[0] == 200
    kill()
    deadline = time.monotonic() + 30
    while get("/healthz")[1]["status"] == "ok":
        assert time.monotonic() < deadline, "/healthz never reported the outage"
        get("/items/2")  # traffic lets the cache notice
    code, health = get("/healthz")
    # degraded (reads go to the loader) still serves: it stays in rotation
    assert code == (503 if health["status"] == "failing" else 200), health
    assert get("/items/1")[0] == 200  # through the loader
    assert put("/items/1", {"name": "lamp", "price": 1.0}) == 204  # queued in the outbox
    until(lambda: get("/healthz")[0] == 503)
    assert get("/healthz")[1]["status"] == "failing"


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_healthz_follows_an_outage(
    framework: str, redis_server_factory: Callable[..., RedisServerProcess], tmp_path: Any
) -> None:
    server = redis_server_factory()
    db = str(tmp_path / "items.sqlite3")
    options = {"redis_timeout": 0.2, "breaker_cooldown": 0.2}
    if framework == "fastapi":
        from fastapi.testclient import TestClient

        import fastapi_app

        app = fastapi_app.create_app(server.url, db, **options)
        app.state.db.put(1, "lamp", 10.0)
        app.state.db.put(2, "desk", 10.0)
        with TestClient(app) as client:

            def get(path: str) -> Any:
                r = client.get(path)
                return r.status_code, r.json()

            follow_outage(get, lambda p, b: client.put(p, json=b).status_code, server.kill)
    else:
        import flask_app as flask_example

        app = flask_example.create_app(server.url, db, **options)
        app.extensions["items_db"].put(1, "lamp", 10.0)
        app.extensions["items_db"].put(2, "desk", 10.0)
        client = app.test_client()
        try:

            def fget(path: str) -> Any:
                r = client.get(path)
                return r.status_code, r.get_json()

            follow_outage(fget, lambda p, b: client.put(p, json=b).status_code, server.kill)
        finally:
            flask_example.strata.close(app)
