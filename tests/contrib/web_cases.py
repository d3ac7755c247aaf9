"""Helpers of the FastAPI and Flask example tests: the peer process, and polling."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

PEER = Path(__file__).with_name("web_peer.py")


def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


class AppProcess:
    """The example app of ``framework`` running in another process (web_peer.py)."""

    def __init__(self, framework: str, redis_url: str, db_path: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER), framework, redis_url, db_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._read() == "ready"

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the app process exited"
        return json.loads(line)

    def get(self, path: str) -> dict[str, Any]:
        """Status, JSON body and X-Cache of ``GET path`` in the other process."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"GET {path}\n")
        self.proc.stdin.flush()
        return self._read()  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()
