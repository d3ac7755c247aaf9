"""Pytest fixtures over real Redis processes.

Session-scoped servers keep a suite fast; the function-scoped ``redis_url`` and
``redis_cluster_url`` fixtures flush them before each test. Tests that stop, kill or
pause a server take their own from ``redis_server_factory`` so that other tests never see
the fault.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from ._servers import RedisClusterProcesses, RedisServerProcess


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServerProcess]:
    """A standalone redis-server shared by the session (do not pause or kill it)."""
    with RedisServerProcess() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcesses]:
    """A 3-master Redis Cluster shared by the session (do not pause or kill its nodes)."""
    with RedisClusterProcesses(3) as cluster:
        yield cluster


@pytest.fixture
def redis_url(redis_server: RedisServerProcess) -> str:
    """URL of the shared standalone server, flushed before the test."""
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterProcesses) -> str:
    """URL of the shared cluster, every master flushed before the test."""
    for node in redis_cluster.nodes:
        client = redis.Redis(host=node.host, port=node.port)
        try:
            client.flushall()
        finally:
            client.close()
    return redis_cluster.url


@pytest.fixture
def redis_cluster_client(redis_cluster_url: str) -> Iterator[RedisCluster]:
    """A ``redis.cluster.RedisCluster`` client on the flushed shared cluster."""
    client = RedisCluster.from_url(redis_cluster_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., RedisServerProcess]]:
    """Start private servers (for fault tests); every one is stopped after the test."""
    servers: list[RedisServerProcess] = []

    def start(**kwargs: object) -> RedisServerProcess:
        server = RedisServerProcess(**kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.close()
