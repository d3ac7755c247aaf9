"""The extension switch: the compiled L1 is the one loaded unless the switch says pure."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stratacache import _l1, _read_many
from stratacache._compat import NO_EXTENSIONS

REQUIRE_EXTENSIONS = bool(os.environ.get("STRATACACHE_REQUIRE_EXTENSIONS"))


def _l1_module_in_subprocess(**env: str) -> str:
    full_env = {k: v for k, v in os.environ.items() if k != "STRATACACHE_NO_EXTENSIONS"}
    full_env.update(env)
    out = subprocess.run(
        [sys.executable, "-c", "from stratacache import _l1; print(_l1.L1.__module__)"],
        capture_output=True,
        text=True,
        env=full_env,
        check=True,
    )
    return out.stdout.strip()


@pytest.mark.skipif(not REQUIRE_EXTENSIONS, reason="only the compiled run requires the extension")
def test_compiled_run_loads_the_compiled_l1() -> None:
    import stratacache._l1_c as compiled  # an ImportError here fails the compiled run

    assert not NO_EXTENSIONS
    assert _l1.L1 is compiled.L1
    assert compiled.__file__ is not None and compiled.__file__.endswith((".so", ".pyd"))


@pytest.mark.skipif(not NO_EXTENSIONS, reason="only the pure run sets STRATACACHE_NO_EXTENSIONS")
def test_pure_run_loads_the_pure_l1() -> None:
    import stratacache._l1_py as pure

    assert _l1.L1 is pure.L1


def test_switch_variable_gives_the_pure_l1_on_reimport() -> None:
    assert _l1_module_in_subprocess(STRATACACHE_NO_EXTENSIONS="1") == "stratacache._l1_py"


@pytest.mark.skipif(not REQUIRE_EXTENSIONS, reason="only the compiled run requires the extension")
def test_without_the_switch_a_fresh_import_is_compiled() -> None:
    assert _l1_module_in_subprocess() == "stratacache._l1_c"


def _read_many_module_in_subprocess(**env: str) -> str:
    full_env = {k: v for k, v in os.environ.items() if k != "STRATACACHE_NO_EXTENSIONS"}
    full_env.update(env)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from stratacache import _read_many; print(_read_many.read_many.__module__)",
        ],
        capture_output=True,
        text=True,
        env=full_env,
        check=True,
    )
    return out.stdout.strip()


@pytest.mark.skipif(not REQUIRE_EXTENSIONS, reason="only the compiled run requires the extension")
def test_compiled_run_loads_the_compiled_get_many_loop() -> None:
    import stratacache._read_many_c as compiled  # an ImportError here fails the compiled run

    assert _read_many.read_many is compiled.read_many
    assert compiled.__file__ is not None and compiled.__file__.endswith((".so", ".pyd"))


@pytest.mark.skipif(not NO_EXTENSIONS, reason="only the pure run sets STRATACACHE_NO_EXTENSIONS")
def test_pure_run_loads_the_pure_get_many_loop() -> None:
    import stratacache._read_many_py as pure

    assert _read_many.read_many is pure.read_many


def test_switch_variable_gives_the_pure_get_many_loop_on_reimport() -> None:
    assert _read_many_module_in_subprocess(STRATACACHE_NO_EXTENSIONS="1") == (
        "stratacache._read_many_py"
    )


@pytest.mark.skipif(not REQUIRE_EXTENSIONS, reason="only the compiled run requires the extension")
def test_without_the_switch_a_fresh_import_of_the_loop_is_compiled() -> None:
    assert _read_many_module_in_subprocess() == "stratacache._read_many_c"
