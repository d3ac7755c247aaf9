"""Warming and scheduled invalidation need no permission beyond the cache's ACL
(``stratacache.acl_rules``): run as the restricted user, every Redis step succeeds."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import Any

import redis

import stratacache
from stratacache import Cache, _schedule
from stratacache._acl import SCRIPT_COMMANDS
from stratacache._async import warm
from stratacache.testing import RedisServerProcess

from concurrency import FakeClock

NS = "aclws"


def test_the_scripts_call_only_granted_commands() -> None:
    called = set()
    for module in (_schedule, warm):
        for value in vars(module).values():
            if isinstance(value, str):
                called.update(m.lower() for m in re.findall(r"redis\.call\('([A-Za-z]+)'", value))
    assert called >= {"get", "set", "del", "zadd"}
    assert called <= set(SCRIPT_COMMANDS)


def test_warm_and_schedules_as_restricted_user(
    redis_server_factory: Callable[..., RedisServerProcess],
) -> None:
    server = redis_server_factory()
    admin = redis.Redis(host=server.host, port=server.port)
    line = stratacache.acl_rules(NS, user="app", password="pw1")
    assert admin.execute_command(*shlex.split(line)) in (b"OK", "OK", True)
    admin.close()
    url = f"redis://app:pw1@{server.host}:{server.port}/0"
    clock = FakeClock(1_800_000_010.0)
    cache = Cache(url, namespace=NS, clock=clock, schedule_poll=3600.0)
    try:
        fail = {"row:15"}

        def load(keys: list[str]) -> dict[str, Any]:
            if fail & set(keys):
                raise RuntimeError("db")
            return dict.fromkeys(keys, 1)

        keys = [f"row:{i}" for i in range(30)]
        first = cache.warm(keys, loader_many=load, batch_size=10, tags=["t"], resume_key="j")
        assert first.written == 20 and first.checkpoint == 1  # batch 1 failed
        fail.clear()
        again = cache.warm(keys, loader_many=load, batch_size=10, tags=["t"], resume_key="j")
        assert again.ok and again.resumed_batches == 1
        cache.schedule_invalidation("*/5 * * * *", name="s", tag="t", key="k")
        clock.advance(300)
        assert cache.run_schedules() == ["s"]
        assert cache.get("row:3") is None
        assert cache.unschedule("s", forget=True)
        assert cache.stats().errors == 0
        assert not cache.dead_letters()
    finally:
        cache.close()
