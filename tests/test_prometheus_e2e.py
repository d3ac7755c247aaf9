"""End to end: a real Prometheus server scrapes the exporter of a running cache.

Prometheus (Debian's ``prometheus`` package, installed by ``make setup``) listens on a free
loopback port, keeps its TSDB in a temporary directory, scrapes and evaluates
``deploy/prometheus/rules.yml`` every second. The test reads its HTTP API, never the
exporter directly: the metrics move when the cache is used, the recording rule
``cache_invalidations_per_second`` has a value, and ``StratacacheDeadLetters`` goes
pending when Redis refuses an invalidation.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import redis

from stratacache import Cache
from stratacache._keys import KeySpace
from stratacache.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
NS = "e2e"
DEADLINE = 60.0  # Prometheus starts, scrapes and evaluates once a second: ample on a busy box

pytestmark = pytest.mark.slow

# The collector is written on another branch (issue 12); until it is merged this test has
# nothing to scrape. Only its absence skips: a collector that fails to import fails.
if importlib.util.find_spec("stratacache.prometheus") is None:
    pytest.skip("stratacache.prometheus is not there yet", allow_module_level=True)


class PrometheusServer:
    """A ``prometheus`` process on 127.0.0.1, with its config and TSDB in ``directory``."""

    def __init__(self, executable: str, directory: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.directory = directory
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "stratacache", "static_configs": [{"targets": targets}]}
            ],
        }
        # JSON is YAML
        (directory / "prometheus.yml").write_text(json.dumps(config, indent=1))
        self.log_path = directory / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process: Optional[subprocess.Popen[bytes]] = subprocess.Popen(
            [
                executable,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def listening_addresses(self) -> set[str]:
        """The local addresses with a listening TCP socket on the server's port (Linux's
        ``/proc/net/tcp*``; hex as the kernel writes them)."""
        addresses = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as f:
                for line in list(f)[1:]:
                    local, state = line.split()[1], line.split()[3]
                    address, port = local.rsplit(":", 1)
                    if state == "0A" and int(port, 16) == self.port:  # 0A: LISTEN
                        addresses.add(address)
        return addresses

    def log(self) -> str:
        """What the server printed so far (for failure messages)."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        """Poll ``/-/ready`` until the server answers (fails if it exits or times out)."""
        deadline = time.monotonic() + DEADLINE
        ready = f"{self.url}/-/ready"
        while True:
            assert self.process is not None
            assert self.process.poll() is None, f"prometheus exited:\n{self.log()}"
            with contextlib.suppress(OSError), urllib.request.urlopen(ready, timeout=1) as reply:
                if reply.status == 200:
                    return
            assert time.monotonic() < deadline, f"prometheus not ready:\n{self.log()}"
            time.sleep(0.05)

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a successful answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[str, float]:
        """An instant query: ``{labels as text: value}`` of each series of the result."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return {
            json.dumps(item["metric"], sort_keys=True): float(item["value"][1])
            for item in data["result"]
        }

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; wait for the process. Idempotent."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._log.close()


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], PrometheusServer]]:
    """Start a Prometheus server scraping ``targets``; always stopped at the end."""
    executable = shutil.which("prometheus")
    if executable is None:
        pytest.fail(
            "prometheus not found: `make setup` (or `make prometheus`) installs Debian's "
            "prometheus package"
        )
    servers: list[PrometheusServer] = []

    def start(targets: list[str]) -> PrometheusServer:
        server = PrometheusServer(executable, tmp_path, targets)
        servers.append(server)
        server.wait_ready()
        # loopback only: 127.0.0.1 as /proc/net/tcp writes it (little-endian hex)
        if Path("/proc/net/tcp").exists():
            assert server.listening_addresses() == {"0100007F"}, server.listening_addresses()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def exporter(redis_url: str) -> Iterator[tuple[Cache, str]]:
    """A cache on the test Redis, and the ``host:port`` of its metrics endpoint."""
    from prometheus_client import CollectorRegistry, start_http_server

    from stratacache import prometheus as stratacache_prometheus

    cache = Cache(redis_url, namespace=NS)
    registry = CollectorRegistry()
    stratacache_prometheus.register(cache, registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield cache, f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        cache.close()


def poll(check: Callable[[], Any], what: str, prometheus: PrometheusServer) -> Any:
    """Call ``check`` until it returns something true; fail after the deadline."""
    deadline = time.monotonic() + DEADLINE
    while True:
        with contextlib.suppress(urllib.error.URLError):
            result = check()
            if result:
                return result
        assert time.monotonic() < deadline, f"{what}: not seen in {DEADLINE} s\n{prometheus.log()}"
        time.sleep(0.2)


def value(prometheus: PrometheusServer, expr: str) -> float:
    """The single value of an instant query (0.0 when it has no result)."""
    result = prometheus.query(expr)
    assert len(result) <= 1, result
    return next(iter(result.values()), 0.0)


def test_prometheus_sees_the_cache_move_and_a_dead_letter_alert(
    exporter: tuple[Cache, str],
    start_prometheus: Callable[[list[str]], PrometheusServer],
    redis_url: str,
) -> None:
    cache, target = exporter
    prometheus = start_prometheus([target])
    up = f'up{{job="stratacache", instance="{target}"}}'
    poll(lambda: value(prometheus, up) == 1, "the exporter scraped", prometheus)

    # the rules file loaded: every group of rules.yml is evaluated
    groups = {g["name"] for g in prometheus.api("rules")["groups"]}
    assert {"stratacache-recording", "stratacache", "cache-invalidation-critical"} <= groups

    hits = f'stratacache_hits_total{{namespace="{NS}", tier="l1"}}'
    before = value(prometheus, hits)
    cache.set("k", 1)
    for _ in range(50):
        assert cache.get("k") == 1
    poll(lambda: value(prometheus, hits) >= before + 50, "50 L1 hits", prometheus)

    # an invalidation counted, then its rate through the recording rule (two samples apart)
    invalidations = f'cache_invalidations_total{{namespace="{NS}", type="key"}}'
    cache.invalidate("k")
    poll(lambda: value(prometheus, invalidations) >= 1, "an invalidation", prometheus)
    for i in range(5):
        cache.invalidate(f"k{i}")
    per_second = f'cache_invalidations_per_second{{namespace="{NS}", type="key"}}'
    poll(lambda: value(prometheus, per_second) > 0, "the recording rule", prometheus)

    # a dependents set of the wrong type: Redis refuses the invalidation with WRONGTYPE
    admin = redis.Redis.from_url(redis_url)
    try:
        cache.set("doomed", 1)
        admin.set(KeySpace(NS).dependents_key("doomed"), "not a set")
        cache.invalidate("doomed")
    finally:
        admin.close()
    assert len(cache.dead_letters()) == 1
    dead = f'stratacache_dead_letters{{namespace="{NS}"}}'
    poll(lambda: value(prometheus, dead) == 1, "the dead letter", prometheus)

    def dead_letter_alert() -> Optional[dict[str, Any]]:
        for alert in prometheus.api("alerts")["alerts"]:
            labels = alert["labels"]
            if labels["alertname"] == "StratacacheDeadLetters" and labels["namespace"] == NS:
                return dict(alert)
        return None

    alert = poll(dead_letter_alert, "StratacacheDeadLetters", prometheus)
    assert alert["state"] == "pending", alert  # `for: 1m`: a minute before it fires
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["runbook_url"] == "docs/runbook.md#stratacachedeadletters"
    assert "Redis refused 1 invalidation(s) of e2e" in alert["annotations"]["description"]
