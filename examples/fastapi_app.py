"""A FastAPI service whose item pages are cached by stratacache (L1 + Redis + bus).

    pip install 'stratacache[fastapi,prometheus]' uvicorn
    STRATACACHE_URL=redis://localhost:6379/0 ITEMS_DB=items.sqlite3 \\
        uvicorn fastapi_app:app --workers 4        # from examples/

    curl -i localhost:8000/items/1                 # X-Cache: MISS, then HIT
    curl -i -H 'If-None-Match: "<etag>"' localhost:8000/items/1    # 304
    curl -i -X PUT localhost:8000/items/1 -H 'content-type: application/json' \\
        -d '{"name": "lamp", "price": 12.5}'       # every worker drops /items/1 at once
    curl localhost:8000/healthz; curl localhost:8000/metrics

Reads are cached per item (tag ``items:<id>``) and for the list (tag ``items:list``); a
write goes to the database, then invalidates those tags, which reaches every process
through the bus. See docs/fastapi.md.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

from stratacache.contrib.fastapi import CacheDep, StrataCache

from items_db import ItemsDB


class ItemIn(BaseModel):
    """The body of a PUT."""

    name: str
    price: float


def item_tags(request: Request) -> list[str]:
    """The tag of the item a request is about."""
    return [f"items:{request.path_params['item_id']}"]


def create_app(
    redis_url: Optional[str] = None, db_path: Optional[str] = None, **options: Any
) -> FastAPI:
    """The app on Redis ``redis_url`` and the SQLite file ``db_path`` (default: the
    ``STRATACACHE_URL`` and ``ITEMS_DB`` environment variables); ``options`` go to
    :class:`~stratacache.AsyncCache`."""
    redis_url = redis_url or os.environ.get("STRATACACHE_URL", "redis://localhost:6379/0")
    db = ItemsDB(db_path or os.environ.get("ITEMS_DB", "items.sqlite3"))
    options.setdefault("namespace", "items-fastapi")
    strata = StrataCache(redis_url, **options)
    app = FastAPI(title="items", lifespan=strata.lifespan)
    app.state.db = db
    strata.init_app(app)  # /healthz and /metrics

    @app.get("/items/{item_id}")
    @strata.cached(ttl=300, tags=item_tags)
    async def read_item(item_id: int) -> dict[str, Any]:
        item = db.get(item_id)
        if item is None:
            raise HTTPException(status_code=404, detail="no such item")  # never cached
        return item

    @app.get("/items")
    @strata.cached(ttl=60, tags=["items:list"])
    async def list_items(limit: int = 100) -> list[dict[str, Any]]:
        return db.list(limit)

    @app.put("/items/{item_id}", status_code=204)
    async def write_item(item_id: int, item: ItemIn, cache: CacheDep) -> None:
        db.put(item_id, item.name, item.price)
        await cache.invalidate_tags(f"items:{item_id}", "items:list")

    @app.delete("/items/{item_id}", status_code=204)
    async def delete_item(item_id: int, cache: CacheDep) -> None:
        if not db.delete(item_id):
            raise HTTPException(status_code=404, detail="no such item")
        await cache.invalidate_tags(f"items:{item_id}", "items:list")

    return app


if __name__ == "__main__":  # pragma: no cover - a manual run
    import uvicorn  # not a dependency of stratacache: pip install uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=8000)
