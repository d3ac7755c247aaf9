"""The operations side over TLS: ``stratacache.instances`` and the ``stratacache`` command with a
``rediss://`` URL (the CA given as ``ssl_ca_certs``), standalone and cluster; a URL
trusting another CA is a one-line error, not a traceback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cli_runner import run_cli
from stratacache import Cache, instances
from stratacache.testing import RedisClusterProcesses, RedisServerProcess, TLSCertificates

NS = "tlscli"


@pytest.fixture(scope="module")
def certs() -> Iterator[TLSCertificates]:
    made = TLSCertificates()
    yield made
    made.close()


@pytest.fixture(scope="module", params=["standalone", "cluster"])
def server(request: pytest.FixtureRequest, certs: TLSCertificates) -> Iterator[tuple[Any, bool]]:
    """A TLS-only server or cluster, and whether it is a cluster."""
    if request.param == "standalone":
        with RedisServerProcess(tls=certs) as standalone:
            yield standalone, False
    else:
        with RedisClusterProcesses(tls=certs) as cluster:
            yield cluster, True


def test_instances_and_the_cli_over_tls(server: tuple[Any, bool]) -> None:
    target, cluster = server
    flag = ["--cluster"] if cluster else []
    cache = Cache(target.url, cluster=cluster, namespace=NS, redis_timeout=2.0, instance="tls-app")
    try:
        cache.set("k", {"v": 1})
        deadline = time.monotonic() + 30.0
        while not instances(target.url, NS, cluster=cluster):  # written once the bus runs
            assert time.monotonic() < deadline, "no heartbeat record"
            time.sleep(0.02)
        assert [r.instance for r in instances(target.url, NS, cluster=cluster)] == ["tls-app"]
        got = run_cli("get", target.url, "-n", NS, *flag, "k", "--json")
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["value"] == {"v": 1}
        listed = run_cli("instances", target.url, "-n", NS, *flag, "--json")
        assert listed.returncode == 0, listed.stderr
        assert "tls-app" in listed.stdout
    finally:
        cache.close()


def test_the_cli_refuses_a_server_its_ca_does_not_trust(server: tuple[Any, bool]) -> None:
    target, cluster = server
    other = TLSCertificates()
    try:
        url = target.url.replace(str(target.tls.ca_cert), str(other.ca_cert))
        flag = ["--cluster"] if cluster else []
        out = run_cli("get", url, "-n", NS, *flag, "k")
        assert out.returncode != 0
        assert "CERTIFICATE_VERIFY_FAILED" in out.stderr
        assert "Traceback" not in out.stderr, out.stderr
    finally:
        other.close()
