"""TLS: the tiered path and the invalidation bus against ``redis-server`` serving TLS only
(no plain port), standalone and cluster, with a CA and a server certificate made by
openssl at test time; the certificate is verified, and a client trusting another CA is
refused with a clear error. Cache runs the generated twin.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.exceptions import RedisClusterException

from stratacache import MISSING, AsyncCache
from stratacache._primitives import AsyncRedis, AsyncRedisCluster, async_sleep
from stratacache.testing import RedisClusterProcesses, RedisServerProcess, TLSCertificates

from concurrency import async_until

NS = "tls"
DEADLINE = 5.0
SYNC = not inspect.iscoroutinefunction(AsyncCache.get)  # True in the generated twin


@pytest.fixture(scope="module")
def certs() -> Iterator[TLSCertificates]:
    """The CA and server certificate the TLS servers of this module serve."""
    made = TLSCertificates()
    yield made
    made.close()


@pytest.fixture(scope="module")
def other_ca() -> Iterator[TLSCertificates]:
    """An unrelated CA: a client trusting only it must refuse the servers."""
    made = TLSCertificates()
    yield made
    made.close()


@pytest.fixture(scope="module")
def tls_standalone(certs: TLSCertificates) -> Iterator[RedisServerProcess]:
    with RedisServerProcess(tls=certs) as server:
        yield server


@pytest.fixture(scope="module")
def tls_cluster(certs: TLSCertificates) -> Iterator[RedisClusterProcesses]:
    with RedisClusterProcesses(tls=certs) as cluster:
        yield cluster


@pytest.fixture(params=["standalone", "cluster"])
def tls_target(request: pytest.FixtureRequest) -> tuple[Any, bool]:
    """The TLS server (standalone or cluster) and whether it is a cluster."""
    if request.param == "standalone":
        return request.getfixturevalue("tls_standalone"), False
    return request.getfixturevalue("tls_cluster"), True


def make(url_or_client: Any, cluster: bool) -> AsyncCache:
    return AsyncCache(
        url_or_client,
        cluster=cluster,
        namespace=NS,
        redis_timeout=2.0,  # behaviour, not the CI machine's scheduling
        recovery_grace=0,
    )


async def until_in_l1(cache: AsyncCache, key: str, value: Any) -> None:
    """Read ``key`` until ``cache`` keeps it in L1: it does while its bus is healthy, and a
    starved heartbeat on a loaded machine makes the bus (and so L1) skip a moment."""
    deadline = time.monotonic() + DEADLINE
    while cache.l1.peek(key, MISSING) != value:
        assert time.monotonic() < deadline, f"{key!r} never stayed in L1"
        assert await cache.get(key) == value
        await async_sleep(0.01)


def client_for(server: Any, cluster: bool, certs: TLSCertificates) -> Any:
    """A TLS client built by hand (not from a URL) that verifies the server."""
    node = server.nodes[0] if cluster else server
    cls: Any = AsyncRedisCluster if cluster else AsyncRedis
    return cls(host=node.host, port=node.port, socket_timeout=2.0, **certs.client_kwargs())


@pytest.mark.parametrize("via", ["url", "client"])
async def test_tiered_path_and_bus_over_verified_tls(
    tls_target: tuple[Any, bool], certs: TLSCertificates, via: str
) -> None:
    server, cluster = tls_target
    assert server.url.startswith("rediss://") and "ssl_cert_reqs=required" in server.url
    clients: list[Any] = []
    if via == "url":
        a, b = make(server.url, cluster), make(server.url, cluster)
    else:
        clients = [client_for(server, cluster, certs) for _ in range(2)]
        a, b = make(clients[0], cluster), make(clients[1], cluster)
    try:
        await a.delete("k")
        calls = []

        async def load() -> str:
            calls.append(1)
            return "loaded"

        assert await b.get_or_set("k", load) == "loaded"  # loaded, written to L2 over TLS
        assert await a.get("k") == "loaded"  # read back from L2 by the other instance
        await until_in_l1(b, "k", "loaded")
        await a.set("k", "new")
        # the bus (pub/sub, sharded on a cluster) runs over TLS too: b's L1 entry goes
        await async_until(lambda: b.l1.peek("k", MISSING) is MISSING, DEADLINE)
        assert await b.get("k") == "new"
        assert calls == [1]
        for cache in (a, b):
            health = cache.health()
            assert health.status == "ok", health.reasons
            assert health.bus == "healthy"
    finally:
        await a.close()
        await b.close()
        for client in clients:
            await client.aclose()


async def test_a_client_trusting_another_ca_is_refused_clearly(
    tls_target: tuple[Any, bool],
    certs: TLSCertificates,
    other_ca: TLSCertificates,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, cluster = tls_target
    url = server.url.replace(str(certs.ca_cert), str(other_ca.ca_cert))
    assert str(other_ca.ca_cert) in url
    caplog.set_level(logging.WARNING, logger="stratacache")
    if SYNC and cluster:
        # redis-py's sync RedisCluster learns the slots in its constructor: the cache
        # cannot be built, and the error names the refused certificate
        with pytest.raises(RedisClusterException, match="CERTIFICATE_VERIFY_FAILED"):
            make(url, cluster)
        return
    cache = make(url, cluster)
    try:
        # reads never raise: the loader answers while Redis cannot be reached...
        assert await cache.get_or_set("k", lambda: "from the loader") == "from the loader"
        # ...but the cause is named, in the log and in health(), which fails readiness
        warnings = [r.getMessage() for r in caplog.records if r.name == "stratacache.redis"]
        assert any(
            "TLS handshake with Redis failed" in m and "CERTIFICATE_VERIFY_FAILED" in m
            for m in warnings
        ), warnings
        health = cache.health()
        assert health.status == "failing"
        assert any(
            r.startswith("TLS handshake with Redis failed") and "CERTIFICATE_VERIFY_FAILED" in r
            for r in health.reasons
        ), health.reasons
        assert health.redis_reachable is False
    finally:
        await cache.close()
