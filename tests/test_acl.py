"""The least-privilege ACL (``stratacache.acl_rules``, ``stratacache acl``): a cache runs
its whole path as a user created with that line, on real Redis; a user of another
namespace can neither read, write nor publish into it; ``check_permissions`` names what
a too-narrow user lacks."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import redis
import redis.cluster

import stratacache
from stratacache import Cache, RedisPermissionError, _bloom, _lock_scripts, _scripts
from stratacache._acl import CLUSTER_COMMANDS, SCRIPT_COMMANDS
from stratacache._keys import KeySpace
from stratacache.testing import RedisClusterProcesses, RedisServerProcess

NS = "aclns"
OTHER = "otherns"
SCRIPT = Path(sys.executable).with_name("stratacache")


def poll(done: Callable[[], Any], what: str, deadline: float = 20.0) -> Any:
    end = time.monotonic() + deadline
    while not (result := done()):
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)
    return result


def create_user(admin: redis.Redis, line: str) -> None:
    assert admin.execute_command(*shlex.split(line)) in (b"OK", "OK", True)


@pytest.fixture
def server(redis_server_factory: Callable[..., RedisServerProcess]) -> RedisServerProcess:
    return redis_server_factory()


@pytest.fixture
def admin(server: RedisServerProcess) -> Iterator[redis.Redis]:
    client = redis.Redis(host=server.host, port=server.port)
    yield client
    client.close()


def url_as(server: RedisServerProcess, user: str, password: str) -> str:
    return f"redis://{user}:{password}@{server.host}:{server.port}/0"


def test_script_commands_are_all_granted() -> None:
    """Every command a Lua script calls is in the allow-list (Redis checks them too)."""
    called = set()
    for module in (_scripts, _lock_scripts, _bloom):
        for value in vars(module).values():
            if isinstance(value, str):
                called.update(m.lower() for m in re.findall(r"redis\.p?call\('([A-Za-z]+)'", value))
    assert called
    assert called <= set(SCRIPT_COMMANDS)


def test_rules_shape() -> None:
    line = stratacache.acl_rules(NS, user="app", password="s3cret")
    assert line.startswith("ACL SETUSER app reset on >s3cret ~aclns:* &aclns:v1:bus -@all ")
    assert "+@all" not in line
    assert "+spublish" not in line
    cluster_line = stratacache.acl_rules(NS, user="app", password="s3cret", cluster=True)
    for name in CLUSTER_COMMANDS:
        assert f"+{name}" in cluster_line.split()
    # every key of the namespace is under the pattern
    keys = KeySpace(NS)
    for key in (
        keys.data_key("k"),
        keys.lease_key("k"),
        keys.tag_key("t"),
        keys.lock_key("l"),
        keys.meta_key("audit"),
        keys.instance_index_key(),
        keys.instance_key("x"),
    ):
        assert key.startswith(NS + ":")
    # a password redis-cli cannot take bare is given as its SHA-256
    hashed = stratacache.acl_rules(NS, user="app", password='a "b" c')
    assert " #" in hashed and '"' not in hashed
    with pytest.raises(ValueError):
        stratacache.acl_rules(NS, user="two words", password="p")
    with pytest.raises(ValueError):
        stratacache.acl_rules("bad:ns", user="app", password="p")


def test_whole_path_as_restricted_user(server: RedisServerProcess, admin: redis.Redis) -> None:
    create_user(admin, stratacache.acl_rules(NS, user="app", password="pw1"))
    url = url_as(server, "app", "pw1")
    a = Cache(url, namespace=NS, bus_batch_window=0, on_write_error="raise")
    b = Cache(url, namespace=NS, bus_batch_window=0, on_write_error="raise")
    try:
        a.check_permissions()
        loads = []
        assert a.get_or_set("k", lambda: loads.append(1) or "v1") == "v1"
        assert b.get("k") == "v1"  # from L2, then in b's L1
        a.set("k", "v2", tags=["t"])
        poll(lambda: b._l1.get("k", None) is None, "the bus invalidation of k in b's L1")
        assert b.get("k") == "v2"
        a.set("other", 1)
        assert b.get_many(["k", "other", "absent"]) == {"k": "v2", "other": 1}
        assert a.invalidate_tag("t") >= 0
        poll(lambda: b.get("k") is None, "b to see k invalidated")
        a.set("p:1", 1)
        a.set("p:2", 2)
        assert a.invalidate_pattern("p:*") == 2
        poll(lambda: b.get("p:1") is None, "b to see p:1 invalidated")
        a.set("parent", 1)
        a.set("child", 2)
        a.add_dependency("child", "parent")
        a.invalidate_related("parent")
        poll(lambda: b.get("child") is None, "b to see child invalidated")
        a.delete("other")
        poll(lambda: b.get("other") is None, "b to see other invalidated")
        with a.lock("job", ttl=5) as lock:
            assert lock.token
            a.set("fenced", 1, fence=lock.token)
        assert b.get("fenced") == 1
        poll(lambda: len(stratacache.instances(url, NS)) == 2, "both instance records")
        # Bloom filters: every script (SETBIT, GETBIT, state) as the restricted user
        ids = a.bloom("ids", 1000, 0.01, local=True)
        ids.rebuild(["1", "2"], progress=False)
        assert ids.add("3") is True
        assert ids.refresh() is True
        theirs = b.bloom("ids", 1000, 0.01)
        assert theirs.might_contain_many(["1", "3", "absent"]) == [True, True, False]
        assert ids.stats().pending == 0 and theirs.stats().unknown == 0
        ids.rebuild(["1"], progress=False)  # the switch deletes the old generation
        assert theirs.might_contain("1") is True
        assert a.stats().bus_messages_dropped == 0
        assert a.stats().errors == 0
        assert not a.dead_letters()
        assert not b.dead_letters()
    finally:
        a.close()
        b.close()


def test_other_namespace_user_is_refused(server: RedisServerProcess, admin: redis.Redis) -> None:
    create_user(admin, stratacache.acl_rules(NS, user="app", password="pw1"))
    create_user(admin, stratacache.acl_rules(OTHER, user="intruder", password="pw2"))
    owner = Cache(url_as(server, "app", "pw1"), namespace=NS, bus_batch_window=0)
    intruder = redis.Redis.from_url(url_as(server, "intruder", "pw2"))
    keys = KeySpace(NS)
    try:
        owner.set("k", "v")
        with pytest.raises(redis.exceptions.NoPermissionError):
            intruder.get(keys.data_key("k"))
        with pytest.raises(redis.exceptions.NoPermissionError):
            intruder.set(keys.data_key("k"), b"poison")
        with pytest.raises(redis.exceptions.NoPermissionError):
            intruder.delete(keys.data_key("k"))
        with pytest.raises(redis.exceptions.NoPermissionError):
            intruder.publish(keys.channel(), b"flush")
        with pytest.raises(redis.exceptions.NoPermissionError):
            intruder.eval("return redis.call('GET', KEYS[1])", 1, keys.data_key("k"))
        pubsub = intruder.pubsub()
        pubsub.subscribe(keys.channel())
        with pytest.raises(redis.exceptions.NoPermissionError):
            poll(lambda: pubsub.get_message(timeout=0.5), "the refused SUBSCRIBE")
        pubsub.close()
        # a cache of this namespace built with that user fails clearly at the check
        wrong = Cache(url_as(server, "intruder", "pw2"), namespace=NS)
        try:
            with pytest.raises(RedisPermissionError) as info:
                wrong.check_permissions()
            assert any("SET" in line for line in info.value.missing)
            assert any("SUBSCRIBE" in line for line in info.value.missing)
            assert "stratacache acl" in str(info.value)
        finally:
            wrong.close()
        assert owner.get("k") == "v"
    finally:
        intruder.close()
        owner.close()


def test_missing_command_is_named(server: RedisServerProcess, admin: redis.Redis) -> None:
    """A user lacking one command (here one only a script calls) is told which."""
    line = stratacache.acl_rules(NS, user="narrow", password="pw3").replace(" +zmscore", "")
    create_user(admin, line)
    cache = Cache(url_as(server, "narrow", "pw3"), namespace=NS)
    try:
        with pytest.raises(RedisPermissionError) as info:
            cache.check_permissions()
        assert len(info.value.missing) == 1
        assert "ZMSCORE" in info.value.missing[0]
    finally:
        cache.close()
    # the probe left no key behind
    assert admin.keys("*") == []


def test_cli_prints_the_line(server: RedisServerProcess, admin: redis.Redis) -> None:
    proc = subprocess.run(
        [str(SCRIPT), "acl", "--namespace", NS, "--user", "cli", "--password", "pw4"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line == stratacache.acl_rules(NS, user="cli", password="pw4")
    create_user(admin, line)
    cache = Cache(url_as(server, "cli", "pw4"), namespace=NS)
    try:
        cache.check_permissions()
    finally:
        cache.close()
    proc = subprocess.run(
        [str(SCRIPT), "acl", "--namespace", NS, "--user", "cli", "--password", "p", "--cluster"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "+spublish" in proc.stdout


def test_cluster_as_restricted_user(redis_cluster: RedisClusterProcesses) -> None:
    """The cluster line: slot map, sharded pub/sub, scripts and locks on every master."""
    line = stratacache.acl_rules(NS, user="capp", password="cpw", cluster=True)
    intruder_line = stratacache.acl_rules(OTHER, user="cintruder", password="cpw2", cluster=True)
    admins = [redis.Redis(host=n.host, port=n.port) for n in redis_cluster.nodes]
    for admin in admins:
        admin.flushall()
        create_user(admin, line)
        create_user(admin, intruder_line)
    host, port = redis_cluster.startup_nodes[0]
    url = f"redis://capp:cpw@{host}:{port}/0"
    a = Cache(url, namespace=NS, cluster=True, bus_batch_window=0, on_write_error="raise")
    b = Cache(url, namespace=NS, cluster=True, bus_batch_window=0, on_write_error="raise")
    intruder = redis.cluster.RedisCluster.from_url(f"redis://cintruder:cpw2@{host}:{port}/0")
    try:
        a.check_permissions()
        for i in range(20):  # keys on every master
            a.set(f"k{i}", i, tags=["t"])
        assert b.get_many([f"k{i}" for i in range(20)]) == {f"k{i}": i for i in range(20)}
        a.set("k0", "new")
        poll(lambda: b.get("k0") == "new", "b to see k0 replaced (bus + L2)")
        a.invalidate_tag("t")
        poll(lambda: b.get("k1") is None, "b to see the tag invalidated")
        a.set("p:1", 1)
        assert a.invalidate_pattern("p:*") == 1
        with a.lock("job", ttl=5) as lock:
            a.set("fenced", 1, fence=lock.token)
        poll(lambda: len(stratacache.instances(url, NS, cluster=True)) == 2, "instance records")
        ids = a.bloom("ids", 1000, 0.01, shards=6)
        ids.rebuild([str(i) for i in range(50)], progress=False)
        assert ids.add_many(["x", "y"]) == 2
        theirs = b.bloom("ids", 1000, 0.01, shards=6)
        assert all(theirs.might_contain_many([str(i) for i in range(50)] + ["x", "y"]))
        assert theirs.stats().unknown == 0 and ids.stats().pending == 0
        assert not a.dead_letters() and a.stats().errors == 0
        with pytest.raises(redis.exceptions.NoPermissionError):
            intruder.get(KeySpace(NS).data_key("k0"))
        with pytest.raises(redis.exceptions.NoPermissionError):
            intruder.spublish(KeySpace(NS).channel(), b"flush")
    finally:
        a.close()
        b.close()
        intruder.close()
        for admin in admins:
            admin.acl_deluser("capp", "cintruder")
            admin.close()


def test_first_refusal_is_logged_once(
    server: RedisServerProcess, admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Without check_permissions, a refused read is still a miss, but not a silent one."""
    line = " ".join(
        word
        for word in stratacache.acl_rules(NS, user="noget", password="pw5").split()
        if word != "+get"
    )
    create_user(admin, line)
    admin.set(KeySpace(NS).data_key("k"), b"whatever")
    cache = Cache(url_as(server, "noget", "pw5"), namespace=NS)
    try:
        with caplog.at_level("ERROR", logger="stratacache.redis"):
            assert cache.get("k") is None
            assert cache.get("k2") is None
        told = [r for r in caplog.records if r.name == "stratacache.redis"]
        assert len(told) == 1
        assert "check_permissions" in told[0].getMessage()
        assert "get" in told[0].getMessage()
    finally:
        cache.close()


def test_a_bloom_filter_without_setbit(server: RedisServerProcess, admin: redis.Redis) -> None:
    """Checks fail open (never a false "absent"); an add is refused loudly, not retried."""
    admin.set(KeySpace(NS).bloom_keys("ids", 0)[0], b"a||||v1,m=9586,k=7,s=1")  # built, empty
    line = stratacache.acl_rules(NS, user="nobits", password="pw6").replace(" +setbit", "")
    create_user(admin, line.replace(" +getbit", ""))
    cache = Cache(url_as(server, "nobits", "pw6"), namespace=NS)
    try:
        ids = cache.bloom("ids", 1000, 0.01)
        assert ids.params.signature == "v1,m=9586,k=7,s=1"
        assert ids.might_contain("anything") is True
        assert ids.stats().unknown == 1
        with pytest.raises(stratacache.RedisCommandError):
            ids.add("x")
        assert ids.stats().pending == 0
        with pytest.raises(RedisPermissionError) as info:
            cache.check_permissions()
        assert any("SETBIT" in m for m in info.value.missing)
    finally:
        cache.close()
