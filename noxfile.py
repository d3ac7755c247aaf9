"""The suite on every supported Python: ``make test`` runs ``nox`` (the default sessions).

- ``tests-3.X``: the compiled L1 (``STRATACACHE_REQUIRE_EXTENSIONS=1``) on each Python that
  ``pyproject.toml`` claims (``requires-python`` and the classifiers; tests/test_docs.py
  checks the three lists agree).
  The session of the oldest then runs the pure-Python L1 (``STRATACACHE_NO_EXTENSIONS=1``)
  in the same venv, and the packaging tests (``tests/test_packaging.py``) once.

Each session installs the package (not editable: the extension is compiled for that
interpreter) with the ``test`` extra, and runs pytest with ``PYTEST_ADDOPTS`` passed
through. Interpreters are found on ``PATH`` (``python3.X``), or in pyenv's versions when
pyenv is there. With ``CI`` set a missing interpreter fails the run; elsewhere it is
skipped with a message (``nox --error-on-missing-interpreters`` to fail locally too).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import nox
import tomllib

ROOT = Path(__file__).parent
CLASSIFIER = "Programming Language :: Python :: "
# the claim: the pyproject classifiers 3.X (tests/test_docs.py checks requires-python)
PYTHONS = [
    c.removeprefix(CLASSIFIER)
    for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["classifiers"]
    if c.startswith(CLASSIFIER + "3.")
]

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
if os.environ.get("CI"):
    nox.options.error_on_missing_interpreters = True


def _add_pyenv_interpreters() -> None:
    """Put pyenv's ``python3.X`` on PATH for the versions that are not there already."""
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return
    try:
        root = subprocess.run(
            [pyenv, "root"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return
    shims = os.path.join(root, "shims")
    extra = []
    for version in PYTHONS:
        on_path = shutil.which(f"python{version}")
        if on_path and os.path.dirname(on_path) != shims:  # a shim may name no install
            continue
        found = sorted(
            glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}"))
        )
        if found:
            extra.append(os.path.dirname(found[-1]))
    if extra:
        os.environ["PATH"] = os.pathsep.join([*extra, os.environ.get("PATH", "")])


_add_pyenv_interpreters()


def _install(session: nox.Session) -> None:
    # setuptools and Cython in the session, then no build isolation: no second download of
    # the build requirements per session, and the extension is built for this interpreter
    session.install("setuptools>=77", "cython>=3")
    session.install("--no-build-isolation", ".[test]")


def _pytest(session: nox.Session, env: dict[str, str]) -> None:
    # pytest from the session's site-packages, the tests from the checkout (testpaths, or
    # the paths given after `nox --`)
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", *session.posargs, env=env)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Compiled L1 (must load); the oldest Python also: pure L1, packaging tests."""
    _install(session)
    oldest = session.python == PYTHONS[0]
    _pytest(
        session,
        {
            "STRATACACHE_REQUIRE_EXTENSIONS": "1",
            "STRATACACHE_TEST_PACKAGING": "1" if oldest else "",
        },
    )
    if oldest:
        session.log("the pure-Python L1 (STRATACACHE_NO_EXTENSIONS=1)")
        _pytest(session, {"STRATACACHE_NO_EXTENSIONS": "1"})
