"""Redis-side growth is bounded: tag member sets and dependency sets are sorted sets scored
by when what they point at expires; every add trims a bounded number of expired members,
each set expires with its longest-lived member, and the reclaim and the dependency cascade
skip what has expired. On a real standalone server and a real cluster; the sync twin is
generated. Expiry is waited for by polling Redis with a deadline, never by a sleep
followed by an assertion.
"""

from __future__ import annotations

import time

from redis.crc import key_slot

from stratacache import MISSING, AsyncCache
from stratacache._keys import KeySpace
from stratacache._primitives import async_sleep

NS = "growth"
DEADLINE = 10.0
SHORT = 0.05  # seconds: a ttl that has passed by the time the next poll comes
LONG = 100.0
KS = KeySpace(NS)


def make(target: tuple[str, bool], **options: object) -> AsyncCache:
    url, cluster = target
    options.setdefault("redis_timeout", 2.0)
    return AsyncCache(url, cluster=cluster, namespace=NS, **options)  # type: ignore[arg-type]


async def server_ms(raw) -> int:
    """The server's clock in ms (the clock entries and index members expire by)."""
    reply = await raw.time()
    if isinstance(reply, dict):  # a cluster answers per node; one machine, one clock
        reply = next(iter(reply.values()))
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


async def expired(raw, keys: list[str], *indexes: tuple[str, int]) -> None:
    """Wait until Redis has let every entry of ``keys`` expire, and until each index set
    (key, live members left) has only that many members scored in the future: on a
    cluster a member is scored on its tag's node, a moment after its entry was written on
    another node, so it may expire a few milliseconds after the entry."""
    deadline = time.monotonic() + DEADLINE
    data_keys = [KS.data_key(key) for key in keys]
    while sum([await raw.exists(k) for k in data_keys]):
        assert time.monotonic() < deadline, "entries did not expire"
        await async_sleep(0.01)
    for index, live in indexes:
        while True:
            now = await server_ms(raw)
            if await raw.zcount(index, f"({now}", "+inf") <= live:
                break
            assert time.monotonic() < deadline, "index members did not expire"
            await async_sleep(0.01)


async def test_a_write_trims_the_expired_members_of_its_tags_a_bounded_number_at_a_time(
    target: tuple[str, bool], raw
) -> None:
    cache = make(target)
    try:
        await cache.set("anchor", 1, ttl=LONG, tags=["t"])  # keeps the set itself alive
        old = [f"old:{i}" for i in range(300)]
        await cache.set_many({key: 1 for key in old}, ttl=SHORT, tags=["t"])
        members = KS.tag_members_key("t")
        assert await raw.zcard(members) == 301
        await expired(raw, old, (members, 1))
        # each add removes up to 2 x (members added) + 100 expired members: bounded work
        await cache.set("new:1", 1, ttl=LONG, tags=["t"])
        assert await raw.zcard(members) == 301 - 102 + 1
        await cache.set("new:2", 1, ttl=LONG, tags=["t"])
        assert await raw.zcard(members) == 301 - 204 + 2
        await cache.set("new:3", 1, ttl=LONG, tags=["t"])
        assert await raw.zcard(members) == 4  # only the live ones are left
        assert await cache.keys_for_tag("t") == ["anchor", "new:1", "new:2", "new:3"]
    finally:
        await cache.close()


async def test_a_member_set_expires_with_its_longest_lived_entry(
    target: tuple[str, bool], raw
) -> None:
    cache = make(target)
    try:
        members = KS.tag_members_key("shelf")
        await cache.set("a", 1, ttl=10, tags=["shelf"])
        assert 0 < await raw.pttl(members) <= 10_000
        await cache.set("b", 1, ttl=LONG, tags=["shelf"])
        longest = await raw.pttl(members)
        assert LONG * 1000 - 5_000 < longest <= LONG * 1000
        await cache.set("c", 1, ttl=10, tags=["shelf"])  # shorter: the set keeps its life
        assert await raw.pttl(members) > longest - 5_000
        # a member's score is when its entry expires, by the server's clock
        now_ms = await server_ms(raw)
        score = await raw.zscore(members, KS.tag_member("b"))
        assert now_ms + LONG * 1000 - 5_000 < score <= now_ms + LONG * 1000

        # when writes stop, the whole set goes with its last entry
        await cache.set("gone", 1, ttl=SHORT, tags=["brief"])
        await expired(raw, ["gone"])
        deadline = time.monotonic() + DEADLINE
        while await raw.exists(KS.tag_members_key("brief")):
            assert time.monotonic() < deadline, "the member set outlived its entries"
            await async_sleep(0.01)
    finally:
        await cache.close()


async def test_a_tag_whose_entries_all_expired_is_invalidated_without_a_reclaim(
    target: tuple[str, bool], raw
) -> None:
    cache = make(target)
    try:
        keys = [f"e:{i}" for i in range(20)]
        await cache.set_many({key: 1 for key in keys}, ttl=SHORT, tags=["dead"])
        await expired(raw, keys, (KS.tag_members_key("dead"), 0))
        assert await cache.invalidate_tag("dead") == 0  # no live key registered
        assert cache.stats().invalidation.reclaim_pending == 0
        assert not await raw.exists(KS.tag_members_key("dead"))
    finally:
        await cache.close()


async def test_the_reclaim_deletes_the_live_members_and_skips_the_expired_ones(
    target: tuple[str, bool], raw
) -> None:
    cache = make(target, reclaim_chunk=7)
    try:
        brief = [f"brief:{i}" for i in range(30)]
        await cache.set_many({key: 1 for key in brief}, ttl=SHORT, tags=["mixed"])
        await expired(raw, brief, (KS.tag_members_key("mixed"), 0))
        lasting = [f"lasting:{i}" for i in range(25)]
        await cache.set_many({key: 1 for key in lasting}, ttl=LONG, tags=["mixed"])
        # that write trimmed the 30 expired members: put them back, as if it had not yet
        members = KS.tag_members_key("mixed")
        assert await raw.zcard(members) == 25
        await raw.zadd(members, {KS.tag_member(key): 1 for key in brief})
        assert await cache.invalidate_tag("mixed") == 25
        await cache._invalidator.reclaim_now()
        # the walk starts past the 30 expired members: only the 25 live ones are read
        assert cache.stats().invalidation.reclaimed_keys == 25
        assert sum([await raw.exists(KS.data_key(key)) for key in lasting]) == 0
        assert [k async for k in raw.scan_iter(match=f"{NS}:v1:r:*")] == []
    finally:
        await cache.close()


async def test_an_entry_whose_registration_was_lost_is_still_invalidated_by_its_tag(
    target: tuple[str, bool], raw
) -> None:
    # Redis restarted (or the pipeline was cut) between the write and the member's
    # registration: the index misses the key. The tag's version still makes the entry a
    # miss everywhere; only its bytes wait for its own expiry instead of the reclaim.
    writer = make(target)
    fresh = make(target)
    try:
        await writer.set("lost", "v", ttl=LONG, tags=["cat"])
        await writer.set("kept", "v", ttl=LONG, tags=["cat"])
        await raw.zrem(KS.tag_members_key("cat"), KS.tag_member("lost"))
        assert await writer.invalidate_tag("cat") == 1
        await writer._invalidator.reclaim_now()
        assert await fresh.get("lost", MISSING) is MISSING
        assert await writer.get("lost", MISSING) is MISSING
        assert await raw.exists(KS.data_key("lost")) == 1  # a reclaim miss, left to its ttl
        assert await raw.exists(KS.data_key("kept")) == 0
    finally:
        await writer.close()
        await fresh.close()


# -- dependencies ------------------------------------------------------------------------------


async def test_a_dependency_lives_as_long_as_its_dependent_entry_and_at_least_its_ttl(
    target: tuple[str, bool], raw
) -> None:
    cache = make(target, default_ttl=30)
    try:
        edges = KS.dependents_key("price:1")
        await cache.set("cart:long", 1, ttl=LONG)
        await cache.add_dependency("cart:long", "price:1")  # default ttl 30 s < the entry's
        assert LONG * 1000 - 5_000 < await raw.pttl(edges) <= LONG * 1000
        await cache.add_dependency("cart:new", "price:1")  # not stored: default_ttl
        now_ms = await server_ms(raw)
        score = await raw.zscore(edges, "cart:new")
        assert now_ms + 25_000 < score <= now_ms + 30_000
        await cache.add_dependency("cart:new", "price:1", ttl=1)  # declared again: kept
        assert await raw.zscore(edges, "cart:new") == score
    finally:
        await cache.close()


async def test_an_expired_dependency_is_not_followed_and_its_set_goes(
    target: tuple[str, bool], raw
) -> None:
    cache = make(target)
    try:
        await cache.add_dependency("child:brief", "parent", ttl=SHORT)
        await cache.add_dependency("child:lasting", "parent", ttl=LONG)
        edges = KS.dependents_key("parent")

        async def live_edges() -> int:
            now = await server_ms(raw)
            return int(await raw.zcount(edges, f"({now}", "+inf"))

        deadline = time.monotonic() + DEADLINE
        while await live_edges() != 1:
            assert time.monotonic() < deadline, "the brief edge did not expire"
            await async_sleep(0.01)
        for key in ("parent", "child:brief", "child:lasting"):
            await cache.set(key, key, ttl=LONG)
        assert await cache.invalidate("parent") == 2  # parent and child:lasting
        assert await cache.get("child:brief") == "child:brief"
        assert await cache.get("child:lasting", MISSING) is MISSING

        # the next declaration trims the expired edge; the set expires with the last one
        await cache.add_dependency("child:other", "parent", ttl=SHORT)
        assert sorted(await raw.zrange(edges, 0, -1)) == [b"child:lasting", b"child:other"]
        await cache.remove_dependency("child:lasting", "parent")
        deadline = time.monotonic() + DEADLINE
        while await raw.exists(edges):
            assert time.monotonic() < deadline, "the dependents set outlived its edges"
            await async_sleep(0.01)
    finally:
        await cache.close()


def test_the_index_keys_stay_in_the_slot_of_their_owner() -> None:
    # every script call declares keys of one slot (a cluster refuses the rest): the members
    # of a tag live beside its version, the dependents of a key beside its data key
    assert key_slot(KS.tag_members_key("t:1").encode()) == key_slot(KS.tag_key("t:1").encode())
    assert key_slot(KS.tag_reclaim_key("t:1", "x").encode()) == key_slot(KS.tag_key("t:1").encode())
    assert key_slot(KS.dependents_key("k{1}").encode()) == key_slot(KS.data_key("k{1}").encode())
    assert KS.member_data_key(KS.tag_member("k{1}%")) == KS.data_key("k{1}%")
    long_key = "x" * 1000
    assert KS.member_data_key(KS.tag_member(long_key)) == KS.data_key(long_key)


async def test_many_writes_over_churning_keys_keep_the_indexes_to_the_live_entries(
    target: tuple[str, bool], raw
) -> None:
    # names come and go (each written a few times, then never again): the member sets and
    # the dependency sets hold about the live entries, not every name ever written
    cache = make(target)
    try:
        for round_ in range(6):
            keys = [f"churn:{round_}:{i}" for i in range(100)]
            for _ in range(3):
                await cache.set_many({key: 1 for key in keys}, ttl=SHORT, tags=["feed:a"])
            for key in keys[:10]:
                await cache.add_dependency(key, "feed-head", ttl=SHORT)
            await expired(
                raw,
                keys,
                (KS.tag_members_key("feed"), 0),
                (KS.tag_members_key("feed:a"), 0),
                (KS.dependents_key("feed-head"), 0),
            )
        await cache.set("churn:last", 1, ttl=LONG, tags=["feed:a"])
        await cache.add_dependency("churn:last", "feed-head", ttl=LONG)
        # 600 names written, 1 alive: each round's first write trimmed the round before,
        # or the set had expired with it
        for tag in ("feed", "feed:a"):
            assert await raw.zcard(KS.tag_members_key(tag)) == 1
        assert await raw.zcard(KS.dependents_key("feed-head")) == 1
    finally:
        await cache.close()
