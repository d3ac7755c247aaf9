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


def collected_instructions(child_code: str, *args: str) -> int:
    """Instructions callgrind counted for ``python -c child_code *args``, with
    ``PYTHONHASHSEED=0`` so that both runs of a pair share one dict layout."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
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
    match = re.search(r"Collected : (\d+)", proc.stderr)
    assert match, proc.stderr[-2000:]
    return int(match.group(1))
