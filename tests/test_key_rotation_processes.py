"""Key rotation across real processes (spawned interpreters, real Redis, standalone and
cluster): entries and bus messages signed by a key still listed are accepted, and after
the old key is retired only the entries it signed are misses (counted, then reloaded).
"""

from __future__ import annotations

import multiprocessing
import secrets as random_bytes
import time
from typing import Any

from stratacache import MISSING, Cache, Codec

from rotation_workers import ROTATION_NS, rotation_worker

K1 = b"retiring secret, 32 bytes long.."
K2 = b"new secret, 32 bytes long......."
N = 20
DEADLINE = 30.0  # a spawned interpreter's start-up on a loaded machine


def run(url: str, cluster: bool, secrets: list[bytes], write: list[str], read: list[str]) -> Any:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=rotation_worker, args=(url, cluster, secrets, write, read, results))
    proc.start()
    try:
        return results.get(timeout=DEADLINE)
    finally:
        proc.join(DEADLINE)
        assert proc.exitcode == 0


def test_a_fleet_rotates_without_a_miss_spike(target: tuple[str, bool]) -> None:
    url, cluster = target
    run_id = random_bytes.token_hex(4)
    old = [f"{run_id}-e{i}" for i in range(N)]  # written by A under K1
    new = [f"{run_id}-f{i}" for i in range(N)]  # written by A after its restart
    shared = f"{run_id}-shared"
    # this process is an instance already rotated to [K2, K1], holding `shared` in L1
    watcher = Cache(
        url,
        cluster=cluster,
        namespace=ROTATION_NS,
        redis_timeout=2.0,
        recovery_grace=0,
        codec=Codec(secret=[K2, K1]),
    )
    try:
        watcher.set(shared, "before")
        deadline = time.monotonic() + DEADLINE
        while watcher.stats().bus_state != "healthy":
            assert time.monotonic() < deadline, "bus never healthy"
            watcher.get(shared)
            time.sleep(0.01)
        assert watcher.get(shared) == "before"
        assert watcher.l1.peek(shared) == "before"

        # A, still on [K1] only: writes the old entries and `shared` (a K1-signed message)
        a = run(url, cluster, [K1], [*old, shared], [])
        assert a["wrong"] == [] and a["decode_errors"] == 0
        while watcher.l1.peek(shared, MISSING) is not MISSING:
            assert time.monotonic() < deadline + DEADLINE, "K1-signed invalidation not heard"
            time.sleep(0.01)
        assert watcher.get(shared) == shared
        assert watcher.stats().bus_messages_forged == 0

        # B on [K2, K1] reads everything A wrote under K1: all L2 hits
        b = run(url, cluster, [K2, K1], [], old)
        assert b == {"wrong": [], "l2_hits": N, "loads": 0, "decode_errors": 0, "forged": 0}

        # A restarts on [K2, K1]: writes new entries (K2) and rewrites half the old ones;
        # what K1 signed still reads
        rewritten = old[: N // 2]
        a2 = run(url, cluster, [K2, K1], new + rewritten, old)
        assert a2["wrong"] == [] and a2["loads"] == 0 and a2["decode_errors"] == 0

        # K1 retired: only the entries it signed and nobody rewrote are misses
        c = run(url, cluster, [K2], [], old + new)
        retired_only = N - len(rewritten)
        assert c["wrong"] == []
        assert c["decode_errors"] == retired_only
        assert c["loads"] == retired_only
        assert c["l2_hits"] == len(old) + len(new) - retired_only
        # ...and those were reloaded and rewritten under K2: no second miss
        again = run(url, cluster, [K2], [], old + new)
        assert again["decode_errors"] == 0 and again["loads"] == 0
    finally:
        watcher.close()
