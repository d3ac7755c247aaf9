"""Signed bus messages on real Redis (standalone and cluster): a stranger with PUBLISH on
the namespace channel — unsigned, forged, truncated or replayed messages sent with a raw
client — neither flushes nor poisons an L1; key rotation keeps the fleet hearing itself.
The bookkeeping alone (no I/O) is in ``tests/test_bus_state.py``.
"""

from __future__ import annotations

import time

import pytest

from stratacache import MISSING, AsyncCache, Codec
from stratacache._bus_messages import (
    MAC_BYTES,
    Action,
    BusMessage,
    bus_keys,
    encode_message,
    sign_message,
)
from stratacache._keys import KeySpace

from concurrency import async_bus_settled, async_l1_warmed, async_publish_raw, async_until

NS = "signedbus"
DEADLINE = 5.0
K1 = b"first secret, 32 bytes long....."
K2 = b"second secret, 32 bytes long...."
CHANNEL = KeySpace(NS).channel()


def make(target: tuple[str, bool], **options: object) -> AsyncCache:
    url, cluster = target
    options.setdefault("redis_timeout", 2.0)
    options.setdefault("recovery_grace", 0)
    options.setdefault("bus_batch_window", 0)  # a write's message is out when it returns
    return AsyncCache(url, cluster=cluster, namespace=NS, **options)  # type: ignore[arg-type]


async def heard(reader: AsyncCache, writer: AsyncCache) -> None:
    """Wait until ``reader`` heard everything ``writer`` published so far."""
    await async_bus_settled(writer, [reader], DEADLINE)


async def test_signed_instances_hear_each_other(target: tuple[str, bool]) -> None:
    a, b = make(target, codec=Codec(secret=K1)), make(target, codec=Codec(secret=K1))
    try:
        await a.set("k", 1)
        await async_l1_warmed(b, "k", 1, DEADLINE)
        await a.set("k", 2)
        await async_until(lambda: b.l1.peek("k", MISSING) is MISSING, DEADLINE)
        assert await b.get("k") == 2
        # heartbeats are signed too: both stay healthy, nothing was forged
        for cache in (a, b):
            stats = cache.stats()
            assert stats.bus_state == "healthy"
            assert stats.bus_messages_forged == 0 and stats.bus_flushes_gap == 0
    finally:
        await a.close()
        await b.close()


async def test_a_stranger_cannot_flush_or_poison_an_l1(target: tuple[str, bool], raw) -> None:
    # a generous heartbeat_timeout: no deaf spell on a loaded machine may flush L1 here
    a = make(target, bus_secret=K1, heartbeat_timeout=10.0)
    b = make(target, bus_secret=K1, heartbeat_timeout=10.0)
    try:
        await a.set("k", 1)
        await b.get("k")  # starts its bus
        await heard(b, a)
        await async_l1_warmed(b, "k", 1, DEADLINE)
        stranger = b"\x07" * 16
        key = bus_keys([K1], CHANNEL)[0]
        # a message really signed for this channel (as if recorded from the wire), which
        # b applies once; everything after it is hostile
        recorded = sign_message(
            encode_message(BusMessage(stranger, 1, time.time(), Action.INVALIDATE_KEYS, ("z",))),
            key,
        )
        await async_publish_raw(raw, NS, recorded)
        await async_until(lambda: b.stats().bus_messages_received >= 1, DEADLINE)
        before = b.stats()
        own = b._bus.state.source  # type: ignore[union-attr]
        forged: list[bytes] = []
        for seq in (2, 7, 50):  # later sequence numbers: a gap, if they were believed
            body = encode_message(BusMessage(stranger, seq, time.time(), Action.CLEAR))
            forged += [
                body,  # unsigned
                sign_message(body, bus_keys([K2], CHANNEL)[0]),  # wrong key
                sign_message(body, bus_keys([K1], "elsewhere:v1:bus")[0]),  # other channel
                sign_message(body, key)[:-2],  # truncated
                sign_message(body, key)[:MAC_BYTES],
            ]
        # b's own heartbeat, forged: must not count as hearing itself
        forged.append(encode_message(BusMessage(own, 10**9, time.time(), Action.HEARTBEAT)))
        for payload in forged:
            await async_publish_raw(raw, NS, payload)
        replays = [recorded] * 3
        for payload in replays:
            await async_publish_raw(raw, NS, payload)
        total = len(forged) + len(replays)
        await async_until(
            lambda: b.stats().bus_messages_dropped - before.bus_messages_dropped >= total,
            DEADLINE,
        )
        after = b.stats()
        assert after.bus_messages_forged - before.bus_messages_forged == len(forged)
        assert after.bus_messages_dropped - before.bus_messages_dropped == total
        assert after.bus_flushes_gap == before.bus_flushes_gap == 0
        assert after.bus_state == "healthy"
        assert b.l1.peek("k") == 1  # no flush, no CLEAR applied
        # the real writer still gets through (its sequence numbers were never disturbed)
        await a.set("k", 2)
        await async_until(lambda: b.l1.peek("k", MISSING) is MISSING, DEADLINE)
        assert b.stats().bus_flushes_gap == 0
    finally:
        await a.close()
        await b.close()


async def test_rotation_keeps_the_bus_whole(target: tuple[str, bool]) -> None:
    old = make(target, codec=Codec(secret=K1))
    rotating = make(target, codec=Codec(secret=[K2, K1]))
    retired = make(target, codec=Codec(secret=K2))
    try:
        await old.set("k", 1)
        await async_l1_warmed(rotating, "k", 1, DEADLINE)
        await old.set("k", 2)  # signed with K1: accepted by [K2, K1]
        await async_until(lambda: rotating.l1.peek("k", MISSING) is MISSING, DEADLINE)
        assert await rotating.get("k") == 2
        assert rotating.stats().bus_messages_forged == 0
        assert rotating.stats().decode_errors == 0
        assert await retired.get("k", "miss") == "miss"  # old's entry: signed by K1
        assert retired.stats().decode_errors == 1
        # K1 is not in [K2]: old's messages (heartbeats at least) are forged there
        await async_until(lambda: retired.stats().bus_messages_forged > 0, DEADLINE)
        await async_until(lambda: retired.stats().bus_state == "healthy", DEADLINE)
    finally:
        for cache in (old, rotating, retired):
            await cache.close()


@pytest.mark.parametrize("setting", [False, None])
async def test_an_unsigned_bus(target: tuple[str, bool], setting: bool | None) -> None:
    """``bus_secret=False`` keeps the bus unsigned under a signed codec; no secret at all
    is the unsigned default."""
    codec = Codec(secret=K1) if setting is False else Codec()
    a, b = make(target, codec=codec, bus_secret=setting), make(target, bus_secret=False)
    try:
        await a.set("k", 1)
        if setting is None:
            await async_l1_warmed(b, "k", 1, DEADLINE)
        await async_l1_warmed(a, "k", 1, DEADLINE)
        await b.set("k", 2)  # unsigned: a hears it
        await async_until(lambda: a.l1.peek("k", MISSING) is MISSING, DEADLINE)
        assert a.stats().bus_messages_forged == 0
    finally:
        await a.close()
        await b.close()


async def test_invalidations_sent_to_the_failover_redis_are_signed(redis_server_factory) -> None:
    primary, failover = redis_server_factory(), redis_server_factory()
    cache = AsyncCache(primary.url, namespace=NS, failover=failover.url, bus_secret=K1)
    # an instance whose L2 is the failover Redis, on the same secret
    remote = AsyncCache(failover.url, namespace=NS, bus_secret=[K2, K1], recovery_grace=0)
    try:
        await remote.set("a", 1)
        await async_l1_warmed(remote, "a", 1, DEADLINE)
        await cache.invalidate("a")  # the failover Redis's bus carries it to remote
        await async_until(lambda: remote.l1.peek("a", MISSING) is MISSING, DEADLINE)
        assert remote.stats().bus_messages_forged == 0
        assert remote.stats().bus_flushes_gap == 0
    finally:
        await cache.close()
        await remote.close()
