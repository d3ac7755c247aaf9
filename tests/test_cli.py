"""The ``stratacache`` command against real Redis (standalone and cluster): output,
``--json`` and exit codes. One-shot commands run in the test process (``cli_runner``);
the installed console script, ``python -m stratacache`` and the streaming commands run
for real in subprocesses. Streaming commands run bounded (``--count``) and say on stderr
when they listen, so nothing waits on a timer."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from cli_runner import run_cli
from stratacache import Cache, instances
from stratacache._keys import KeySpace
from stratacache.testing._servers import free_port

NS = "clins"
DEADLINE = 30.0
SCRIPT = Path(sys.executable).with_name("stratacache")


def run(
    *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The command with ``args``; fails the test on a non-zero exit if ``check``."""
    proc = run_cli(*args, input=input)
    if check and proc.returncode != 0:
        pytest.fail(f"{args} exited {proc.returncode}: {proc.stderr}")
    return proc


def common(url: str, cluster: bool) -> list[str]:
    return [url, "-n", NS, *(["--cluster"] if cluster else [])]


def poll(done: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while not (result := done()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)
    return result


@pytest.fixture
def app(target: tuple[str, bool]) -> Iterator[tuple[str, bool, list[Cache]]]:
    """Two application caches on the namespace, each with a record and a tagged entry."""
    url, cluster = target
    caches = [Cache(url, cluster=cluster, namespace=NS, instance=f"app-{i}") for i in range(2)]
    try:
        caches[0].set("user:1", {"name": "ann"}, tags=["users"])
        caches[0].set("user:2", {"name": "bob"}, tags=["users"])
        caches[1].get("user:1")
        poll(lambda: len(instances(url, NS, cluster=cluster)) == 2, "two records")
        yield url, cluster, caches
    finally:
        for cache in caches:
            cache.close()


def test_script_and_module_are_installed() -> None:
    assert SCRIPT.exists(), "pip install -e . did not install the console script"
    script = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert script.returncode == 0 and "instances" in script.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "stratacache", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "invalidate-all" in proc.stdout


def test_errors_are_one_line_and_non_zero(redis_url: str, redis_cluster_url: str) -> None:
    cases = [
        (["instances", "foo://nowhere"], "bad Redis URL"),
        (["instances", f"redis://127.0.0.1:{free_port()}"], "cannot reach Redis"),
        (["stats", redis_url, "-n", "no-such-namespace"], "unknown namespace 'no-such-namespace'"),
        (["get", redis_url, "-n", "bad:name", "k"], "namespace 'bad:name'"),
        (["instances", redis_cluster_url, "-n", NS], "pass --cluster"),
    ]
    for args, message in cases:
        proc = run(*args, check=False)
        assert proc.returncode == 1, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("stratacache: error:"), proc.stderr
        assert message in lines[0], (args, lines)
        assert proc.stdout == ""
    assert run("bogus-command", check=False).returncode == 2  # a usage error


def test_url_from_the_environment(redis_url: str) -> None:
    with Cache(redis_url, namespace=NS) as cache:
        cache.set("k", 1)
        proc = subprocess.run(
            [str(SCRIPT), "get", "-n", NS, "k", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "STRATACACHE_URL": redis_url},
        )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["value"] == 1


def test_instances_and_stats(app: tuple[str, bool, list[Cache]]) -> None:
    url, cluster, _ = app
    records = json.loads(run("instances", *common(url, cluster), "--json").stdout)
    assert [r["instance"] for r in records] == ["app-0", "app-1"]
    assert {r["pid"] for r in records} == {os.getpid()}
    assert all(r["breaker_state"] == "closed" for r in records)
    table = run("instances", *common(url, cluster)).stdout
    for record in records:
        assert record["id"] in table
    assert "hit ratio" in table and "dead letters" in table

    watched = run(
        "instances", *common(url, cluster), "--watch", "--count", "2", "--interval", "0.05"
    )
    assert records[0]["id"] in watched.stdout

    def summed() -> dict[str, Any] | None:
        total = json.loads(run("stats", *common(url, cluster), "--json").stdout)
        # each instance's record is rewritten on its own heartbeat: wait until app-1's
        # read and app-0's sent messages have both reached the records
        ready = total["instances"] == 2 and total["l1_misses"] >= 1
        return total if ready and total["bus_messages_sent"] >= 1 else None

    total = poll(summed, "app-1's read and app-0's bus messages in the stats")
    assert total["outbox_size"] == 0 and total["dead_letters"] == 0
    assert "instances" in run("stats", *common(url, cluster)).stdout


def test_get_shows_the_envelope(app: tuple[str, bool, list[Cache]]) -> None:
    url, cluster, _ = app
    entry = json.loads(run("get", *common(url, cluster), "user:1", "--json").stdout)
    assert entry["value"] == {"name": "ann"}
    assert entry["tags"] == ["users"] and entry["stamps"] == entry["current_stamps"]
    assert entry["valid"] is True and entry["decoded"] is True
    assert 0 < entry["ttl_left"] <= 300 and entry["created_at"] < entry["expires_at"]
    assert entry["redis_key"] == KeySpace(NS).data_key("user:1")
    text = run("get", *common(url, cluster), "user:1").stdout
    assert "'ann'" in text and "ttl left" in text
    missing = run("get", *common(url, cluster), "nobody", check=False)
    assert missing.returncode == 1 and "no entry for key 'nobody'" in missing.stderr


def test_invalidations_reach_every_instance(app: tuple[str, bool, list[Cache]]) -> None:
    url, cluster, caches = app
    reader = caches[1]
    reader.get("user:1")
    reader.get("user:2")
    assert "user:1" in reader.l1 and "user:2" in reader.l1

    out = run("invalidate", *common(url, cluster), "user:1").stdout
    assert "1 Redis key(s) removed" in out
    poll(lambda: "user:1" not in reader.l1, "the bus to drop user:1 from the other L1")
    assert reader.get("user:1") is None

    run("invalidate-tag", *common(url, cluster), "users")
    poll(lambda: "user:2" not in reader.l1, "the tag invalidation on the bus")
    assert reader.get("user:2") is None

    caches[0].set("page:a", 1)
    caches[0].set("page:b", 2)
    assert "2 Redis key(s)" in run("invalidate-pattern", *common(url, cluster), "page:*").stdout
    assert caches[0].get("page:a") is None

    caches[0].set("kept", 1)
    refused = run("invalidate-all", *common(url, cluster), input="n\n", check=False)
    assert refused.returncode == 1
    assert caches[0].get("kept") == 1
    run("invalidate-all", *common(url, cluster), input="y\n")
    poll(lambda: caches[1].get("kept") is None, "the epoch bump")
    caches[0].set("kept", 2)
    run("invalidate-all", *common(url, cluster), "--yes")
    assert caches[0].get("kept") is None

    rows = [
        json.loads(line)
        for line in run("audit", *common(url, cluster), "--json").stdout.splitlines()
    ]
    cli_rows = [r for r in rows if r["instance"] == "stratacache-cli"]
    assert [r["action"] for r in cli_rows] == ["key", "tag", "pattern", "epoch", "epoch"]
    assert cli_rows[0]["target"] == "user:1" and cli_rows[0]["reason"] == "stratacache CLI"


def start(*args: str, ready: str) -> subprocess.Popen[str]:
    """The console script running in the background, once it printed ``ready`` on stderr
    (it says so when its subscription or stream read is in place)."""
    proc = subprocess.Popen(
        [str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()  # returns "" if the command fails and exits
    if ready not in line:
        proc.kill()
        _, err = proc.communicate(timeout=60)
        pytest.fail(f"{args}: expected {ready!r} on stderr, got {line + err!r}")
    return proc


def finish(proc: subprocess.Popen[str]) -> str:
    """The output of a bounded (``--count``) command, which must exit 0 by itself."""
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the bounded command did not exit")
    assert proc.returncode == 0, err
    return out


def test_bus_tail_decodes_messages(app: tuple[str, bool, list[Cache]]) -> None:
    url, cluster, caches = app
    proc = start("bus", "tail", *common(url, cluster), "--json", "--count", "2", ready="listening")
    caches[0].delete("user:1")
    caches[0].invalidate_tag("users")
    lines = [json.loads(line) for line in finish(proc).splitlines()]
    source = caches[0]._bus.state.source.hex()  # type: ignore[union-attr]
    assert [(m["action"], m["args"], m["source"]) for m in lines] == [
        ("invalidate_keys", ["user:1"], source),
        ("invalidate_tags", ["users"], source),
    ]
    assert lines[1]["seq"] > lines[0]["seq"] and all(m["lag"] >= 0 for m in lines)

    proc = start("bus", "tail", *common(url, cluster), "--count", "1", ready="listening")
    caches[1].delete("user:2")
    assert "invalidate_keys 'user:2'" in finish(proc)


def test_bus_tail_shows_signed_messages(app: tuple[str, bool, list[Cache]]) -> None:
    """The command has no secret: a signed message is shown after its tag, unverified."""
    url, cluster, _ = app
    signed = Cache(url, cluster=cluster, namespace=NS, bus_secret=b"s" * 32, instance_ttl=0)
    try:
        signed.get("user:1")  # starts its bus
        proc = start("bus", "tail", *common(url, cluster), "--count", "1", ready="listening")
        signed.delete("user:3")
        assert "invalidate_keys 'user:3'" in finish(proc)
    finally:
        signed.close()


def test_audit_follow(app: tuple[str, bool, list[Cache]]) -> None:
    url, cluster, caches = app
    caches[0].invalidate("user:1", reason="before")
    proc = start(
        "audit", *common(url, cluster), "--json", "--follow", "--count", "1", ready="following"
    )
    caches[1].invalidate("user:2", reason="while following")
    rows = [json.loads(line) for line in finish(proc).splitlines()]
    assert [(r["target"], r["reason"], r["instance"]) for r in rows] == [
        ("user:1", "before", "app-0"),
        ("user:2", "while following", "app-1"),
    ]


def test_dead_letters_reports_what_instances_publish(app: tuple[str, bool, list[Cache]]) -> None:
    url, cluster, _ = app
    report = json.loads(run("dead-letters", *common(url, cluster), "--json").stdout)
    assert [(r["dead_letters"], r["recent"]) for r in report] == [(0, []), (0, [])]
    assert (
        "no dead letters in the 2 live instance(s)"
        in run("dead-letters", *common(url, cluster)).stdout
    )
    assert "memory" in run("dead-letters", "--help").stdout


def test_metrics(redis_url: str) -> None:
    with Cache(redis_url, namespace=NS) as cache:
        cache.set("k", 1)
        port = free_port()
        if importlib.util.find_spec("stratacache.prometheus") is None:
            proc = run("metrics", redis_url, "-n", NS, "--port", str(port), check=False)
            assert proc.returncode == 1
            assert "no Prometheus collector" in proc.stderr
            return
        server = start("metrics", redis_url, "-n", NS, "--port", str(port), ready="serving")
        try:

            def scrape() -> str | None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as reply:
                        body: str = reply.read().decode()
                except OSError:
                    return None
                return body if f'namespace="{NS}"' in body else None

            assert "# TYPE" in poll(scrape, "the metrics endpoint")
        finally:
            server.terminate()
            server.communicate(timeout=DEADLINE)
        assert server.returncode == 0


def test_unknown_namespace_is_an_error_for_writes_too(redis_url: str) -> None:
    proc = run("invalidate", redis_url, "-n", "typo", "k", check=False)
    assert proc.returncode == 1 and "unknown namespace 'typo'" in proc.stderr
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0  # nothing written, nothing published to a typo
    finally:
        client.close()
