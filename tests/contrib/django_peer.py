"""A second Django process for the cross-process tests: ``python django_peer.py URL NS``.

It configures Django with the StrataCache backend on ``URL`` (namespace ``NS``) and answers
one command per line on stdin, one JSON line on stdout:
``get KEY`` -> the value (or null), ``inl1 KEY`` -> whether KEY is in its L1,
``set KEY JSON`` -> null, ``delete KEY`` -> whether it existed, ``quit``.
"""

from __future__ import annotations

import json
import sys

import django
from django.conf import settings


def main() -> None:
    url, namespace = sys.argv[1], sys.argv[2]
    settings.configure(
        SECRET_KEY="stratacache-tests-not-a-real-secret",
        CACHES={
            "default": {
                "BACKEND": "stratacache.contrib.django.StrataCache",
                "LOCATION": url,
                # a long L1 life: only the bus can make this process drop a key in time
                "OPTIONS": {"namespace": namespace, "redis_timeout": 2.0, "l1_max_ttl": 600},
            }
        },
    )
    django.setup()
    from django.core.cache import cache

    from stratacache.contrib.django import shutdown

    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        command, _, rest = line.strip().partition(" ")
        if command == "quit":
            break
        key, _, arg = rest.partition(" ")
        if command == "get":
            answer = cache.get(key)
        elif command == "inl1":
            answer = cache.make_key(key) in cache.stratacache.l1
        elif command == "set":
            answer = cache.set(key, json.loads(arg))
        elif command == "delete":
            answer = cache.delete(key)
        else:
            answer = f"unknown command {command!r}"
        print(json.dumps(answer), flush=True)
    shutdown()


if __name__ == "__main__":
    main()
