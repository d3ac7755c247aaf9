"""The Prometheus collector (issue 12): every name, type and label set of the metric
contract in the text format, values that move when the cache is used (and while Redis is
killed), a real HTTP scrape, the multi-process export with spawned workers, and
``health()`` behind a WSGI ``/healthz``."""

from __future__ import annotations

import gc
import json
import multiprocessing
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

import stratacache.prometheus as sp
from stratacache import AsyncCache, Cache, CacheStats, Health, InvalidationStats
from stratacache._health import judge
from stratacache._stats import BucketCounter, LatencyRecorder

from concurrency import until
from prom_workers import MP_NS, exporting_worker

DEADLINE = 20.0

# name -> (type, labels besides ``namespace``): the contract other tools build on
CONTRACT: dict[str, tuple[str, frozenset[str]]] = {
    "cache_invalidation_duration_seconds": ("histogram", frozenset({"method", "result"})),
    "cache_invalidation_failures_total": ("counter", frozenset({"error_type", "redis"})),
    "cache_invalidation_cascade_depth": ("histogram", frozenset({"trigger_type"})),
    "cache_invalidation_queue_size": ("gauge", frozenset()),
    "cache_invalidations_total": ("counter", frozenset({"type"})),
    "stratacache_hits_total": ("counter", frozenset({"tier"})),
    "stratacache_misses_total": ("counter", frozenset({"tier"})),
    "stratacache_loads_total": ("counter", frozenset()),
    "stratacache_coalesced_total": ("counter", frozenset()),
    "stratacache_lease_waits_total": ("counter", frozenset()),
    "stratacache_fills_refused_total": ("counter", frozenset()),
    "stratacache_bloom_rejected_total": ("counter", frozenset()),
    "stratacache_stale_served_total": ("counter", frozenset()),
    "stratacache_decode_errors_total": ("counter", frozenset()),
    "stratacache_redis_errors_total": ("counter", frozenset()),
    "stratacache_l1_entries": ("gauge", frozenset()),
    "stratacache_l1_evictions_total": ("counter", frozenset()),
    "stratacache_breaker_open": ("gauge", frozenset({"redis"})),
    "stratacache_breaker_openings_total": ("counter", frozenset({"redis"})),
    "stratacache_loader_timeouts_total": ("counter", frozenset({"kind"})),
    "stratacache_loader_background_loads": ("gauge", frozenset()),
    "stratacache_loader_rejected_total": ("counter", frozenset()),
    "stratacache_loader_breaker_open": ("gauge", frozenset()),
    "stratacache_loader_breaker_openings_total": ("counter", frozenset()),
    "stratacache_l2_latency_seconds": ("histogram", frozenset()),
    "stratacache_load_duration_seconds": ("histogram", frozenset()),
    "stratacache_bus_healthy": ("gauge", frozenset()),
    "stratacache_bus_messages_sent_total": ("counter", frozenset()),
    "stratacache_bus_messages_received_total": ("counter", frozenset()),
    "stratacache_bus_messages_dropped_total": ("counter", frozenset()),
    "stratacache_bus_messages_forged_total": ("counter", frozenset()),
    "stratacache_bus_flushes_total": ("counter", frozenset({"cause"})),
    "stratacache_bus_lag_seconds": ("histogram", frozenset()),
    "stratacache_bus_unhealthy_seconds_total": ("counter", frozenset()),
    "stratacache_bus_reconnects_total": ("counter", frozenset()),
    "stratacache_outbox_pending": ("gauge", frozenset()),
    "stratacache_outbox_applied_total": ("counter", frozenset()),
    "stratacache_dead_letters": ("gauge", frozenset()),
    "stratacache_epoch_bumps_total": ("counter", frozenset()),
}
SEED_DURATION_BUCKETS = ["0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "1.0", "2.0", "5.0"]
SEED_DEPTH_BUCKETS = ["1.0", "2.0", "3.0", "5.0", "10.0", "20.0", "50.0"]
LATENCY_BUCKETS = [
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0",
]  # fmt: skip


class Scrape:
    """One scrape in the text format, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            name = family.name + "_total" if family.type == "counter" else family.name
            self.types[name] = family.type
            for sample in family.samples:
                self.samples.append((sample.name, dict(sample.labels), sample.value))

    def value(self, name: str, **labels: str) -> float:
        """The one sample ``name`` with (at least) ``labels``."""
        found = [v for n, ls, v in self.samples if n == name and labels.items() <= ls.items()]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    def label_sets(self, metric: str) -> set[frozenset[str]]:
        """The label names of a metric's series (``le`` aside)."""
        names = {metric, f"{metric}_bucket", f"{metric}_sum", f"{metric}_count"}
        return {frozenset(ls) - {"le"} for n, ls, _ in self.samples if n in names}

    def buckets(self, metric: str, **labels: str) -> list[str]:
        """The ``le`` bounds of one histogram series."""
        return [
            ls["le"]
            for n, ls, _ in self.samples
            if n == f"{metric}_bucket" and labels.items() <= ls.items()
        ]


def scrape(registry: CollectorRegistry) -> Scrape:
    return Scrape(generate_latest(registry).decode())


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_every_metric_of_the_contract_moves_with_use_and_faults(
    redis_server_factory: Any, redis_url: str, registry: CollectorRegistry
) -> None:
    server = redis_server_factory()
    options: dict[str, Any] = {
        "redis_timeout": 0.1,
        "breaker_cooldown": 0.2,
        "loader_breaker_threshold": 5,
    }
    a = Cache(server.url, namespace="prom", failover=redis_url, **options)
    b = Cache(server.url, namespace="prom", **options)
    try:
        sp.register(a, registry)
        assert scrape(registry).value("stratacache_hits_total", tier="l1") == 0
        a.get("warm-up")  # the bus starts with the first call
        b.get("warm-up")
        until(lambda: a.stats().bus_state == "healthy", DEADLINE)
        until(lambda: b.stats().bus_state == "healthy", DEADLINE)

        assert a.get_or_set("user:1", lambda: {"name": "x"}) == {"name": "x"}  # misses, a load
        assert a.get("user:1") == {"name": "x"}  # an L1 hit
        a.set("posts:1", [1])
        a.add_dependency("posts:1", "user:1")
        a.invalidate("user:1")  # a cascade one level deep
        b.set("other", 1)  # a bus message that a hears: a lag sample
        until(lambda: a.stats().bus_messages_received > 0, DEADLINE)
        used = scrape(registry)

        # every name, type and label set of the contract (and nothing unknown)
        assert set(used.types) == set(CONTRACT)
        for name, (kind, labels) in CONTRACT.items():
            assert used.types[name] == kind, name
            assert used.label_sets(name) == {labels | {"namespace"}}, name
        assert all(ls["namespace"] == "prom" for _, ls, _ in used.samples)
        assert used.buckets("cache_invalidation_duration_seconds", method="key", result="ok") == [
            *SEED_DURATION_BUCKETS,
            "+Inf",
        ]
        assert used.buckets("cache_invalidation_cascade_depth", trigger_type="key") == [
            *SEED_DEPTH_BUCKETS,
            "+Inf",
        ]
        for name in (
            "stratacache_l2_latency_seconds",
            "stratacache_load_duration_seconds",
            "stratacache_bus_lag_seconds",
        ):
            assert used.buckets(name) == [*LATENCY_BUCKETS, "+Inf"], name
        assert {ls["redis"] for n, ls, _ in used.samples if n == "stratacache_breaker_open"} == {
            "primary",
            "failover",
        }

        # the values moved
        assert used.value("stratacache_hits_total", tier="l1") == 1
        assert used.value("stratacache_misses_total", tier="l1") >= 2
        assert used.value("stratacache_misses_total", tier="l2") >= 2
        assert used.value("stratacache_loads_total") == 1
        assert used.value("stratacache_load_duration_seconds_count") == 1
        assert used.value("stratacache_l2_latency_seconds_count") > 0
        assert used.value("stratacache_bus_lag_seconds_count") > 0
        assert used.value("stratacache_bus_messages_received_total") > 0
        assert used.value("stratacache_bus_healthy") == 1
        assert used.value("cache_invalidations_total", type="key") == 1
        assert used.value("cache_invalidations_total", type="cascaded") == 1
        assert (
            used.value("cache_invalidation_duration_seconds_count", method="key", result="ok") == 1
        )
        assert used.value("cache_invalidation_cascade_depth_count", trigger_type="key") >= 1
        assert used.value("stratacache_breaker_open", redis="primary") == 0
        assert used.value("stratacache_loader_breaker_open") == 0
        assert used.value("stratacache_loader_timeouts_total", kind="hard") == 0

        # Redis killed: the writes wait in the outbox, the failures are counted
        server.kill()
        a.delete("posts:1")
        a.invalidate("user:2")
        down = scrape(registry)
        assert down.value("stratacache_outbox_pending") >= 2
        assert down.value("cache_invalidation_queue_size") >= 2
        assert (
            down.value("cache_invalidation_failures_total", error_type="transient", redis="primary")
            >= 2
        )
        assert (
            down.value("cache_invalidation_duration_seconds_count", method="key", result="failed")
            == 1
        )
        assert down.value("stratacache_redis_errors_total") > 0
        health = a.health()
        assert health.status == "failing", health
        assert health.redis_reachable is False
        assert health.outbox_pending >= 2

        server.restart()
        until(lambda: a.stats().invalidation.outbox_pending == 0, DEADLINE)  # type: ignore[union-attr]
        up = scrape(registry)
        assert up.value("stratacache_outbox_pending") == 0
        assert up.value("stratacache_outbox_applied_total") >= 2
        assert up.value("cache_invalidations_total", type="retry") >= 1
        assert up.value("stratacache_bus_flushes_total", cause="subscribe") >= 1
        until(lambda: a.health().status == "ok", DEADLINE)
    finally:
        a.close()
        b.close()


def test_a_real_http_scrape(redis_url: str, registry: CollectorRegistry) -> None:
    cache = Cache(redis_url, namespace="http")
    try:
        sp.register(cache, registry)
        cache.set("k", 1)
        cache.get("k")
        httpd, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        try:
            port = httpd.server_address[1]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                assert r.headers["Content-Type"].startswith("text/plain")
                got = Scrape(r.read().decode())
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(10)
        assert set(got.types) == set(CONTRACT)
        assert got.value("stratacache_hits_total", namespace="http", tier="l1") == 1
    finally:
        cache.close()


def test_register_several_caches_and_errors(registry: CollectorRegistry) -> None:
    one = Cache(namespace="one")
    two = AsyncCache(namespace="two")  # stats() is sync on both halves
    sp.register(one, registry)
    sp.register(two, registry)
    with pytest.raises(ValueError, match="registered already"):
        sp.register(one, registry)
    with pytest.raises(ValueError, match="same series"):
        sp.register(Cache(namespace="one"), registry)
    with pytest.raises(TypeError):
        sp.register(object(), registry)  # type: ignore[arg-type]
    got = scrape(registry)
    assert {ls["namespace"] for _, ls, _ in got.samples} == {"one", "two"}
    assert "stratacache_bus_healthy" not in {n for n, _, _ in got.samples}  # no bus

    sp.unregister(two, registry)
    assert {ls["namespace"] for _, ls, _ in scrape(registry).samples} == {"one"}
    with pytest.raises(KeyError):
        sp.unregister(two, registry)
    sp.unregister(one, registry)
    assert scrape(registry).samples == []  # the collector left the registry
    sp.register(one, registry)  # and comes back
    del one
    gc.collect()
    assert scrape(registry).samples == []  # held weakly: a dropped cache leaves


def test_bucket_counts_are_cumulative_and_le_inclusive() -> None:
    counter = BucketCounter((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 3.0):
        counter.record(value)
    h = counter.snapshot()
    assert h.counts == (2, 4, 5)
    assert h.count == 5
    assert h.sum == pytest.approx(4.65)
    recorder = LatencyRecorder(size=2)
    for value in (0.001, 0.002, 0.003):
        recorder.record(value)
    summary = recorder.summary()
    assert summary.count == 3  # the window keeps 2, the histogram all 3
    assert summary.histogram.count == 3
    with pytest.raises(ValueError):
        BucketCounter((1.0, 0.5))


# -- several processes ---------------------------------------------------------------------


def test_multiprocess_export_sums_workers_and_keeps_exited_counters(
    redis_url: str, tmp_path: Any
) -> None:
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    hits = 25
    workers = [
        ctx.Process(target=exporting_worker, args=(redis_url, str(tmp_path), hits, ready, stop))
        for _ in range(3)
    ]
    for w in workers:
        w.start()
    try:
        pids = {ready.get(timeout=60) for _ in workers}
        assert pids == {w.pid for w in workers}
        registry = CollectorRegistry()
        sp.MultiProcessCollector(registry, path=str(tmp_path))

        def l1_hits() -> float:
            return scrape(registry).value("stratacache_hits_total", namespace=MP_NS, tier="l1")

        until(lambda: l1_hits() == 3 * hits, DEADLINE)
        got = scrape(registry)
        assert set(got.types) == set(CONTRACT)
        assert got.value("stratacache_l1_entries") == 3  # one key each, summed
        assert got.value("stratacache_l2_latency_seconds_count") >= 3

        # one worker exits (its last hit is in its final write only) and is marked dead
        stop.set()
        for w in workers:
            w.join(30)
            assert w.exitcode == 0
        sp.mark_process_dead(workers[0].pid, str(tmp_path))  # type: ignore[arg-type]
        after = scrape(registry)
        assert after.value("stratacache_hits_total", tier="l1") == 3 * (hits + 1)
        assert after.value("stratacache_l1_entries") == 2  # gauges: live workers only
    finally:
        stop.set()
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.kill()


def test_export_needs_a_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with pytest.raises(ValueError, match="PROMETHEUS_MULTIPROC_DIR"):
        sp.export_to_multiprocess_dir(Cache(namespace="nodir"))


# -- health --------------------------------------------------------------------------------


def test_health_rules() -> None:
    def health(**fields: Any) -> Health:
        inv = InvalidationStats(
            outbox_pending=fields.pop("pending", 0), dead_letters=fields.pop("dead", 0)
        )
        answers = fields.pop("answers", True)
        return judge(CacheStats(invalidation=inv, **fields), has_redis=True, redis_answers=answers)

    assert health().status == "ok"
    assert health().reasons == ()
    assert health(bus_state="healthy").ok
    assert health(dead=2).status == "degraded"
    assert health(pending=3).status == "degraded"  # Redis answers: the backlog drains
    assert health(bus_state="unhealthy").status == "degraded"
    assert health(bus_state="starting").ok
    assert health(failover_breaker_state="open").status == "degraded"
    down = health(breaker_state="open")
    assert (down.status, down.redis_reachable) == ("degraded", False)
    failing = health(answers=False, pending=1)
    assert failing.status == "failing"
    assert "not yet applied" in failing.reasons[0]
    assert json.loads(json.dumps(failing.to_dict()))["reasons"] == list(failing.reasons)
    local = judge(CacheStats(), has_redis=False, redis_answers=True)
    assert (local.status, local.redis_reachable) == ("ok", None)


def healthz_app(cache: Cache) -> Any:
    """The WSGI ``/healthz`` of docs/operations/metrics.md, verbatim."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        health = cache.health()
        code = "503 Service Unavailable" if health.status == "failing" else "200 OK"
        body = json.dumps(health.to_dict()).encode()
        start_response(code, [("Content-Type", "application/json")])
        return [body]

    return app


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def wsgi_server() -> Iterator[Any]:
    servers = []

    def serve(app: Any) -> str:
        httpd = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/healthz"

    yield serve
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_wsgi_healthz(redis_server_factory: Any, wsgi_server: Any) -> None:
    server = redis_server_factory()
    cache = Cache(server.url, namespace="healthz", redis_timeout=0.1, breaker_cooldown=0.2)
    try:
        url = wsgi_server(healthz_app(cache))
        assert cache.health().ok  # the bus starts with the first call: not a fault
        cache.get("k")
        until(lambda: cache.stats().bus_state == "healthy", DEADLINE)
        code, body = get(url)
        assert (code, body["status"], body["redis_reachable"]) == (200, "ok", True)
        server.kill()
        cache.delete("k")  # accepted, waits in the outbox
        code, body = get(url)
        assert (code, body["status"]) == (503, "failing")
        assert body["outbox_pending"] == 1
        server.restart()
        until(lambda: get(url)[0] == 200, DEADLINE)
    finally:
        cache.close()
