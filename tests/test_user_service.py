"""The seed's UserService gives the seed's expected results (on real Redis and SQLite)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratacache import Cache

from concurrency import until
from user_service import Database, User, UserService


@pytest.fixture
def service(target: tuple[str, bool], tmp_path: Path) -> Iterator[UserService]:
    url, cluster = target
    db = Database(tmp_path / "users.db")
    cache = Cache(url, cluster=cluster, namespace="users", lease_wait=5, redis_timeout=2.0)
    yield UserService(db, cache)
    cache.close()


def test_first_access_misses_second_hits_hit_rate_50_percent(service: UserService) -> None:
    alice = service.create_user("Alice", "alice@example.com")
    assert service.get_user(alice.id) == alice
    assert service.db.queries == 1
    assert service.get_user(alice.id) == alice
    assert service.db.queries == 1
    metrics = service.get_metrics()
    assert metrics["hit_rate"] == "50.00%"
    assert (metrics["cache_hits"], metrics["cache_misses"]) == (1, 1)


def test_ten_concurrent_requests_make_one_db_query(service: UserService) -> None:
    bob = service.create_user("Bob", "bob@example.com")
    # The query is held until all ten requests have arrived (one loading, nine waiting
    # on it), rather than made slow and hoped long enough on a busy machine.
    query_started, release_query = threading.Event(), threading.Event()
    read_user = service.db.get_user

    def held_query(user_id: int) -> User | None:
        query_started.set()
        assert release_query.wait(30), "the query was never released"
        return read_user(user_id)

    service.db.get_user = held_query  # type: ignore[method-assign]
    results: list[User | None] = []

    def request() -> None:
        results.append(service.get_user(bob.id))

    threads = [threading.Thread(target=request) for _ in range(10)]
    try:
        for t in threads:
            t.start()
        assert query_started.wait(30)
        until(lambda: service.get_metrics()["coalesced"] == 9)
    finally:
        release_query.set()
        for t in threads:
            t.join(30)
    assert results == [bob] * 10
    assert service.db.queries == 1
    assert service.get_metrics()["coalesced"] == 9


def test_after_an_update_fresh_data_comes_from_the_db(service: UserService) -> None:
    carol = service.create_user("Carol", "carol@example.com")
    assert service.get_user(carol.id) == carol
    changed = User(carol.id, "Carol B.", "carol.b@example.com")
    assert service.update_user(changed) is True
    assert service.cached_user(carol.id) is None  # invalidated
    assert service.get_user(carol.id) == changed
    assert service.db.queries == 2


def test_a_deleted_user_is_gone_and_unknown_users_are_none(service: UserService) -> None:
    dave = service.create_user("Dave", "dave@example.com")
    assert service.get_user(dave.id) == dave
    assert service.delete_user(dave.id) is True
    assert service.get_user(dave.id) is None
    assert service.get_user(9999) is None
