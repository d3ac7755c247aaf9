"""Django's own cache test-suite, taken from the sdist of the installed Django.

The backend must pass ``BaseCacheTests`` of Django's ``tests/cache/tests.py`` (BSD
licensed; not committed here). The first run downloads the sdist of exactly the installed
version with pip and extracts ``tests/cache/`` under ``.venv/django-tests/`` (or
``$STRATACACHE_DJANGO_TESTS``); later runs are offline.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import django

from stratacache.testing import RedisServerProcess

REPO = Path(__file__).resolve().parents[2]


# The Redis of the Django backend in this test process: Django's test classes read CACHES
# when they are defined, so the server starts at import (at collection: its port cannot be
# taken by another server or a client socket meanwhile). conftest.py stops it after the
# last test; it dies with this process in any case.
DJANGO_REDIS = RedisServerProcess()
DJANGO_REDIS.start()
atexit.register(DJANGO_REDIS.close)
DJANGO_REDIS_URL = DJANGO_REDIS.url


def django_tests_dir() -> Path:
    """The folder holding Django's ``cache`` test app (``cache/tests.py``...)."""
    version = django.get_version()
    base = Path(os.environ.get("STRATACACHE_DJANGO_TESTS") or REPO / ".venv" / "django-tests")
    root = base / f"django-{version}"
    if (root / "cache" / "tests.py").exists():
        return root
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        subprocess.run(
            [
                sys.executable, "-m", "pip", "download", f"django=={version}",
                "--no-deps", "--no-binary", ":all:", "--dest", tmp, "--quiet",
            ],
            check=True,
        )  # fmt: skip
        sdist = next(Path(tmp).glob("*.tar.gz"))
        out = Path(tmp) / "out"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/tests/cache/" in m.name]
            if not members:
                raise RuntimeError(f"{sdist.name} has no tests/cache/")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(out, members, filter="data")
            else:  # pragma: no cover - Pythons without extraction filters
                tar.extractall(out, members)
        (extracted,) = out.glob("*/tests/cache")
        staging = Path(tmp) / "tests"
        staging.mkdir()
        shutil.move(str(extracted), staging / "cache")
        if not (root / "cache" / "tests.py").exists():  # another run may have won
            shutil.rmtree(root, ignore_errors=True)
            staging.rename(root)
    return root
