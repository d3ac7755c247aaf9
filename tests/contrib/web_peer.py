"""A second app process for the cross-process tests of the web examples:
``python web_peer.py fastapi|flask REDIS_URL DB_PATH``.

It builds ``examples/<framework>_app.py``'s app and serves it through the framework's own
test client, one request per line on stdin (``GET /path``), one JSON line on stdout:
``{"status": ..., "json": ..., "x_cache": ...}``; ``quit`` ends it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))


def serve(get: Any) -> None:
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        command, _, path = line.strip().partition(" ")
        if command == "quit":
            break
        response = get(path)
        body = json.loads(response.text) if response.status_code == 200 else None
        answer = {
            "status": response.status_code,
            "json": body,
            "x_cache": response.headers.get("X-Cache"),
        }
        print(json.dumps(answer), flush=True)


def main() -> None:
    framework, url, db_path = sys.argv[1:4]
    if framework == "fastapi":
        from fastapi.testclient import TestClient

        import fastapi_app

        with TestClient(fastapi_app.create_app(url, db_path, redis_timeout=2.0)) as client:
            serve(client.get)
    else:
        import flask_app

        app = flask_app.create_app(url, db_path, redis_timeout=2.0)
        try:
            serve(app.test_client().get)
        finally:
            flask_app.strata.close(app)


if __name__ == "__main__":
    main()
