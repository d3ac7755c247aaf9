"""The seed's UserService: cache-aside over SQLite, done with stratacache.

The seed (Go) reads through Redis by hand, fills the cache from a goroutine, and adds
single-flight in a second version. Here ``Cache.get_or_set`` does all of it: L1, L2,
single-flight in the process, a lease across processes, and no stale fill after an
update's invalidation.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stratacache import MISSING, Cache


@dataclass
class User:
    """A row of the ``users`` table."""

    id: int
    name: str
    email: str


class Database:
    """The system of record: SQLite, one connection per call, with a query counter."""

    def __init__(self, path: str | Path, *, query_delay: float = 0.0) -> None:
        self.path = str(path)
        self.query_delay = query_delay  # simulate a slow database (seconds per read)
        self._lock = threading.Lock()
        self.queries = 0
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS users ("
                "id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def get_user(self, user_id: int) -> User | None:
        """One SELECT (counted)."""
        with self._lock:
            self.queries += 1
        if self.query_delay:
            time.sleep(self.query_delay)
        with self._connect() as db:
            row = db.execute(
                "SELECT id, name, email FROM users WHERE id = ?", (user_id,)
            ).fetchone()
        return User(*row) if row else None

    def insert_user(self, name: str, email: str) -> User:
        """INSERT a user; returns it with its id."""
        with self._connect() as db:
            cur = db.execute("INSERT INTO users (name, email) VALUES (?, ?)", (name, email))
            return User(int(cur.lastrowid or 0), name, email)

    def update_user(self, user: User) -> bool:
        """UPDATE a user; False if there is no such id."""
        with self._connect() as db:
            cur = db.execute(
                "UPDATE users SET name = ?, email = ? WHERE id = ?",
                (user.name, user.email, user.id),
            )
            return cur.rowcount == 1

    def delete_user(self, user_id: int) -> bool:
        """DELETE a user; False if there is no such id."""
        with self._connect() as db:
            return db.execute("DELETE FROM users WHERE id = ?", (user_id,)).rowcount == 1


class UserService:
    """Users, read through the cache (L1 → Redis → SQLite) and invalidated on writes."""

    def __init__(self, db: Database, cache: Cache, *, ttl: float = 3600.0) -> None:
        self.db = db
        self.cache = cache
        self.ttl = ttl

    @staticmethod
    def key(user_id: int) -> str:
        """The cache key of a user."""
        return f"user:{user_id}"

    def get_user(self, user_id: int) -> User | None:
        """The user, from the cache if it has it, else from the database (once, for all)."""
        data = self.cache.get_or_set(self.key(user_id), lambda: self._load(user_id), ttl=self.ttl)
        return User(**data) if data is not None else None

    def _load(self, user_id: int) -> dict[str, Any] | None:
        user = self.db.get_user(user_id)
        return asdict(user) if user is not None else None

    def create_user(self, name: str, email: str) -> User:
        """Insert a user. Nothing to invalidate: no one can have cached it yet, except a
        cached "not found" for the new id, which the delete below removes."""
        user = self.db.insert_user(name, email)
        self.cache.delete(self.key(user.id))
        return user

    def update_user(self, user: User) -> bool:
        """Write the database first, then invalidate (cache-aside); readers reload."""
        updated = self.db.update_user(user)
        self._invalidate(user.id)
        return updated

    def delete_user(self, user_id: int) -> bool:
        """Delete from the database, then invalidate."""
        deleted = self.db.delete_user(user_id)
        self._invalidate(user_id)
        return deleted

    def _invalidate(self, user_id: int) -> None:
        # the seed also drops the related keys of a user
        for key in (
            self.key(user_id),
            f"user_posts:{user_id}",
            f"user_stats:{user_id}",
            "users:all",
        ):
            self.cache.delete(key)

    def get_metrics(self) -> dict[str, Any]:
        """The seed's metrics: requests, hits, misses, hit rate, DB queries, coalesced."""
        s = self.cache.stats()
        requests = s.l1_hits + s.l1_misses
        return {
            "total_requests": requests,
            "cache_hits": s.l1_hits + s.l2_hits,
            "cache_misses": requests - s.l1_hits - s.l2_hits,
            "hit_rate": f"{s.hit_rate * 100:.2f}%",
            "db_queries": self.db.queries,
            "coalesced": s.coalesced,
            "lease_waits": s.lease_waits,
            "redis_errors": s.errors,
            "load_p50_ms": round(s.load_latency.p50 * 1000, 3),
        }

    def cached_user(self, user_id: int) -> User | None:
        """The user if it is in L1 (no Redis, no database): for demos and tests."""
        data = self.cache.l1.peek(self.key(user_id), MISSING)
        return User(**data) if data is not MISSING and data is not None else None
