"""Build stratacache, compiling the hot path from ``cython_ext/`` when it can.

The one switch, read the same way here and at import time (``stratacache._compat``):
``STRATACACHE_NO_EXTENSIONS=1`` or a non-CPython interpreter gives a pure-Python build.

Sources: the ``.pyx`` through Cython when Cython is installed (a checkout; the
build-system requirements bring it), else the generated ``.c`` that every sdist ships
(``sdist`` below cythonizes first), so an sdist builds without Cython. A missing or broken
C compiler is not an error: the build says so and installs the pure-Python L1, unless
``STRATACACHE_REQUIRE_EXTENSIONS=1`` asks for the compiled one (then it fails).
"""

import os
import platform
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.sdist import sdist
from setuptools.errors import CCompilerError, ExecError, PlatformError

HERE = Path(__file__).parent
NO_EXTENSIONS = bool(os.environ.get("STRATACACHE_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)
REQUIRE_EXTENSIONS = bool(os.environ.get("STRATACACHE_REQUIRE_EXTENSIONS"))
COMPILER_DIRECTIVES = {
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "embedsignature": True,
}


def say(message):
    print(f"stratacache: {message}", file=sys.stderr)


def pyx_files():
    return sorted((HERE / "cython_ext").glob("*.pyx"))


def cythonize_all():
    """The extensions from the .pyx sources (writes the .c files beside them)."""
    from Cython.Build import cythonize

    modules = [
        Extension(
            f"stratacache.{pyx.stem}", [str(pyx.relative_to(HERE))], extra_compile_args=["-O3"]
        )
        for pyx in pyx_files()
    ]
    return cythonize(modules, language_level=3, compiler_directives=COMPILER_DIRECTIVES)


def extensions():
    try:
        import Cython  # noqa: F401
    except ImportError:
        pass
    else:
        return cythonize_all()
    modules = []
    for pyx in pyx_files():
        c_file = pyx.with_suffix(".c")
        if not c_file.exists():
            say(f"neither Cython nor {c_file.relative_to(HERE)} is here: pure-Python build")
            return []
        modules.append(
            Extension(
                f"stratacache.{pyx.stem}",
                [str(c_file.relative_to(HERE))],
                extra_compile_args=["-O3"],
            )
        )
    say("Cython is not installed: compiling the C shipped in the source distribution")
    return modules


class OptionalBuildExt(build_ext):
    """Compile the extensions if a C compiler works; else fall back to the pure L1."""

    def run(self):
        try:
            super().run()
        except (CCompilerError, ExecError, PlatformError, OSError) as exc:
            self._fall_back(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except (CCompilerError, ExecError, PlatformError, OSError) as exc:
            self._fall_back(exc)

    def _fall_back(self, exc):
        if REQUIRE_EXTENSIONS:
            say(f"compiling the L1 failed and STRATACACHE_REQUIRE_EXTENSIONS is set: {exc}")
            raise exc
        say(
            f"no working C compiler ({type(exc).__name__}: {exc}). Installing the pure-Python "
            "L1 instead: everything works, the L1 is about 10x slower. Install a C compiler "
            "(Debian: apt-get install gcc python3-dev) and reinstall for the compiled one, "
            "or set STRATACACHE_NO_EXTENSIONS=1 to skip this attempt."
        )


class SdistWithC(sdist):
    """Cythonize before packing, so that the sdist carries the generated C."""

    def run(self):
        cythonize_all()
        super().run()


if NO_EXTENSIONS:
    say("pure-Python build (no extensions)")
    setup(ext_modules=[], cmdclass={"sdist": SdistWithC})
else:
    ext_modules = extensions()
    if ext_modules:
        say(f"compiled build ({', '.join(e.name for e in ext_modules)})")
    setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt, "sdist": SdistWithC})
