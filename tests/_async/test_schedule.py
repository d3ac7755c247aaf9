"""Scheduled invalidation on a real standalone server and a real cluster, driven by an
injected wall clock: every instance registers the same schedule and each tick fires in
exactly one of them; a tick missed while every instance was down fires once on start;
Redis paused at tick time (a private server): the tick is retried and fires once. The
multi-process test is ``tests/test_schedule_processes.py``. ``Cache`` runs the generated
sync twin of this file.
"""

from __future__ import annotations

from typing import Any

import pytest

from stratacache import MISSING, AsyncCache, ScheduleInfo
from stratacache._keys import KeySpace

from concurrency import FakeClock, async_until

NS = "sched"
DEADLINE = 20.0
START = 1_800_000_000.0  # a multiple of 300: a tick of "*/5 * * * *"
EVERY_5 = "*/5 * * * *"


def make(target: tuple[str, bool], clock: FakeClock, **options: Any) -> AsyncCache:
    url, cluster = target
    options.setdefault("redis_timeout", 2.0)
    options.setdefault("schedule_poll", 3600.0)  # the tests step with run_schedules()
    return AsyncCache(url, cluster=cluster, namespace=NS, clock=clock, **options)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START + 10)


@pytest.fixture
async def fleet(target: tuple[str, bool], clock: FakeClock):
    caches = [make(target, clock) for _ in range(3)]
    yield caches
    for cache in caches:
        await cache.close()


async def run_all(caches: list[AsyncCache]) -> list[str]:
    fired: list[str] = []
    for cache in caches:
        fired += await cache.run_schedules()
    return fired


def fired_here(caches: list[AsyncCache], name: str) -> int:
    return sum(s.fired_here for c in caches for s in c.stats().schedules if s.name == name)


async def test_each_tick_fires_in_exactly_one_instance(fleet, clock) -> None:
    a = fleet[0]
    await a.set("p:1", "v", tags=["prices"])
    for cache in fleet:
        info = await cache.schedule_invalidation(EVERY_5, name="prices", tag="prices")
        assert isinstance(info, ScheduleInfo) and info.next_fire == START + 300
    assert await run_all(fleet) == []  # registering never fires a past tick
    assert await a.get("p:1") == "v"
    clock.advance(300)  # the tick of START + 300
    assert await run_all(fleet) == ["prices"]
    assert await run_all(fleet) == []  # the same tick never again
    assert await fleet[1].get("p:1", MISSING) is MISSING
    clock.advance(289)  # START + 599
    assert await run_all(fleet) == []
    clock.advance(1)
    assert await run_all(list(reversed(fleet))) == ["prices"]
    assert fired_here(fleet, "prices") == 2
    infos = [c.stats().schedules[0] for c in fleet]
    assert {i.last_tick for i in infos} == {START + 600}
    assert {i.next_fire for i in infos} == {START + 900}
    assert infos[0].last_fired_by is not None


async def test_the_background_worker_fires_once_per_tick(target, clock) -> None:
    caches = [make(target, clock, schedule_poll=0.01) for _ in range(2)]
    try:
        await caches[0].set("k", "v")
        for cache in caches:
            await cache.schedule_invalidation(EVERY_5, name="worker", key="k")
        clock.advance(300)
        await async_until(lambda: fired_here(caches, "worker") >= 1, DEADLINE)
        await async_until(
            lambda: all(c.stats().schedules[0].last_tick == START + 300 for c in caches),
            DEADLINE,
        )
        assert fired_here(caches, "worker") == 1
        assert await run_all(caches) == []
        assert await caches[1].get("k", MISSING) is MISSING
    finally:
        for cache in caches:
            await cache.close()


async def test_a_tick_missed_while_every_instance_was_down_fires_once(target, clock) -> None:
    first = make(target, clock)
    await first.schedule_invalidation(EVERY_5, name="nightly", tag="t", reason="rebuild")
    assert await first.run_schedules() == []
    await first.close()  # every instance down ...
    clock.advance(3 * 300 + 42)  # ... across three ticks
    late = [make(target, clock) for _ in range(2)]
    try:
        for cache in late:
            await cache.schedule_invalidation(EVERY_5, name="nightly", tag="t", reason="rebuild")
        # one catch-up firing, for the most recent missed tick only (by the workers' first
        # pass, or by these calls: whichever claims it first)
        await run_all(late)
        await async_until(lambda: fired_here(late, "nightly") == 1, DEADLINE)
        assert await run_all(late) == []
        assert fired_here(late, "nightly") == 1
        assert {c.stats().schedules[0].last_tick for c in late} == {START + 900}
        # the audit record waits in the buffer of whichever instance fired until it flushes
        for cache in late:
            await cache.audit_log(1)
        records = await late[0].audit_log(10)
        assert [r.reason for r in records if r.action.startswith("tag")] == ["rebuild"]
    finally:
        for cache in late:
            await cache.close()


async def test_unschedule_and_forget(fleet, clock, raw) -> None:
    a, b, _ = fleet
    await a.schedule_invalidation(EVERY_5, name="gone", pattern="tmp:*")
    await b.schedule_invalidation(EVERY_5, name="gone", pattern="tmp:*")
    assert await a.unschedule("gone") is True
    clock.advance(300)
    assert await a.run_schedules() == []  # a no longer runs it
    assert await b.run_schedules() == ["gone"]
    assert await b.unschedule("gone", forget=True) is True
    keys = KeySpace(NS)
    assert await raw.exists(keys.meta_key("sched.gone"), keys.meta_key("sched.gone.last")) == 0
    assert await b.unschedule("gone") is False


async def test_bad_schedules_are_refused(fleet) -> None:
    a = fleet[0]
    with pytest.raises(ValueError, match="cron"):
        await a.schedule_invalidation("every day", name="x", tag="t")
    with pytest.raises(ValueError, match="name"):
        await a.schedule_invalidation(EVERY_5, name="has space", tag="t")
    with pytest.raises(ValueError, match="name"):
        await a.schedule_invalidation(EVERY_5, name="dots.are.separators", tag="t")
    with pytest.raises(ValueError, match="invalidate"):
        await a.schedule_invalidation(EVERY_5, name="x")
    with pytest.raises(TypeError):
        await a.schedule_invalidation(EVERY_5, name="x", tag=3)  # type: ignore[arg-type]
    assert a.stats().schedules == ()


# -- faults (a private standalone server) ------------------------------------------------


@pytest.mark.slow
async def test_redis_down_at_tick_time_the_tick_fires_once_when_it_answers(
    redis_server_factory, clock
) -> None:
    server = redis_server_factory()
    caches = [
        AsyncCache(
            server.url,
            namespace=NS,
            clock=clock,
            redis_timeout=0.1,
            breaker_cooldown=0.2,
            schedule_poll=3600.0,
        )
        for _ in range(2)
    ]
    try:
        await caches[0].set("k", "v", tags=["t"])
        for cache in caches:
            await cache.schedule_invalidation(EVERY_5, name="outage", tag="t")
        clock.advance(300)
        server.pause()
        try:
            for _ in range(3):  # every instance tries, and keeps the tick pending
                assert await run_all(caches) == []
            assert all(c.stats().schedules[0].pending for c in caches)
        finally:
            server.resume()
        fired: list[str] = []
        for _ in range(int(DEADLINE / 0.05)):  # until Redis answers the claims again
            fired += await run_all(caches)
            if not any(c.stats().schedules[0].pending for c in caches):
                break
        assert fired == ["outage"]
        assert await run_all(caches) == []
        assert fired_here(caches, "outage") == 1
        await async_until(lambda: caches[0].stats().invalidation.outbox_pending == 0, DEADLINE)
        other = AsyncCache(server.url, namespace=NS, clock=clock)
        try:
            assert await other.get("k", MISSING) is MISSING
        finally:
            await other.close()
    finally:
        for cache in caches:
            await cache.close()
