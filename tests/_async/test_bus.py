"""The invalidation bus between instances in one process (each with its own L1 and
listener), on a real standalone server and a real cluster; Cache runs the generated twin.

Cross-process behaviour (spawned and forked processes, killed subscriptions, overflowing
output buffers) is in ``tests/test_bus_processes.py``.
"""

from __future__ import annotations

import logging
import time

import pytest

from stratacache import MISSING, AsyncCache
from stratacache._bus_messages import Action, BusMessage, decode_message, encode_message
from stratacache._keys import KeySpace
from stratacache._primitives import AsyncRedis, async_sleep

from concurrency import async_bus_settled, async_l1_warmed, async_publish_raw, async_until

NS = "bus"
DEADLINE = 5.0  # bound of every wait for propagation (typical: about a millisecond)


def make(target: tuple[str, bool], **options: object) -> AsyncCache:
    url, cluster = target
    options.setdefault("redis_timeout", 2.0)  # behaviour, not the CI machine's scheduling
    # entries written before a flush are served again at once (the grace after a deaf
    # spell is tested in test_outbox_faults.py)
    options.setdefault("recovery_grace", 0)
    return AsyncCache(url, cluster=cluster, namespace=NS, **options)  # type: ignore[arg-type]


@pytest.fixture
async def pair(target: tuple[str, bool]):
    a, b = make(target), make(target)
    yield a, b
    await a.close()
    await b.close()


@pytest.mark.parametrize("window", [0.0, 0.001])
async def test_every_write_drops_the_key_from_the_other_l1(
    target: tuple[str, bool], window: float
) -> None:
    a, b = make(target, bus_batch_window=window), make(target, bus_batch_window=window)
    try:
        await a.set("k", 1, tags=["t"])
        await async_bus_settled(a, [b], DEADLINE)  # a's message for k cannot drop b's copy later
        await async_l1_warmed(b, "k", 1, DEADLINE)
        await a.set("k", 2)
        await async_until(lambda: b.l1.peek("k", MISSING) is MISSING, DEADLINE)
        assert await b.get("k") == 2

        await a.set_many({"k": 3, "j": 4})
        await async_until(lambda: b.l1.peek("k", MISSING) is MISSING, DEADLINE)
        assert await b.get("k") == 3

        await a.touch("k", 100)
        await async_until(lambda: b.l1.peek("k", MISSING) is MISSING, DEADLINE)
        await async_l1_warmed(b, "k", 3, DEADLINE)

        await a.delete("k")
        await async_until(lambda: b.l1.peek("k", MISSING) is MISSING, DEADLINE)
        assert await b.get("k", MISSING) is MISSING
    finally:
        await a.close()
        await b.close()
    assert a.stats().bus_messages_sent >= 4
    assert b.stats().bus_messages_received >= 4


async def test_the_writer_ignores_its_own_messages(pair) -> None:
    a, b = pair
    await a.set("k", 1)
    await async_bus_settled(a, [b], DEADLINE)
    await async_l1_warmed(b, "k", 1, DEADLINE)
    await a.set("mine", "v")
    # b heard the write, a heard its own message and its heartbeat, but dropped them
    await async_until(lambda: b.l1.peek("mine", MISSING) is MISSING, DEADLINE)
    await async_until(lambda: a.stats().bus_messages_received >= 2, DEADLINE)
    assert a.l1.peek("mine") == "v"
    assert a.stats().bus_flushes_gap == 0
    stats = a.stats()
    assert stats.bus_state == "healthy"
    assert stats.bus_flushes_subscribe == 1
    assert stats.bus_lag.count >= 1 and 0 <= stats.bus_lag.p50 < 1.0


async def test_one_instance_s_messages_go_out_in_the_order_of_its_calls(redis_url) -> None:
    # A delete is batched for the publisher loop; an invalidate_tag is sent at once by its
    # caller. Sent before the delete's batch, it would reach others (and `bus tail`) first.
    cache = make((redis_url, False), heartbeat_timeout=60)  # no heartbeat wakes the loop
    listener = AsyncRedis.from_url(redis_url)
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    try:
        await cache.set("warm-up", 1)  # starts the bus
        bus = cache._bus
        assert bus is not None
        # the loop's first sends are out, so it is most likely waiting for a wake-up, which
        # add() below does not give: the at-once send must then take the batch with it
        # (whichever of the two drains the batch, the order must hold)
        await async_until(lambda: bus.outbox.sent >= 2 and not bus.outbox.pending(), DEADLINE)
        await pubsub.subscribe(KeySpace(NS).channel())
        # the delete, still batched, as when the loop has not run yet
        bus.outbox.add(Action.INVALIDATE_KEYS, ["k"])
        await cache.invalidate_tag("t")
        heard: list[tuple[Action, tuple[str, ...]]] = []
        deadline = time.monotonic() + DEADLINE
        while len(heard) < 2:
            assert time.monotonic() < deadline, f"heard only {heard}"
            raw_message = await pubsub.get_message(timeout=0.1)
            message = decode_message(raw_message["data"]) if raw_message else None
            if message is not None and message.action is not Action.HEARTBEAT:
                if message.args == ("warm-up",):  # sent before the subscription: may be heard
                    continue
                heard.append((message.action, message.args))
        assert heard == [(Action.INVALIDATE_KEYS, ("k",)), (Action.INVALIDATE_TAGS, ("t",))]
    finally:
        await pubsub.aclose()
        await listener.aclose()
        await cache.close()


async def test_a_sequence_gap_flushes_l1(pair, raw) -> None:
    a, b = pair
    await a.set("k", 1)
    await async_bus_settled(a, [b], DEADLINE)  # a's message for k cannot drop b's copy later
    await async_l1_warmed(b, "k", 1, DEADLINE)
    source = b"\x07" * 16
    for seq in (1, 2, 4):  # 3 was "lost"
        message = BusMessage(source, seq, time.time(), Action.INVALIDATE_KEYS, ("x",))
        await async_publish_raw(raw, NS, encode_message(message))
    await async_until(lambda: b.stats().bus_flushes_gap == 1, DEADLINE)
    assert len(b.l1) == 0
    assert await b.get("k") == 1  # from L2 again


async def test_hostile_bytes_on_the_channel_are_dropped_and_counted(pair, raw) -> None:
    a, b = pair
    await a.set("k", 1)
    await async_bus_settled(a, [b], DEADLINE)  # a's message for k cannot drop b's copy later
    await async_l1_warmed(b, "k", 1, DEADLINE)
    for payload in (b"", b"\xc1", b"\x96" + b"\xff" * 40, b"x" * 100_000):
        await async_publish_raw(raw, NS, payload)
    await async_until(lambda: b.stats().bus_messages_dropped == 4, DEADLINE)
    assert b.l1.peek("k") == 1
    assert b.stats().bus_state == "healthy"


async def test_without_the_bus_other_l1s_keep_values_until_l1_max_ttl(
    target: tuple[str, bool],
) -> None:
    a, b = make(target, bus=False), make(target, bus=False)
    try:
        await a.set("k", 1)
        await async_l1_warmed(b, "k", 1, DEADLINE)
        await a.set("k", 2)
        assert await b.get("k") == 1  # the old truth, which the bus exists to end
        assert b.stats().bus_state == "off"
    finally:
        await a.close()
        await b.close()


def test_bus_options_are_validated() -> None:
    with pytest.raises(ValueError, match="bus=True needs redis"):
        AsyncCache(None, bus=True)
    with pytest.raises(ValueError, match="heartbeat_timeout"):
        AsyncCache(None, heartbeat_timeout=0)
    with pytest.raises(ValueError, match="bus_batch_window"):
        AsyncCache(None, bus_batch_window=-1)
    with pytest.raises(ValueError, match="bus_unhealthy"):
        AsyncCache(None, bus_unhealthy="sometimes")  # type: ignore[arg-type]
    assert AsyncCache(None).stats().bus_state == "off"


@pytest.mark.slow
async def test_a_paused_redis_stops_l1_serving(redis_server_factory) -> None:
    server = redis_server_factory()
    timeout = 0.3
    cache = AsyncCache(
        server.url,
        namespace=NS,
        heartbeat_timeout=timeout,
        redis_timeout=0.05,
        breaker_cooldown=0.1,
        recovery_grace=0,
    )
    try:
        await cache.set("k", "v")
        assert await cache.get("k") == "v"
        assert cache.l1.peek("k") == "v"
        server.pause()
        await async_until(lambda: cache.stats().bus_state == "unhealthy", DEADLINE)
        assert len(cache.l1) == 0
        # L2 is out of reach and L1 is bypassed: the loader answers, nothing is kept in L1
        assert await cache.get_or_set("k", lambda: "from-loader") == "from-loader"
        assert len(cache.l1) == 0

        server.resume()
        await async_until(lambda: cache.stats().bus_state == "healthy", 10.0)
        # served from L2 and kept in L1 again, after one more flush (polled: on a loaded
        # machine one of the prober's 50 ms PINGs may time out right after the resume,
        # which makes the bus deaf for one more moment)
        waited = 0.0
        while not (await cache.get("k") == "v" and cache.l1.peek("k", None) == "v"):
            assert waited < 10.0, "L1 not serving again after Redis came back"
            await async_sleep(0.05)
            waited += 0.05
        stats = cache.stats()
        assert stats.bus_flushes_heartbeat >= 3  # first hearing, unhealthy, recovered
        assert stats.bus_unhealthy_seconds > 0
    finally:
        if server.running:
            server.resume()
        await cache.close()


@pytest.mark.slow
async def test_serve_l1_policy_keeps_serving_l1_while_redis_is_paused(
    redis_server_factory,
) -> None:
    server = redis_server_factory()
    cache = AsyncCache(
        server.url,
        namespace=NS,
        heartbeat_timeout=0.2,
        redis_timeout=0.05,
        breaker_cooldown=0.1,
        bus_unhealthy="serve_l1",
    )
    try:
        await cache.set("k", "v")
        server.pause()
        await async_until(lambda: cache.stats().bus_state == "unhealthy", DEADLINE)
        assert await cache.get("k") == "v"
        assert cache.l1.peek("k") == "v"
    finally:
        server.resume()
        await cache.close()


@pytest.mark.slow
async def test_a_paused_redis_makes_the_bus_unhealthy_at_once_and_is_logged(
    redis_server_factory, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory()
    # a heartbeat every 2 s, but 8 s of silence before an overdue heartbeat would count:
    # only the prober's unanswered PING or a failed publish can explain the state below
    cache = AsyncCache(
        server.url,
        namespace=NS,
        heartbeat_timeout=8.0,
        redis_timeout=0.05,
        breaker_cooldown=0.1,
        recovery_grace=0,
    )
    caplog.set_level(logging.INFO, logger="stratacache.bus")
    reasons = ("Redis did not answer a PING", "a publish to Redis failed")
    try:
        await cache.set("k", "v")
        await async_until(lambda: cache.stats().bus_state == "healthy", DEADLINE)
        assert cache.l1.peek("k") == "v"
        server.pause()
        await async_until(lambda: cache.stats().bus_state == "unhealthy", 30.0)
        assert cache._bus is not None
        assert cache._bus.state.unhealthy_reason in reasons
        assert len(cache.l1) == 0

        def warnings() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.levelno == logging.WARNING]

        # logged by the worker that saw it just after the state changed (a thread, in sync)
        await async_until(lambda: bool(warnings()), DEADLINE)
        [warning] = warnings()
        assert any(f"unhealthy: {why}" in warning.getMessage() for why in reasons)
        assert "L1 is bypassed" in warning.getMessage()

        server.resume()
        await async_until(lambda: cache.stats().bus_state == "healthy", 30.0)

        def infos() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]

        # logged by the listener just after the state changed
        await async_until(lambda: bool(infos()), DEADLINE)
        assert len(infos()) == 1 and "healthy again after" in infos()[0], infos()
        assert await cache.get("k") == "v"
    finally:
        if server.running:
            server.resume()
        await cache.close()
