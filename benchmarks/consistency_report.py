"""Consistency under faults: several processes on one namespace while Redis fails under them.

    python benchmarks/consistency_report.py                    # standalone, 30 s, seed 0
    python benchmarks/consistency_report.py --cluster --seed 2
    python benchmarks/consistency_report.py --no-faults        # the control: must be all 0
    python benchmarks/consistency_report.py --redis-url redis://127.0.0.1:6379/0
    python benchmarks/consistency_report.py --json             # one JSON object

A thin command line over :mod:`stratacache.testing.chaos` (read its notes for what is
run and how reads are judged): a SQLite system of record, ``--workers`` processes doing
``get_or_set`` reads and cache-aside writes (DB update, then ``delete`` or ``set``), a
seeded fault injector (SIGSTOP pauses, kill + restart, ``CLIENT KILL TYPE normal`` and
``pubsub``), a quiet period, then the verdict. Starts its own redis-server (or a
3-master cluster) unless ``--redis-url`` is given; not pinned to a CPU: the workers and
Redis need both. ``--check`` exits with 1 when the goals of issue 11 are missed (a
final-state stale key, a read stale by more than 1 s, an exception raised to a caller).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from typing import Any

from stratacache import _l1
from stratacache.testing.chaos import ChaosConfig, run_chaos


def _option(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="workload length (30)")
    parser.add_argument("--quiet", type=float, default=5.0, help="final seconds without faults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--write-ratio", type=float, default=0.05)
    parser.add_argument("--set-share", type=float, default=0.5, help="writes made with set")
    parser.add_argument("--cluster", action="store_true", help="a 3-master Redis Cluster")
    parser.add_argument("--no-faults", action="store_true", help="the control run")
    parser.add_argument("--redis-url", help="an existing server: no kills, CLIENT PAUSE")
    parser.add_argument(
        "--cache-option",
        action="append",
        type=_option,
        default=[],
        metavar="NAME=VALUE",
        help="a Cache keyword argument for every instance (repeatable)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the DB and op logs")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal is missed")
    args = parser.parse_args(argv)
    config = ChaosConfig(
        seconds=args.seconds,
        quiet=min(args.quiet, args.seconds),
        seed=args.seed,
        workers=args.workers,
        keys=args.keys,
        write_ratio=args.write_ratio,
        set_share=args.set_share,
        faults=not args.no_faults,
        cluster=args.cluster,
        redis_url=args.redis_url,
        cache_options=dict(args.cache_option),
        keep_logs=args.keep_logs,
    )
    report = run_chaos(config)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(f"L1 implementation: {_l1.L1.__module__}")
        print(report.format())
        goals = report.consistent()
        if not args.no_faults:
            print(f"  goals (0 final-state stale, 0 stale within 1 s, 0 exceptions): "
                  f"{'met' if goals else 'MISSED'}")  # fmt: skip
    # The control: only the bus's delivery time can make a read lag without faults, so
    # nothing may lag 1 s (or the checker is unsound); within 50 ms, the 99.9 %.
    control_ok = report.stale["5s"] == 0 and report.consistent_within["50ms"] >= 0.999
    ok = report.consistent() and (not args.no_faults or control_ok)
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
