"""A Bloom filter in a forked child (gunicorn --preload, multiprocessing "fork"): the
parent's locks may be held at the fork and its retry worker does not exist there; the
child still adds, retries and checks, and the parent sees its adds (real Redis)."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import pytest

from stratacache import Cache

NS = "t-bloom-fork"


def _child(ids: Any, results: Any) -> None:
    # the parent held both locks when it forked: neither may hang here
    ids._pending.failed([b"retried-by-child"], 0.0)
    ids._ensure_worker()
    added = ids.add("from-child")
    end = time.monotonic() + 20
    while ids.stats().pending and time.monotonic() < end:
        time.sleep(0.01)  # the child's own worker sends what it had pending
    results.put((added, ids.might_contain("from-child"), ids.stats().pending == 0))
    ids._cache.close()


@pytest.mark.slow
def test_a_forked_child_adds_and_retries(redis_url: str) -> None:
    cache = Cache(redis_url, namespace=NS, redis_timeout=2.0, retry_backoff=0.01)
    ids = cache.bloom("ids", 1000, 0.01)
    ids.rebuild(["parent"], progress=False)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    try:
        with ids._worker_lock, ids._pending._lock:
            child = ctx.Process(target=_child, args=(ids, results), daemon=True)
            child.start()
        outcome = results.get(timeout=60)
        child.join(timeout=30)
        assert child.exitcode == 0
        assert outcome == (True, True, True)
        assert ids.might_contain_many(["from-child", "retried-by-child", "never"]) == [
            True,
            True,
            False,
        ]
    finally:
        cache.close()
