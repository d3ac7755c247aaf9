"""The FastAPI and Flask integrations, through their runnable examples
(``examples/fastapi_app.py``, ``examples/flask_app.py``), with the frameworks' own test
clients against real Redis: one contract, run for each framework.

Caching is observed through ``X-Cache`` and the example database's query count; a write
through one app instance, or one app process, is seen by another.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from web_cases import AppProcess, until

FRAMEWORKS = ["fastapi", "flask"]


class Web:
    """One example app and its framework's test client, behind one small interface."""

    def __init__(self, framework: str, redis_url: str, db_path: str) -> None:
        self.framework = framework
        if framework == "fastapi":
            from fastapi.testclient import TestClient

            import fastapi_app

            self.app: Any = fastapi_app.create_app(redis_url, db_path, redis_timeout=2.0)
            self._client: Any = TestClient(self.app)
            self._client.__enter__()  # runs the lifespan: the AsyncCache opens
            self.db = self.app.state.db
        else:
            import flask_app

            self.app = flask_app.create_app(redis_url, db_path, redis_timeout=2.0)
            self._client = self.app.test_client()
            self.db = self.app.extensions["items_db"]

    def get(self, path: str, **headers: str) -> Any:
        return self._client.get(path, headers=headers)

    def put(self, path: str, body: dict[str, Any]) -> Any:
        return self._client.put(path, json=body)

    def delete(self, path: str) -> Any:
        return self._client.delete(path)

    @staticmethod
    def body(response: Any) -> Any:
        return json.loads(response.text)

    def close(self) -> None:
        if self.framework == "fastapi":
            self._client.__exit__(None, None, None)
        else:
            import flask_app

            flask_app.strata.close(self.app)


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "items.sqlite3")


@pytest.fixture
def web(framework: str, redis_url: str, db_path: str) -> Iterator[Web]:
    w = Web(framework, redis_url, db_path)
    w.db.put(1, "lamp", 10.0)
    w.db.put(2, "desk", 99.5)
    yield w
    w.close()


def test_a_read_is_cached_and_served_from_the_cache(web: Web) -> None:
    first = web.get("/items/1")
    assert first.status_code == 200
    assert web.body(first) == {"id": 1, "name": "lamp", "price": 10.0}
    assert first.headers["X-Cache"] == "MISS"
    reads = web.db.reads
    second = web.get("/items/1")
    assert second.headers["X-Cache"] == "HIT"
    assert web.body(second) == web.body(first)
    assert web.db.reads == reads  # no query: served by the cache
    assert second.headers["ETag"] == first.headers["ETag"]
    max_age = int(second.headers["Cache-Control"].removeprefix("max-age="))
    assert 0 < max_age <= 300


def test_if_none_match_gives_304(web: Web) -> None:
    etag = web.get("/items/1").headers["ETag"]
    not_modified = web.get("/items/1", **{"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.text == ""
    assert not_modified.headers["ETag"] == etag
    assert web.get("/items/1", **{"If-None-Match": '"other"'}).status_code == 200
    web.put("/items/1", {"name": "lamp", "price": 11.0})
    changed = web.get("/items/1", **{"If-None-Match": etag})
    assert changed.status_code == 200  # a new body has a new ETag
    assert changed.headers["ETag"] != etag


def test_request_cache_control(web: Web) -> None:
    web.get("/items/1")
    reads = web.db.reads
    bypass = web.get("/items/1", **{"Cache-Control": "no-store"})
    assert bypass.headers["X-Cache"] == "BYPASS"
    assert web.db.reads == reads + 1
    web.db.put(1, "lamp (new)", 10.0)  # behind the cache's back
    assert web.body(web.get("/items/1"))["name"] == "lamp"  # still cached
    refreshed = web.get("/items/1", **{"Cache-Control": "no-cache"})
    assert refreshed.headers["X-Cache"] == "MISS"
    assert web.body(refreshed)["name"] == "lamp (new)"
    again = web.get("/items/1")
    assert again.headers["X-Cache"] == "HIT"  # the refresh was stored
    assert web.body(again)["name"] == "lamp (new)"


def test_errors_are_not_cached(web: Web) -> None:
    assert web.get("/items/404").status_code == 404
    web.db.put(404, "found later", 1.0)
    found = web.get("/items/404")
    assert found.status_code == 200
    assert web.body(found)["name"] == "found later"


def test_query_order_does_not_matter(web: Web) -> None:
    first = web.get("/items?limit=5&x=1")
    assert first.headers["X-Cache"] == "MISS"
    assert [i["id"] for i in web.body(first)] == [1, 2]
    assert web.get("/items?x=1&limit=5").headers["X-Cache"] == "HIT"
    assert web.get("/items?limit=1").headers["X-Cache"] == "MISS"


def test_a_write_invalidates_item_and_list(web: Web) -> None:
    web.get("/items/1")
    web.get("/items")
    assert web.put("/items/1", {"name": "lamp", "price": 12.5}).status_code == 204
    item = web.get("/items/1")
    assert item.headers["X-Cache"] == "MISS"
    assert web.body(item)["price"] == 12.5
    listing = web.get("/items")
    assert listing.headers["X-Cache"] == "MISS"
    assert web.body(listing)[0]["price"] == 12.5
    assert web.delete("/items/2").status_code == 204
    assert web.get("/items/2").status_code == 404
    assert [i["id"] for i in web.body(web.get("/items"))] == [1]


def test_healthz_and_metrics(web: Web) -> None:
    web.get("/items/1")
    health = web.get("/healthz")
    assert health.status_code == 200
    assert web.body(health)["status"] == "ok"
    metrics = web.get("/metrics")
    assert metrics.status_code == 200
    assert 'namespace="items-' in metrics.text
    assert "stratacache_" in metrics.text


def test_two_app_instances_share_invalidation(
    framework: str, redis_url: str, db_path: str
) -> None:
    a, b = Web(framework, redis_url, db_path), Web(framework, redis_url, db_path)
    try:
        a.db.put(1, "lamp", 10.0)
        assert a.get("/items/1").headers["X-Cache"] == "MISS"
        assert b.get("/items/1").headers["X-Cache"] == "HIT"  # filled by a, through Redis
        assert b.get("/items/1").headers["X-Cache"] == "HIT"  # now in b's L1
        a.put("/items/1", {"name": "lamp", "price": 20.0})
        until(lambda: b.body(b.get("/items/1"))["price"] == 20.0)
    finally:
        a.close()
        b.close()


@pytest.mark.slow
def test_a_write_in_one_process_is_seen_by_another(
    framework: str, redis_url: str, db_path: str
) -> None:
    here = Web(framework, redis_url, db_path)
    here.db.put(1, "lamp", 10.0)
    other = AppProcess(framework, redis_url, db_path)
    try:
        assert other.get("/items/1")["x_cache"] == "MISS"
        assert other.get("/items/1")["x_cache"] == "HIT"  # in the other process's L1
        assert here.get("/items/1").headers["X-Cache"] == "HIT"  # its fill reached Redis
        here.put("/items/1", {"name": "lamp", "price": 30.0})
        until(lambda: other.get("/items/1")["json"]["price"] == 30.0)
    finally:
        other.close()
        here.close()
