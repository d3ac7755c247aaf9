"""The one way the ``*_callgrind.py`` benchmarks count instructions: a child interpreter
run under ``valgrind --tool=callgrind``, its total instruction count read from
valgrind's report. Each script runs its child twice (n and 2n operations) and divides the
difference, so start-up and imports cancel out."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile


def collected_instructions(child_code: str, *args: str, main_thread_only: bool = False) -> int:
    """Instructions callgrind counted for ``python -c child_code *args``, with
    ``PYTHONHASHSEED=0`` so that both runs of a pair share one dict layout.

    ``main_thread_only``: count the main thread's alone. A cache's background threads
    (the bus listener, its heartbeats) run for as long as the child does, not per
    operation: on a loaded machine, where valgrind runs slower, they add instructions
    that depend on the load (hundreds of thousands per ``get_many`` call)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                *(["--separate-threads=yes"] if main_thread_only else []),
                sys.executable,
                "-c",
                child_code,
                *args,
            ],
            env={**os.environ, "PYTHONHASHSEED": "0"},
            capture_output=True,
            text=True,
            check=True,
        )
        if main_thread_only:  # thread 1's own file: out-01
            with open(f"{out}-01") as main_thread:
                match = re.search(r"^totals: (\d+)", main_thread.read(), re.MULTILINE)
            assert match, f"no totals in {out}-01"
            return int(match.group(1))
    match = re.search(r"Collected : (\d+)", proc.stderr)
    assert match, proc.stderr[-2000:]
    return int(match.group(1))
