"""Worker processes of ``test_prometheus.py`` (importable by spawned interpreters)."""

from __future__ import annotations

from typing import Any

MP_NS = "prom-mp"


def exporting_worker(url: str, directory: str, hits: int, ready: Any, stop: Any) -> None:
    """A pre-fork server's worker: a cache exporting to the multiprocess directory,
    ``hits`` L1 hits, then one more after ``stop`` (only the final write at exit has it)."""
    import os

    import stratacache.prometheus
    from stratacache import Cache

    cache = Cache(url, namespace=MP_NS, bus=False)
    stratacache.prometheus.export_to_multiprocess_dir(cache, directory=directory, interval=0.05)
    key = f"k{os.getpid()}"
    cache.set(key, 1)
    for _ in range(hits):
        cache.get(key)
    ready.put(os.getpid())
    stop.wait(60)
    cache.get(key)
    cache.close()
