"""``python -m stratacache``: the ``stratacache`` command line."""

from .cli import main

main()
