"""Invalidation strategies on a real standalone server and a real cluster: tags (O(1),
hierarchical, reclaimed in the background), patterns, dependency cascades with cycles,
rules with templates, delays and conditions, the epoch, the audit stream, fenced writes.
Faults (killed servers, retries, dead letters, failover) are in test_invalidation_faults.

Several instances in one process stand for several processes: each has its own L1 and its
own bus listener. ``Cache`` runs the generated sync twin of this file.
"""

from __future__ import annotations

import pytest

from stratacache import (
    MISSING,
    AsyncCache,
    FencingTokenRejected,
    InvalidationRule,
    InvalidKeyError,
)
from stratacache._async.invalidator import RECLAIM_DELAY
from stratacache._keys import KeySpace

from concurrency import (
    AsyncEvent,
    AsyncTask,
    FakeClock,
    async_bus_settled,
    async_until,
    async_wait_event,
)

NS = "inv"
DEADLINE = 5.0


def make(target: tuple[str, bool], **options: object) -> AsyncCache:
    url, cluster = target
    options.setdefault("redis_timeout", 2.0)
    # the bus's own heartbeat, late on a starved CPU, would make L1 step aside for a moment
    # (the safe reaction, tested in test_bus.py) and these tests' L1 hits misses
    options.setdefault("heartbeat_timeout", 5.0)
    return AsyncCache(url, cluster=cluster, namespace=NS, **options)  # type: ignore[arg-type]


@pytest.fixture
async def trio(target: tuple[str, bool]):
    caches = [make(target) for _ in range(3)]
    for cache in caches:
        await cache._bus_started()
    yield caches
    for cache in caches:
        await cache.close()


async def settled(caches: list[AsyncCache]) -> None:
    """Wait until every instance has heard what every other one published so far, so a
    write's bus message cannot drop a key from an L1 after the test filled it."""
    for writer in caches:
        await async_bus_settled(writer, [c for c in caches if c is not writer], DEADLINE)


async def in_l1_everywhere(caches: list[AsyncCache], keys: list[str]) -> None:
    await settled(caches)
    for cache in caches:
        for key in keys:
            await cache.get(key)
            assert cache.l1.peek(key, MISSING) is not MISSING, key


async def gone_everywhere(caches: list[AsyncCache], keys: list[str]) -> None:
    """Every instance drops the keys from its L1 (via the bus) and reads them as misses."""
    for cache in caches:
        await async_until(
            lambda cache=cache: all(cache.l1.peek(k, MISSING) is MISSING for k in keys),
            DEADLINE,
        )
        for key in keys:
            assert await cache.get(key, MISSING) is MISSING, key


async def physically_gone(raw, keys: list[str]) -> bool:
    ks = KeySpace(NS)
    for key in keys:
        if await raw.exists(ks.data_key(key)):
            return False
    return True


def paused_loader(loading: AsyncEvent, release: AsyncEvent):
    """A loader that reads "old", then waits (as if slow) until ``release`` is set."""

    async def load() -> str:
        loading.set()
        await async_wait_event(release)
        return "old"

    return load


# -- tags -------------------------------------------------------------------------------------


async def test_fifteen_tagged_items_are_invalidated_everywhere(trio, raw) -> None:
    a, b, c = trio
    keys = [f"item:{i}" for i in range(15)]
    for key in keys:
        await a.set(key, key.upper(), tags=["catalog"])
    await a.set("untagged", 1)
    await in_l1_everywhere(trio, keys)

    assert await b.invalidate_tag("catalog") == 15
    await gone_everywhere(trio, keys)
    assert await c.get("untagged") == 1
    assert b.stats().invalidation.invalidations["tag"] == 1

    # the entries are misses at once; their bytes are deleted by the background reclaim
    await async_until(lambda: b.stats().invalidation.reclaim_pending == 0, DEADLINE)
    assert b.stats().invalidation.reclaimed_keys == 15
    assert await physically_gone(raw, keys)
    assert await b.keys_for_tag("catalog") == []


async def test_a_tag_invalidation_is_logical(target: tuple[str, bool], trio, raw) -> None:
    a, b, _ = trio
    await a.set("p:1", "one", tags=["shelf"])
    data_key = KeySpace(NS).data_key("p:1")
    blob = await raw.get(data_key)
    assert await b.invalidate_tags("shelf") == 1
    await async_until(lambda: b.stats().invalidation.reclaim_pending == 0, DEADLINE)
    # put the old bytes back, as if the reclaim had not reached them yet: the entry's
    # stamp predates the tag's version, so no instance, however fresh, may serve it
    await raw.set(data_key, blob)
    fresh = make(target)
    try:
        assert await fresh.get("p:1", MISSING) is MISSING
        assert await a.get("p:1", MISSING) is MISSING
        await a.set("p:1", "two", tags=["shelf"])  # a new write carries the new version
        assert await fresh.get("p:1") == "two"
    finally:
        await fresh.close()


async def test_a_key_written_again_after_its_tag_was_invalidated_survives_the_reclaim(
    trio, raw
) -> None:
    a, b, _ = trio
    keys = [f"r:{i}" for i in range(50)]
    for key in keys:
        await a.set(key, 1, tags=["batch"])
    # keep the reclaim from running until the keys are written again
    b._invalidator._stopping = True
    assert await b.invalidate_tag("batch") == 50
    # the writer stamps with the versions it knows: it must have heard of the invalidation
    # (a write racing it on another instance is stamped stale: a miss, never stale data)
    await settled(trio)
    for key in keys[:10]:
        await a.set(key, 2, tags=["batch"])
    b._invalidator._stopping = False
    await b._invalidator.reclaim_now()
    assert await physically_gone(raw, keys[10:])
    for key in keys[:10]:
        assert await b.get(key) == 2


async def test_the_reclaim_starts_after_a_delay_and_walks_the_tag_in_chunks(
    target: tuple[str, bool], trio, raw
) -> None:
    a, _, _ = trio
    clock = FakeClock()
    chunked = make(target, reclaim_chunk=10)
    chunked._invalidator._timer = clock  # the worker's own time
    try:
        await chunked._bus_started()
        keys = [f"bulk:{i}" for i in range(250)]
        await a.set_many({key: 1 for key in keys}, tags=["bulk"])
        assert await chunked.invalidate_tag("bulk") == 250
        # not yet due: the other instances' reads of the new version go first
        assert not await chunked._invalidator._work_once()
        assert chunked.stats().invalidation.reclaim_pending == 1
        assert await raw.exists(*(KeySpace(NS).data_key(k) for k in keys[:5])) == 5

        await settled([a, chunked])
        await a.set_many({key: 2 for key in keys[:20]}, tags=["bulk"])
        clock.advance(RECLAIM_DELAY)
        await async_until(lambda: chunked.stats().invalidation.reclaim_pending == 0, DEADLINE)
        assert chunked.stats().invalidation.reclaimed_keys == 250
        assert await physically_gone(raw, keys[20:])
        assert await chunked.get_many(keys[:20]) == {key: 2 for key in keys[:20]}
        # the member set the invalidation moved aside is deleted with the last chunk
        moved_aside = [k async for k in raw.scan_iter(match=f"{NS}:v1:r:*")]
        assert moved_aside == []
    finally:
        await chunked.close()


async def test_tags_are_hierarchical(trio) -> None:
    a, b, _ = trio
    await a.set("p42", 42, tags=["product:42"])
    await a.set("p43", 43, tags=["product:43"])
    await a.set("deep", 1, tags=["product:42:reviews"])
    await a.set("other", 0, tags=["productivity"])
    await in_l1_everywhere(trio, ["p42", "p43", "deep", "other"])

    assert await b.invalidate_tag("product:42") == 2  # p42 and the entry below it
    await gone_everywhere(trio, ["p42", "deep"])
    assert await a.get("p43") == 43

    assert await b.invalidate_tag("product") >= 1
    await gone_everywhere(trio, ["p43"])
    assert await a.get("other") == 0  # "productivity" is not below "product"


async def test_tag_names_are_literal(trio) -> None:
    a, b, _ = trio
    await a.set("star", 1, tags=["a*"])
    await a.set("plain", 2, tags=["ab"])
    await in_l1_everywhere(trio, ["star", "plain"])
    assert await b.invalidate_tag("a*") == 1
    await gone_everywhere(trio, ["star"])
    assert await a.get("plain") == 2
    assert await b.get("plain") == 2


async def test_an_entry_filled_while_its_tag_is_invalidated_is_stale_at_birth(trio) -> None:
    a, b, c = trio
    loading, release = AsyncEvent(), AsyncEvent()
    slow_loader = paused_loader(loading, release)

    task = AsyncTask(lambda: a.get_or_set("row", slow_loader, tags=["rows"]))
    await async_wait_event(loading)
    await b.invalidate_tag("rows")  # the database changed while the loader read
    release.set()
    assert await task.join() == "old"  # the caller gets what it loaded...
    # ...but nobody else may be served it from L2 or L1
    assert await c.get_or_set("row", lambda: "new", tags=["rows"]) == "new"
    await async_until(lambda: a.l1.peek("row", MISSING) in (MISSING, "new"), DEADLINE)


async def test_a_tagged_fill_without_the_bus_is_stale_at_birth_too(target) -> None:
    # no bus: the fill's stamps are read from Redis before the loader runs (on a standalone
    # server in the script that takes the lease), and the tagged write (one script there)
    # stores them as read
    a, b = make(target, bus=False), make(target, bus=False)
    try:
        loading, release = AsyncEvent(), AsyncEvent()
        task = AsyncTask(
            lambda: a.get_or_set("row", paused_loader(loading, release), tags=["rows"])
        )
        await async_wait_event(loading)
        await b.invalidate_tag("rows")  # the invalidation during the load wins
        release.set()
        assert await task.join() == "old"
        assert await b.get_or_set("row", lambda: "new", tags=["rows"]) == "new"
        a.l1.clear()
        assert await a.get("row") == "new"
        assert a._tier is not None
        assert await a._tier.tag_members("rows") == ["row"]  # registered by the write
    finally:
        await a.close()
        await b.close()


async def test_tag_versions_survive_a_bus_flush(trio) -> None:
    a, b, _ = trio
    await a.set("k", 1, tags=["t"])
    await b.invalidate_tag("t")
    await async_until(lambda: b.stats().invalidation.reclaim_pending == 0, DEADLINE)
    # a flush (as after a lost message) forgets the versions; they are read again
    a._flush_l1()
    assert await a.get("k", MISSING) is MISSING
    await a.set("k", 2, tags=["t"])
    assert await b.get("k") == 2


# -- patterns -----------------------------------------------------------------------------------


async def test_pattern_invalidation_reaches_l2_and_every_l1(trio, raw) -> None:
    a, b, _ = trio
    users = [f"user:{i}" for i in range(30)]
    for key in users:
        await a.set(key, key)
    await a.set("order:1", "o")
    await a.set("user", "bare")
    await in_l1_everywhere(trio, [*users[:5], "order:1"])

    assert await b.invalidate_pattern("user:*") == 30
    await gone_everywhere(trio, users)
    assert await physically_gone(raw, users)
    assert await a.get("order:1") == "o"
    assert await a.get("user") == "bare"


async def test_pattern_uses_redis_glob_rules_on_both_tiers(trio) -> None:
    a, b, _ = trio
    for key in ("k1", "k2", "kx", "k*"):
        await a.set(key, key)
    await in_l1_everywhere(trio, ["k1", "k2", "kx", "k*"])
    assert await b.invalidate_pattern("k[^x]") == 3  # k1, k2 and the literal "k*"
    await gone_everywhere(trio, ["k1", "k2", "k*"])
    assert await a.get("kx") == "kx"
    assert await b.invalidate_pattern("k\\*") == 0  # an escaped star is a literal star


async def test_pattern_invalidation_revokes_leases_of_loads_in_flight(trio) -> None:
    a, b, c = trio
    loading, release = AsyncEvent(), AsyncEvent()
    slow_loader = paused_loader(loading, release)

    task = AsyncTask(lambda: a.get_or_set("feed:7", slow_loader))
    await async_wait_event(loading)
    await b.invalidate_pattern("feed:*")
    release.set()
    assert await task.join() == "old"
    assert a.stats().fills_refused == 1
    assert await c.get("feed:7", MISSING) is MISSING


# -- dependencies ---------------------------------------------------------------------------


async def test_a_chain_of_eight_cascades_to_eight(trio) -> None:
    a, b, _ = trio
    chain = [f"node:{i}" for i in range(8)]
    for key in chain:
        await a.set(key, key)
    for parent, child in zip(chain, chain[1:]):
        await a.add_dependency(child, parent)
    await in_l1_everywhere(trio, chain)

    assert await b.invalidate_related("node:0") == 8
    await gone_everywhere(trio, chain)
    stats = b.stats().invalidation
    assert stats.cascade_depth.max == 7
    assert (stats.invalidations["related"], stats.invalidations["cascaded"]) == (1, 7)
    assert stats.cycles_detected == 0


async def test_invalidate_cascades_to_dependents_too(trio) -> None:
    a, b, _ = trio
    await a.set("price:1", 10)
    await a.set("cart:9", [1])
    await a.add_dependency("cart:9", "price:1")
    assert await b.invalidate("price:1") == 2
    await gone_everywhere(trio, ["price:1", "cart:9"])
    await a.remove_dependency("cart:9", "price:1")
    await a.set("price:1", 11)
    await a.set("cart:9", [2])
    assert await b.invalidate("price:1") == 1
    assert await b.get("cart:9") == [2]


async def test_a_dependency_cycle_ends_and_is_reported(trio) -> None:
    a, b, _ = trio
    ring = ["r:a", "r:b", "r:c"]
    for key in ring:
        await a.set(key, key)
    await a.add_dependency("r:b", "r:a")
    await a.add_dependency("r:c", "r:b")
    await a.add_dependency("r:a", "r:c")  # closes the ring
    assert await b.invalidate_related("r:b") == 3
    await gone_everywhere(trio, ring)
    assert b.stats().invalidation.cycles_detected == 1


async def test_a_diamond_is_not_a_cycle(trio) -> None:
    a, b, _ = trio
    for key in ("top", "left", "right", "bottom"):
        await a.set(key, key)
    await a.add_dependency("left", "top")
    await a.add_dependency("right", "top")
    await a.add_dependency("bottom", "left", "right")
    assert await b.invalidate_related("top") == 4
    assert b.stats().invalidation.cycles_detected == 0
    assert b.stats().invalidation.cascade_depth.max == 2


# -- rules ---------------------------------------------------------------------------------------


async def test_a_rule_templates_its_targets_from_the_trigger(trio) -> None:
    a, b, _ = trio
    b.add_rule(InvalidationRule("user:{id}", ["user_posts:{id}", "feed:{id}:*"]))
    for key in ("user:7", "user_posts:7", "feed:7:a", "feed:7:b", "user_posts:8"):
        await a.set(key, key)
    assert await b.invalidate("user:7") == 1
    await gone_everywhere(trio, ["user:7", "user_posts:7", "feed:7:a", "feed:7:b"])
    assert await a.get("user_posts:8") == "user_posts:8"
    assert b.stats().invalidation.invalidations["rule"] == 1


async def test_a_rule_with_a_delay_fires_twice(trio) -> None:
    a, b, _ = trio
    b.add_rule(InvalidationRule("user:{id}", ["profile:{id}"], delay=0.2))
    await a.set("profile:1", "v1")
    await b.invalidate("user:1")
    await gone_everywhere(trio, ["profile:1"])
    # a reader refills from a lagging source in between: the second invalidation undoes it
    await a.set("profile:1", "stale")
    await async_until(lambda: b.stats().invalidation.invalidations["delayed"] == 1, DEADLINE)
    await gone_everywhere(trio, ["profile:1"])
    assert b.stats().invalidation.invalidations["rule"] == 1


async def test_a_rule_whose_condition_is_false_does_not_fire(trio) -> None:
    a, b, _ = trio
    seen: list[str] = []

    def only_admins(key: str) -> bool:
        seen.append(key)
        return key.endswith(":admin")

    b.add_rule(InvalidationRule("user:*", ["dashboard"], delay=0.05, condition=only_admins))
    await a.set("dashboard", "d")
    await b.invalidate("user:bob")
    assert seen == ["user:bob"]
    assert await a.get("dashboard") == "d"
    assert b.stats().invalidation.invalidations["rule"] == 0
    assert b.stats().invalidation.queue_size == 0  # nothing scheduled either
    await b.invalidate("user:admin")
    await gone_everywhere(trio, ["dashboard"])


async def test_rules_that_trigger_each_other_end(trio) -> None:
    a, b, _ = trio
    b.add_rule(InvalidationRule("ping:{n}", ["pong:{n}"]))
    b.add_rule(InvalidationRule("pong:{n}", ["ping:{n}"]))
    await a.set("ping:1", 1)
    await a.set("pong:1", 1)
    await b.invalidate("ping:1")
    await gone_everywhere(trio, ["ping:1", "pong:1"])


def test_rules_check_their_arguments() -> None:
    with pytest.raises(TypeError):
        InvalidationRule("user:{id}", "profile:{id}")  # a str, not a list of targets
    with pytest.raises(ValueError, match="at least one"):
        InvalidationRule("user:{id}", [])
    with pytest.raises(ValueError, match="does not capture"):
        InvalidationRule("user:{id}", ["profile:{name}"])
    with pytest.raises(TypeError):
        InvalidationRule("user:{id}", ["x"], condition=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        InvalidationRule("user:{id}", ["x"], delay=-1)
    with pytest.raises(InvalidKeyError):
        InvalidationRule("", ["x"])
    rule = InvalidationRule("user:{id}:{kind}", ["x:{kind}:{id}"])
    assert rule.match("user:1:admin") == {"id": "1", "kind": "admin"}
    assert rule.match("user:1") is None
    assert rule.render({"id": "1", "kind": "admin"}) == ["x:admin:1"]


# -- epoch, audit, metrics, input checks ----------------------------------------------------


async def test_invalidate_all_makes_every_entry_a_miss_everywhere(trio) -> None:
    a, b, c = trio
    keys = [f"e{i}" for i in range(10)]
    for key in keys:
        await a.set(key, key, tags=["x"] if key == "e0" else ())
    await in_l1_everywhere(trio, keys)
    await b.invalidate_all(reason="schema change")
    await gone_everywhere(trio, keys)
    await a.set("e1", "new")
    assert await c.get("e1") == "new"
    assert b.stats().invalidation.epoch_bumps == 1


async def test_every_invalidation_is_audited(trio) -> None:
    a, b, _ = trio
    await a.set("k", 1, tags=["t"])
    await b.invalidate("k", reason="price update")
    await b.invalidate_tag("t")
    await b.invalidate_pattern("q:*")
    records = await b.audit_log(10)
    assert [(r.action, r.target) for r in records[:3]] == [
        ("pattern", "q:*"),
        ("tag", "t"),
        ("key", "k"),
    ]
    key_record = records[2]
    assert key_record.count == 1
    assert key_record.reason == "price update"
    assert key_record.instance == b._instance
    assert key_record.time > 0


async def test_the_audit_stream_is_bounded(target: tuple[str, bool]) -> None:
    cache = make(target, audit_maxlen=5)
    try:
        for i in range(300):
            await cache.invalidate(f"k{i}")
        records = await cache.audit_log(1000)
        # MAXLEN ~ trims whole nodes of the stream: bounded, though not to exactly 5
        assert 5 <= len(records) <= 150
        assert records[0].target == "k299"
    finally:
        await cache.close()


async def test_invalidation_metrics(trio) -> None:
    _, b, _ = trio
    await b.invalidate("a")
    await b.invalidate_tags("t1", "t2")
    await b.invalidate_pattern("p*")
    stats = b.stats().invalidation
    assert stats.invalidations["key"] == 1
    assert stats.invalidations["tag"] == 1
    assert stats.invalidations["pattern"] == 1
    assert stats.latency.count == 3
    assert stats.failures == {"primary": 0, "failover": 0}
    assert stats.queue_size == 0
    assert stats.dead_letters == 0
    assert b.stats().to_dict()["invalidation"]["invalidations"]["key"] == 1


async def test_bad_arguments_fail_before_any_io(trio) -> None:
    cache = trio[0]
    with pytest.raises(TypeError):
        await cache.invalidate_tag(123)  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        await cache.invalidate("")
    with pytest.raises(ValueError):
        await cache.invalidate_pattern("a\\")
    with pytest.raises(ValueError, match="at least one"):
        await cache.add_dependency("k")
    with pytest.raises(TypeError):
        await cache.invalidate("k", reason=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cache.add_rule("user:*")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await cache.audit_log(0)
    with pytest.raises(TypeError):
        await cache.set("k", 1, fence="7")  # type: ignore[arg-type]
    assert await cache.invalidate_tags() == 0


async def test_l1_only_caches_invalidate_locally() -> None:
    cache = AsyncCache(None, namespace=NS)
    try:
        await cache.set("a:1", 1, tags=["grp:x"])
        await cache.set("a:2", 2)
        cache.add_rule(InvalidationRule("a:{n}", ["b:{n}"], delay=0.05))
        await cache.set("b:2", 2)
        assert await cache.invalidate_tag("grp") == 1
        assert await cache.get("a:1", MISSING) is MISSING
        assert await cache.invalidate("a:2") == 1
        assert await cache.get("b:2", MISSING) is MISSING
        await cache.set("b:2", "refilled")
        await async_until(lambda: cache.l1.peek("b:2", MISSING) is MISSING, DEADLINE)
        assert cache.stats().invalidation.invalidations["delayed"] == 1
        await cache.set("c:1", 1)
        assert await cache.invalidate_pattern("c:*") == 1
        with pytest.raises(ValueError, match="Redis"):
            await cache.add_dependency("x", "y")
    finally:
        await cache.close()


# -- distributed lock through the cache ------------------------------------------------------


async def test_fenced_writes_refuse_an_older_token(trio) -> None:
    a, b, _ = trio
    async with a.lock("report", ttl=5) as first:
        old = first.token
    async with b.lock("report", ttl=5) as second:
        assert second.token > old
        await b.set("report", "new", fence=second.token)
    with pytest.raises(FencingTokenRejected):
        await a.set("report", "late", fence=old)
    assert await a.get("report") == "new"
