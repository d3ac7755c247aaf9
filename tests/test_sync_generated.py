"""The committed ``_sync/`` half is exactly what ``scripts/gen_sync.py`` makes of ``_async/``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_committed_sync_code_matches_the_async_source() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_sync.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_detects_drift(tmp_path: Path) -> None:
    # The check must be able to fail: run it on a copy whose _sync/ was edited by hand.
    import shutil

    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "gen_sync.py", copy / "scripts" / "gen_sync.py")
    shutil.copytree(ROOT / "src" / "stratacache" / "_async", copy / "src/stratacache/_async")
    shutil.copytree(ROOT / "src" / "stratacache" / "_sync", copy / "src/stratacache/_sync")
    shutil.copytree(ROOT / "tests" / "_async", copy / "tests/_async")
    shutil.copytree(ROOT / "tests" / "_sync", copy / "tests/_sync")
    (copy / "src/stratacache/_sync/__init__.py").write_text("# edited by hand\n")
    result = subprocess.run(
        [sys.executable, str(copy / "scripts" / "gen_sync.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "src/stratacache/_sync/__init__.py" in result.stdout
