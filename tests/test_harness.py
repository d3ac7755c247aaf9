"""The real-Redis test harness does what it says."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from stratacache.testing import RedisClusterProcesses, RedisServerProcess


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_standalone_serves_and_has_no_persistence(redis_url: str, redis_server) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
        assert client.connection_pool.connection_kwargs["port"] == redis_server.port
    finally:
        client.close()


def test_redis_url_fixture_flushes_between_tests(redis_url: str) -> None:
    # test_standalone_serves_and_has_no_persistence wrote "k" to the same server
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
    finally:
        client.close()


@pytest.mark.cluster
def test_cluster_is_ok_and_serves_keys_on_all_three_masters(
    redis_cluster: RedisClusterProcesses, redis_cluster_client: RedisCluster
) -> None:
    info = redis_cluster.cluster_info()
    assert info["cluster_state"] == "ok"
    assert info["cluster_known_nodes"] == "3"
    assert info["cluster_size"] == "3"

    # write until every master holds at least one key, then read them all back
    for i in range(200):
        redis_cluster_client.set(f"key-{i}", i)
    per_node = []
    for node in redis_cluster.nodes:
        direct = redis.Redis(host=node.host, port=node.port)
        try:
            per_node.append(direct.dbsize())
        finally:
            direct.close()
    assert all(n > 0 for n in per_node), per_node
    assert sum(per_node) == 200
    assert [int(redis_cluster_client.get(f"key-{i}")) for i in range(200)] == list(range(200))


def test_pause_freezes_the_server_and_resume_thaws_it(redis_server_factory) -> None:
    server = redis_server_factory()
    client = redis.Redis(
        host=server.host, port=server.port, socket_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    try:
        assert client.ping()
        server.pause()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        assert _alive(server.pid)
        server.resume()
        fresh = redis.Redis(host=server.host, port=server.port, socket_timeout=1)
        try:
            assert fresh.ping()
        finally:
            fresh.close()
    finally:
        client.close()


def test_kill_crashes_the_server_and_restart_serves_on_the_same_port(redis_server_factory) -> None:
    server = redis_server_factory()
    port, pid = server.port, server.pid
    client = redis.Redis(host=server.host, port=port, socket_timeout=1, retry=Retry(NoBackoff(), 0))
    try:
        client.set("k", "v")
        server.kill()
        assert not _alive(pid)
        with pytest.raises(redis.ConnectionError):
            client.ping()
        server.restart()
        assert server.port == port
        assert server.pid != pid
        assert client.ping()  # redis-py reconnects to the same address
        assert client.get("k") is None  # no persistence: the crash lost the data
    finally:
        client.close()


def test_restart_of_a_cluster_node_rejoins_with_its_slots() -> None:
    with RedisClusterProcesses(3) as cluster:
        node = cluster.nodes[1]
        port = node.port
        node.kill()
        node.restart()
        assert node.port == port
        cluster.wait_ok(timeout=20)
        assert cluster.cluster_info(1)["cluster_state"] == "ok"


def test_servers_die_with_the_test_process() -> None:
    # A child Python starts a server and is then SIGKILLed: no finalizer runs, but
    # PR_SET_PDEATHSIG must take the server down with it.
    code = (
        "import sys, time\n"
        "from stratacache.testing import RedisServerProcess\n"
        "s = RedisServerProcess().start()\n"
        "print(s.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        server_pid = int(child.stdout.readline())
        assert _alive(server_pid)
        child.kill()
        child.wait()
        deadline = time.monotonic() + 5
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _alive(server_pid)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_free_port_is_bindable() -> None:
    from stratacache.testing import free_port

    port = free_port(with_bus=True)
    assert port < 55536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_server_refuses_unknown_binary() -> None:
    from stratacache.testing import RedisServerError

    with pytest.raises(RedisServerError):
        RedisServerProcess(executable="/nonexistent/redis-server").start()
