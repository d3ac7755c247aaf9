"""Spawned processes for ``tests/test_key_rotation_processes.py`` (importable by name)."""

from __future__ import annotations

from typing import Any

from stratacache import Cache, Codec

ROTATION_NS = "rotation"


def _cache(url: str, cluster: bool, secrets: list[bytes]) -> Cache:
    # recovery_grace=0: a fresh instance serves L2 at once (the grace is tested elsewhere)
    return Cache(
        url,
        cluster=cluster,
        namespace=ROTATION_NS,
        redis_timeout=2.0,
        recovery_grace=0,
        codec=Codec(secret=secrets),
    )


def rotation_worker(
    url: str,
    cluster: bool,
    secrets: list[bytes],
    write: list[str],
    read: list[str],
    results: Any,
) -> None:
    """Write ``write`` (value: the key), then read ``read`` through a loader; report the
    counters that show what verified (L2 hits) and what did not (decode errors, loads)."""
    cache = _cache(url, cluster, secrets)
    try:
        for key in write:
            cache.set(key, key, ttl=300)
        wrong = [key for key in read if cache.get_or_set(key, lambda k=key: k) != key]
        s = cache.stats()
        results.put(
            {
                "wrong": wrong,
                "l2_hits": s.l2_hits,
                "loads": s.loads,
                "decode_errors": s.decode_errors,
                "forged": s.bus_messages_forged,
            }
        )
    finally:
        cache.close()
