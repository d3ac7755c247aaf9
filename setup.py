"""Build stratacache, compiling the hot path from ``cython_ext/`` when it can.

The one switch, read the same way here and at import time (``stratacache._compat``):
``STRATACACHE_NO_EXTENSIONS=1`` or a non-CPython interpreter gives a pure-Python build.
"""

import os
import platform
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
NO_EXTENSIONS = bool(os.environ.get("STRATACACHE_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)


def extensions():
    from Cython.Build import cythonize
    from setuptools import Extension

    modules = [
        Extension(
            f"stratacache.{pyx.stem}",
            [str(pyx.relative_to(HERE))],
            extra_compile_args=["-O3"],
        )
        for pyx in sorted((HERE / "cython_ext").glob("*.pyx"))
    ]
    return cythonize(
        modules,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )


if NO_EXTENSIONS:
    print("stratacache: pure-Python build (no extensions)", file=sys.stderr)
    setup(ext_modules=[])
else:
    ext_modules = extensions()
    names = ", ".join(e.name for e in ext_modules)
    print(f"stratacache: compiled build ({names})", file=sys.stderr)
    setup(ext_modules=ext_modules)
