"""The ``stratacache`` command line (``pip install 'stratacache[cli]'``).

``stratacache --help`` lists the commands; ``python -m stratacache`` is the same program.
The commands live in ``stratacache._cli`` (click and rich); this module only reports a
missing extra as one clear line instead of a traceback.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    """Run the ``stratacache`` command line."""
    try:
        from ._cli import cli
    except ImportError as exc:
        if exc.name not in ("click", "rich") and not (exc.name or "").startswith("rich."):
            raise
        print(
            f"stratacache: the command line needs {exc.name}: pip install 'stratacache[cli]'",
            file=sys.stderr,
        )
        sys.exit(1)
    cli()
