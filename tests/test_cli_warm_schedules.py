"""``stratacache warm`` and ``stratacache schedules``, run for real in a subprocess against
real Redis (standalone and cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stratacache import Cache

from concurrency import FakeClock

NS = "cliwarm"
SCRIPT = Path(sys.executable).with_name("stratacache")

SOURCE = """
def items():
    for i in range(120):
        yield f"item:{i}", {"i": i}

def keys():
    return [f"row:{i}" for i in range(30)]

def load(keys):
    return {key: key.upper() for key in keys}

def broken(keys):
    raise RuntimeError("database down")
"""


def run(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{args} exited {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture
def source(tmp_path: Path) -> Path:
    (tmp_path / "warm_source.py").write_text(SOURCE)
    return tmp_path


def test_warm_from_a_function(target: tuple[str, bool], source: Path) -> None:
    url, cluster = target
    common = [url, "-n", NS, *(["--cluster"] if cluster else [])]
    out = run(source, "warm", *common, "warm_source:items", "--batch-size", "50", "--tag", "t")
    assert "120 written, 0 skipped, 0 failed" in out.stdout
    report = json.loads(
        run(
            source,
            "warm",
            *common,
            "warm_source:keys",
            "--loader-many",
            "warm_source:load",
            "--json",
            "--no-progress",
        ).stdout
    )
    assert report["written"] == 30 and report["failed"] == 0
    cache = Cache(url, cluster=cluster, namespace=NS)
    try:
        assert cache.get("item:7") == {"i": 7}
        assert cache.get("row:3") == "ROW:3"
        assert len(cache.keys_for_tag("t")) == 120
    finally:
        cache.close()


def test_warm_failures_and_usage_errors(redis_url: str, source: Path) -> None:
    common = [redis_url, "-n", NS]
    failed = run(
        source,
        "warm",
        *common,
        "warm_source:keys",
        "--loader-many",
        "warm_source:broken",
        "--resume-key",
        "job",
        check=False,
    )
    assert failed.returncode == 1
    assert "database down" in failed.stderr and "--resume-key" in failed.stderr
    missing = run(source, "warm", *common, "nowhere:items", check=False)
    assert missing.returncode == 1 and "cannot import" in missing.stderr
    usage = run(source, "warm", *common, "no-colon", check=False)
    assert usage.returncode == 2


def test_schedules_lists_what_instances_registered(target: tuple[str, bool], source: Path) -> None:
    url, cluster = target
    common = [url, "-n", NS, *(["--cluster"] if cluster else [])]
    clock = FakeClock(1_800_000_010.0)
    cache = Cache(url, cluster=cluster, namespace=NS, clock=clock, schedule_poll=3600.0)
    try:
        cache.schedule_invalidation("*/5 * * * *", name="prices", tag="prices")
        cache.schedule_invalidation("0 3 * * *", name="nightly", pattern="report:*")
        clock.advance(300)
        cache.run_schedules()
        rows = {
            r["name"]: r for r in json.loads(run(source, "schedules", *common, "--json").stdout)
        }
        assert set(rows) == {"prices", "nightly"}
        assert rows["prices"]["cron"] == "*/5 * * * *"
        assert rows["prices"]["invalidates"] == "tag 'prices'"
        assert rows["prices"]["last_tick"] == 1_800_000_300.0
        assert rows["prices"]["last_fired_by"].startswith(cache._instance)
        assert rows["nightly"]["last_tick"] is None and rows["nightly"]["next_fire"] is not None
        table = run(source, "schedules", *common).stdout
        assert "prices" in table and "report:*" in table
    finally:
        cache.close()
