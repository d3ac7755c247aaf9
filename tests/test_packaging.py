"""The distributions: an sdist that builds without Cython, a wheel with the compiled L1,
and an install that falls back to the pure L1 when no C compiler works.

Slow (fresh virtual environments, a compile): runs once per ``make test``, in the nox
session of the oldest supported Python (``STRATACACHE_TEST_PACKAGING=1``), or by hand:
``STRATACACHE_TEST_PACKAGING=1 .venv/bin/python -m pytest tests/test_packaging.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    # one worker builds the sdist and the venvs once (make test passes --dist loadgroup)
    pytest.mark.xdist_group("packaging"),
    pytest.mark.skipif(
        not os.environ.get("STRATACACHE_TEST_PACKAGING"),
        reason="once per make test: STRATACACHE_TEST_PACKAGING=1",
    ),
]


def _env(**extra: str) -> dict[str, str]:
    # the suite's own switches must not reach the builds
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATACACHE_")}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def _run(*args: object, **extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=_env(**extra), check=False
    )
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(path)
    return path / "bin" / "python"


def _tracked_copy(dest: Path) -> Path:
    """The checkout's tracked files, copied: the build sees what a clean clone holds, and
    no file another test (another xdist worker) creates or removes meanwhile in the tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    tree = _tracked_copy(tmp_path_factory.mktemp("checkout"))
    _run(sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", out, tree)
    (path,) = out.glob("stratacache-*.tar.gz")
    return path


@pytest.fixture(scope="module")
def builder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with setuptools and no Cython."""
    python = _venv(tmp_path_factory.mktemp("builder") / "venv")
    _run(python, "-m", "pip", "install", "--quiet", "setuptools>=77")
    probe = subprocess.run([python, "-c", "import Cython"], capture_output=True, check=False)
    assert probe.returncode != 0, "the builder venv must not have Cython"
    return python


def test_the_sdist_ships_the_generated_c_and_the_licence(sdist: Path) -> None:
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    root = sdist.name.removesuffix(".tar.gz")
    for member in (
        "cython_ext/_l1_c.c",
        "cython_ext/_l1_c.pyx",
        "cython_ext/_read_many_c.c",
        "cython_ext/_read_many_c.pyx",
        "LICENSE",
        "CHANGELOG.md",
    ):
        assert f"{root}/{member}" in names


def test_sdist_builds_without_cython_and_the_wheel_imports_the_compiled_l1(
    sdist: Path, builder: Path, tmp_path: Path
) -> None:
    wheels = tmp_path / "wheels"
    built = _run(
        builder,
        "-m",
        "pip",
        "wheel",
        "-v",
        "--no-build-isolation",
        "--no-deps",
        "--wheel-dir",
        wheels,
        sdist,
    )
    assert "compiling the C shipped in the source distribution" in built.stdout + built.stderr
    (wheel,) = wheels.glob("stratacache-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("_l1_c", "_read_many_c"):
        assert any(n.startswith(f"stratacache/{module}.") for n in names)
    assert "licenses/LICENSE" in " ".join(names)

    user = _venv(tmp_path / "user")
    _run(user, "-m", "pip", "install", "--quiet", wheel)
    probe = _run(
        user,
        "-c",
        "import stratacache, stratacache._l1_c as c, stratacache._read_many as r;"
        "import stratacache._read_many_c as rc;"
        "assert stratacache.L1 is c.L1 and r.read_many is rc.read_many; print(c.__file__)",
    )
    assert str(tmp_path / "user") in probe.stdout  # the installed copy, not the checkout


def test_without_a_working_compiler_the_install_falls_back_to_the_pure_l1(
    sdist: Path, builder: Path, tmp_path: Path
) -> None:
    wheels = tmp_path / "wheels"
    built = _run(
        builder,
        "-m",
        "pip",
        "wheel",
        "-v",
        "--no-build-isolation",
        "--no-deps",
        "--wheel-dir",
        wheels,
        sdist,
        CC="/bin/false",
    )
    output = built.stdout + built.stderr
    assert "no working C compiler" in output and "pure-Python" in output
    (wheel,) = wheels.glob("stratacache-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(n.startswith(("stratacache/_l1_c.", "stratacache/_read_many_c.")) for n in names)
    assert "stratacache/_l1_py.py" in names and "stratacache/_read_many_py.py" in names


def test_require_extensions_turns_the_fallback_into_a_failure(
    sdist: Path, builder: Path, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            str(builder),
            "-m",
            "pip",
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path),
            str(sdist),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=_env(CC="/bin/false", STRATACACHE_REQUIRE_EXTENSIONS="1"),
    )
    assert result.returncode != 0
    assert not list(tmp_path.glob("*.whl"))
