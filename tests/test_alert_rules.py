"""The alert rules, their unit tests and the Grafana dashboard, checked by promtool.

``deploy/prometheus/rules.yml`` must pass ``promtool check rules`` and the unit tests of
``rules_test.yml``; every panel query of ``deploy/grafana/stratacache.json`` must parse
(written as recording rules and checked by promtool); every metric either file names must
be one the collector exports (the contract below) or a recording rule; every alert has
its runbook section. promtool comes from Debian's ``prometheus`` package, which
``make setup`` installs: a missing promtool fails these tests, it does not skip them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "stratacache.json"
RUNBOOK = ROOT / "docs" / "runbook.md"

# The metric names contract of issue 12, shared with the collector (stratacache.prometheus).
COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
CONTRACT = {
    "cache_invalidation_duration_seconds": HISTOGRAM,
    "cache_invalidation_failures_total": COUNTER,
    "cache_invalidation_cascade_depth": HISTOGRAM,
    "cache_invalidation_queue_size": GAUGE,
    "cache_invalidations_total": COUNTER,
    "stratacache_hits_total": COUNTER,
    "stratacache_misses_total": COUNTER,
    "stratacache_loads_total": COUNTER,
    "stratacache_coalesced_total": COUNTER,
    "stratacache_lease_waits_total": COUNTER,
    "stratacache_fills_refused_total": COUNTER,
    "stratacache_bloom_rejected_total": COUNTER,
    "stratacache_stale_served_total": COUNTER,
    "stratacache_decode_errors_total": COUNTER,
    "stratacache_redis_errors_total": COUNTER,
    "stratacache_l1_entries": GAUGE,
    "stratacache_l1_evictions_total": COUNTER,
    "stratacache_breaker_open": GAUGE,
    "stratacache_breaker_openings_total": COUNTER,
    "stratacache_loader_timeouts_total": COUNTER,
    "stratacache_loader_background_loads": GAUGE,
    "stratacache_loader_rejected_total": COUNTER,
    "stratacache_loader_breaker_open": GAUGE,
    "stratacache_loader_breaker_openings_total": COUNTER,
    "stratacache_l2_latency_seconds": HISTOGRAM,
    "stratacache_load_duration_seconds": HISTOGRAM,
    "stratacache_bus_healthy": GAUGE,
    "stratacache_bus_messages_sent_total": COUNTER,
    "stratacache_bus_messages_received_total": COUNTER,
    "stratacache_bus_messages_dropped_total": COUNTER,
    "stratacache_bus_messages_forged_total": COUNTER,
    "stratacache_bus_flushes_total": COUNTER,
    "stratacache_bus_lag_seconds": HISTOGRAM,
    "stratacache_bus_unhealthy_seconds_total": COUNTER,
    "stratacache_bus_reconnects_total": COUNTER,
    "stratacache_outbox_pending": GAUGE,
    "stratacache_outbox_applied_total": COUNTER,
    "stratacache_dead_letters": GAUGE,
    "stratacache_epoch_bumps_total": COUNTER,
}

SEED_ALERTS = {
    "CacheInvalidationRateCritical",
    "CacheInvalidationCascadeTooDeep",
    "CacheInvalidationFailureRateHigh",
    "InvalidationQueueBacklog",
}
OWN_ALERTS = {
    "StratacacheBusUnhealthy",
    "StratacacheBreakerOpen",
    "StratacacheDeadLetters",
    "StratacacheOutboxGrowing",
    "StratacacheHitRatioCollapsing",
    "StratacacheServingStale",
}

# Grafana's variables, replaced as Grafana would before the query reaches Prometheus.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
TEMPLATE_VALUES = {"namespace": "shop"}


def series_names() -> dict[str, str]:
    """Every series name the collector exports, with the metric it belongs to."""
    names: dict[str, str] = {}
    for metric, kind in CONTRACT.items():
        if kind == HISTOGRAM:
            for suffix in ("_bucket", "_sum", "_count"):
                names[metric + suffix] = metric
        else:
            names[metric] = metric
    return names


# -- reading PromQL without a parser: enough to name the metrics and the functions ----------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "by", "without", "on"}
_KEYWORDS |= {"ignoring", "group_left", "group_right"}
_RATE_OF = re.compile(r"\b(?:rate|irate|increase)\s*\(\s*([A-Za-z_:][\w:]*)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions and keywords left out)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call is None and name not in _KEYWORDS:
            names.add(name)
    return names


def test_metric_names_reads_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (namespace, le) (rate(x_bucket{a=~"b|c"}[5m])))'
        " / on (namespace) group_left y:rec offset 1h > 1e3 and z unless count(w) > bool 0.5"
    )
    assert metric_names(expr) == {"x_bucket", "y:rec", "z", "w"}


def check_promql(expr: str, where: str, known: set[str]) -> None:
    """The names ``expr`` selects exist, and it applies rate() to counters only and
    histogram_quantile() to rates by ``le`` (the seed's two mistakes)."""
    unknown = metric_names(expr) - known
    assert not unknown, f"{where}: {sorted(unknown)} not in the metric names contract: {expr}"
    for name in _RATE_OF.findall(expr):
        assert name.endswith(("_total", "_bucket", "_sum", "_count")), (
            f"{where}: rate()/increase() of {name}, which is not a counter: {expr}"
        )
    if "histogram_quantile" in expr:
        assert re.search(r"\bby\s*\([^)]*\ble\b", expr), f"{where}: quantile without le: {expr}"
        assert "_bucket" in expr and re.search(r"\brate\s*\(", expr), f"{where}: {expr}"


# -- promtool --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    """The promtool executable; missing, the test fails (``make setup`` installs it)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: `make setup` (or `make prometheus`) installs Debian's "
            "prometheus package, or install Prometheus >= 2.37 yourself"
        )
    return path


def run_promtool(promtool: str, *args: str) -> str:
    """Run promtool; fail the test with its output unless it succeeds."""
    done = subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_rules_pass_promtool_check(promtool: str) -> None:
    output = run_promtool(promtool, "check", "rules", str(RULES))
    assert "SUCCESS" in output


def test_rules_pass_their_unit_tests(promtool: str) -> None:
    output = run_promtool(promtool, "test", "rules", str(RULES_TEST))
    assert "SUCCESS" in output


# -- the rules -------------------------------------------------------------------------------


def load_rules() -> list[dict[str, Any]]:
    """Every rule of rules.yml, all groups."""
    with RULES.open() as f:
        groups = yaml.safe_load(f)["groups"]
    return [rule for group in groups for rule in group["rules"]]


def recorded_names() -> set[str]:
    """The names the recording rules define."""
    return {rule["record"] for rule in load_rules() if "record" in rule}


def alerts() -> dict[str, dict[str, Any]]:
    """The alerting rules by name."""
    return {rule["alert"]: rule for rule in load_rules() if "alert" in rule}


def test_the_seed_and_the_cache_alerts_are_all_there() -> None:
    assert set(alerts()) == SEED_ALERTS | OWN_ALERTS


def test_cache_invalidations_per_second_is_the_rate_of_the_counter() -> None:
    [rule] = [r for r in load_rules() if r.get("record") == "cache_invalidations_per_second"]
    assert " ".join(rule["expr"].split()) == (
        "sum by (namespace, type) (rate(cache_invalidations_total[1m]))"
    )
    assert "cache_invalidations_per_second" not in CONTRACT  # the collector does not export it


def test_rules_use_contract_metrics_and_correct_functions() -> None:
    known = set(series_names()) | recorded_names()
    for rule in load_rules():
        check_promql(rule["expr"], rule.get("record") or rule["alert"], known)


def test_every_alert_has_annotations_a_severity_and_a_runbook_section() -> None:
    runbook = RUNBOOK.read_text()
    headings = set(re.findall(r"^## (\S+)$", runbook, flags=re.MULTILINE))
    for name, rule in alerts().items():
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), name
        assert annotations.get("runbook_url") == f"docs/runbook.md#{name.lower()}", name
        assert name in headings, f"docs/runbook.md has no section '## {name}'"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule.get("for"), f"{name} fires on a single evaluation"


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    with RULES_TEST.open() as f:
        tests = yaml.safe_load(f)["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for group in tests:
        for case in group.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert fired == set(alerts()), f"never seen firing: {set(alerts()) - fired}"
    assert quiet == set(alerts()), f"never seen quiet: {set(alerts()) - quiet}"


# -- the dashboard ---------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    """The Grafana dashboard JSON."""
    with DASHBOARD.open() as f:
        dashboard: dict[str, Any] = json.load(f)
    return dashboard


def panel_queries(node: Any, title: str = "") -> Iterator[tuple[str, str]]:
    """``(panel title, expr)`` of every query in the dashboard, rows' panels included."""
    if isinstance(node, dict):
        title = node.get("title", title)
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield title, value
            elif key != "templating":
                yield from panel_queries(value, title)
    elif isinstance(node, list):
        for item in node:
            yield from panel_queries(item, title)


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute(expr: str) -> str:
    """``expr`` as Prometheus receives it: Grafana's variables replaced."""
    values = {**GRAFANA_BUILTINS, **TEMPLATE_VALUES}

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        assert name in values, f"unknown dashboard variable ${name} in {expr}"
        return values[name]

    return _VARIABLE.sub(value, expr)


def test_dashboard_variables() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert set(variables) == {"datasource", "namespace"}
    namespace = variables["namespace"]
    assert namespace["type"] == "query"
    definition = namespace["definition"]
    match = re.fullmatch(r"label_values\((\w+), namespace\)", definition)
    assert match and match.group(1) in CONTRACT, definition
    queries = list(panel_queries(load_dashboard()))
    assert queries
    for title, expr in queries:
        assert 'namespace=~"$namespace"' in expr, f"{title}: not filtered by namespace: {expr}"


def test_dashboard_queries_pass_promtool_as_recording_rules(promtool: str, tmp_path: Path) -> None:
    queries = list(panel_queries(load_dashboard()))
    rules = [
        {"record": f"dashboard:query_{i}", "expr": substitute(expr)}
        for i, (_title, expr) in enumerate(queries)
    ]
    # JSON is YAML: promtool reads it as a rules file
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=1))
    output = run_promtool(promtool, "check", "rules", str(path))
    assert f"SUCCESS: {len(rules)} rules found" in output


def test_dashboard_uses_contract_metrics_and_correct_functions() -> None:
    known = set(series_names()) | recorded_names()
    for title, expr in panel_queries(load_dashboard()):
        check_promql(substitute(expr), f"panel {title!r}", known)


def test_dashboard_shows_every_metric_of_the_contract() -> None:
    names = series_names()
    shown = {
        names.get(name, name)
        for _title, expr in panel_queries(load_dashboard())
        for name in metric_names(substitute(expr))
    }
    # the invalidation rate panel reads the recording rule made of the counter
    if "cache_invalidations_per_second" in shown:
        shown.add("cache_invalidations_total")
    assert set(CONTRACT) - shown == set()


def test_dashboard_has_the_panels_the_issue_asks_for() -> None:
    panels = [p for p in load_dashboard()["panels"] if p["type"] != "row"]
    titles = {p["title"] for p in panels}
    for title in (
        "Hit ratio per tier",
        "L2 latency",
        "Load duration",
        "Invalidation rate by type",
        "Cascade depth",
        "Bus state",
        "Bus lag",
        "Circuit breakers",
        "Outbox and queue",
        "Dead letters",
    ):
        assert title in titles
    heatmaps = [p for p in panels if p["type"] == "heatmap"]
    assert len(heatmaps) >= 4
    for panel in heatmaps:
        [target] = panel["targets"]
        assert target["format"] == "heatmap" and "by (le)" in target["expr"], panel["title"]
    ids = [p["id"] for p in load_dashboard()["panels"]]
    assert len(ids) == len(set(ids))
