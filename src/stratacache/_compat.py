"""The one build/runtime switch, read the same way as ``setup.py`` reads it.

``STRATACACHE_NO_EXTENSIONS=1`` (any non-empty value) or a non-CPython interpreter makes
every switch module import its pure-Python implementation.
"""

from __future__ import annotations

import os
import platform

NO_EXTENSIONS: bool = bool(os.environ.get("STRATACACHE_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)
