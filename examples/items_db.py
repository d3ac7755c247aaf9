"""The system of record of the web examples: a table of items in SQLite.

Both example apps (``fastapi_app.py``, ``flask_app.py``) read and write it; several app
processes share it through its file, as they would share a real database. ``reads``
counts the queries this process made, so a demo (or a test) can see what the cache saved.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any, Optional


class ItemsDB:
    """Items ``{id, name, price}`` in the SQLite file at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.reads = 0
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS items "
                "(id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL NOT NULL)"
            )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection for one transaction (committed on success), then closed."""
        with closing(sqlite3.connect(self.path, timeout=30)) as db, db:
            yield db

    def get(self, item_id: int) -> Optional[dict[str, Any]]:
        """The item, or None."""
        with self._lock:
            self.reads += 1
        with self._connect() as db:
            query = "SELECT id, name, price FROM items WHERE id = ?"
            row = db.execute(query, (item_id,)).fetchone()
        return None if row is None else {"id": row[0], "name": row[1], "price": row[2]}

    def list(self, limit: int) -> list[dict[str, Any]]:
        """The first ``limit`` items by id."""
        with self._lock:
            self.reads += 1
        with self._connect() as db:
            rows = db.execute("SELECT id, name, price FROM items ORDER BY id LIMIT ?", (limit,))
            return [{"id": r[0], "name": r[1], "price": r[2]} for r in rows]

    def put(self, item_id: int, name: str, price: float) -> None:
        """Create or replace the item."""
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO items (id, name, price) VALUES (?, ?, ?)",
                (item_id, name, price),
            )

    def delete(self, item_id: int) -> bool:
        """Remove the item; True if it existed."""
        with self._connect() as db:
            return db.execute("DELETE FROM items WHERE id = ?", (item_id,)).rowcount > 0
