"""A Flask service whose item pages are cached by stratacache (L1 + Redis + bus).

    pip install 'stratacache[flask,prometheus]'
    STRATACACHE_URL=redis://localhost:6379/0 ITEMS_DB=items.sqlite3 python flask_app.py

    curl -i localhost:5000/items/1                 # X-Cache: MISS, then HIT
    curl -i -X PUT localhost:5000/items/1 -H 'content-type: application/json' \\
        -d '{"name": "lamp", "price": 12.5}'       # every process drops /items/1 at once
    curl localhost:5000/healthz; curl localhost:5000/metrics

The same service as ``fastapi_app.py``, with an app factory (``create_app``) and the
extension's ``init_app``. See docs/flask.md.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from flask import Blueprint, Flask, abort, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from stratacache.contrib.flask import StrataCache

from items_db import ItemsDB

strata = StrataCache()  # bound to each app by create_app (init_app)
items = Blueprint("items", __name__)


def db() -> ItemsDB:
    """The current app's database."""
    return current_app.extensions["items_db"]  # type: ignore[no-any-return]


def item_tags(req: Any) -> list[str]:
    """The tag of the item a request is about."""
    return [f"items:{req.view_args['item_id']}"]


@items.get("/items/<int:item_id>")
@strata.cached(ttl=300, tags=item_tags)
def read_item(item_id: int) -> ResponseReturnValue:
    item = db().get(item_id)
    if item is None:
        abort(404)  # never cached
    return jsonify(item)


@items.get("/items")
@strata.cached(ttl=60, tags=["items:list"])
def list_items() -> ResponseReturnValue:
    return jsonify(db().list(request.args.get("limit", 100, type=int)))


@items.put("/items/<int:item_id>")
def write_item(item_id: int) -> ResponseReturnValue:
    body = request.get_json()
    db().put(item_id, body["name"], float(body["price"]))
    strata.cache.invalidate_tags(f"items:{item_id}", "items:list")
    return "", 204


@items.delete("/items/<int:item_id>")
def delete_item(item_id: int) -> ResponseReturnValue:
    if not db().delete(item_id):
        abort(404)
    strata.cache.invalidate_tags(f"items:{item_id}", "items:list")
    return "", 204


def create_app(
    redis_url: Optional[str] = None, db_path: Optional[str] = None, **options: Any
) -> Flask:
    """The app on Redis ``redis_url`` and the SQLite file ``db_path`` (default: the
    ``STRATACACHE_URL`` and ``ITEMS_DB`` environment variables); ``options`` go to
    :class:`~stratacache.Cache`."""
    app = Flask(__name__)
    app.config["STRATACACHE_URL"] = redis_url or os.environ.get(
        "STRATACACHE_URL", "redis://localhost:6379/0"
    )
    app.config["STRATACACHE_OPTIONS"] = {"namespace": "items-flask", **options}
    app.extensions["items_db"] = ItemsDB(db_path or os.environ.get("ITEMS_DB", "items.sqlite3"))
    strata.init_app(app)  # /healthz and /metrics
    app.register_blueprint(items)
    return app


if __name__ == "__main__":  # pragma: no cover - a manual run
    create_app().run(port=5000)
