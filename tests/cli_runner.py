"""The ``stratacache`` command run in the test process (click's ``CliRunner``): the same
command group, option parsing, error lines and exit codes as the console script, without
an interpreter start per call. The script itself and the streaming commands (``bus
tail``, ``audit --follow``, ``metrics``) still run as real subprocesses in the tests that
need them."""

from __future__ import annotations

import logging
import subprocess

from click.testing import CliRunner


def run_cli(
    *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``stratacache ARGS`` with ``input`` on stdin; stdout and stderr apart, as from a
    subprocess. Exceptions the command does not turn into an exit status fail the test."""
    from stratacache._cli import cli

    # the command quiets the library's logger (its own short-lived cache): give the
    # level back, the rest of the test session logs as before
    logger = logging.getLogger("stratacache")
    level = logger.level
    try:
        result = CliRunner().invoke(
            cli,
            list(args),
            input=input,
            env={"COLUMNS": "200", **(env or {})},
            prog_name="stratacache",
            catch_exceptions=False,
        )
    finally:
        logger.setLevel(level)
    return subprocess.CompletedProcess(
        ["stratacache", *args], result.exit_code, result.stdout, result.stderr
    )
