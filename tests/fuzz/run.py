"""Run one fuzz target under atheris (libFuzzer): ``python tests/fuzz/run.py TARGET [flags]``.

``TARGET`` is a name from :data:`fuzz.targets.TARGETS`; the flags are libFuzzer's, e.g.
``-max_total_time=60``. The committed corpus ``tests/fuzz/corpus/TARGET`` seeds the run;
new interesting inputs go to a scratch folder (not committed), crashes to
``crash-*`` files in the current directory. ``make fuzz`` runs every target.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris  # type: ignore[import-not-found,import-untyped,unused-ignore]

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

with atheris.instrument_imports(include=["stratacache", "fuzz"]):
    from fuzz.targets import TARGETS


def main() -> None:
    """Pick the target from argv[1], then hand the rest to libFuzzer."""
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: run.py {{{','.join(TARGETS)}}} [libFuzzer flags]")
    name = sys.argv[1]
    scratch = tempfile.mkdtemp(prefix=f"stratacache-fuzz-{name}-")
    corpus = str(HERE / "corpus" / name)
    flags = [a for a in sys.argv[2:] if a.startswith("-")]
    atheris.Setup([sys.argv[0], *flags, scratch, corpus], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
