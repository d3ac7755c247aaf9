"""Cancellation at every await of the async read path gives back what it took.

An L1 ticket, a lease in Redis and the in-flight slot of a single flight are each taken
before an await and must be given back on every way out. Each test freezes the real
Redis server (SIGSTOP) just as the cache sends one chosen command, so the call is
blocked at a known await; cancels the task there; lets Redis run again; and checks that
nothing is left: no outstanding ticket for the key (``L1.release(0, key)`` only succeeds
while one is), an empty flights map, no lease of ours in Redis, and a later fill of the
key is installed in L1. Async only: a thread cannot be cancelled. Both L1
implementations (ids ``c`` / ``py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from stratacache import AsyncCache
from stratacache._keys import KeySpace
from stratacache._primitives import AsyncRedis
from stratacache.testing import RedisServerProcess

from concurrency import FakeClock
from l1_impls import IMPL_IDS, load_l1

NS = "cancel"
KEYS = KeySpace(NS)
_Args = tuple[Any, ...]


class PausingRedis(AsyncRedis):  # type: ignore[misc]
    """A real client that freezes its server (SIGSTOP) just before it sends the command
    chosen by :meth:`pause_before`: the caller is then blocked in that command."""

    server: RedisServerProcess
    trigger: Callable[[_Args], bool] | None = None
    countdown = 0
    paused: asyncio.Event

    def pause_before(self, matches: Callable[[_Args], bool], nth: int = 1) -> asyncio.Event:
        self.trigger, self.countdown, self.paused = matches, nth, asyncio.Event()
        return self.paused

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.trigger is not None and self.trigger(args):
            self.countdown -= 1
            if self.countdown == 0:
                self.trigger = None
                self.server.pause()
                self.paused.set()
        return await super().execute_command(*args, **options)


def data_get(args: _Args) -> bool:
    return args[0] == "GET" and str(args[1]).startswith(f"{NS}:v1:d:")


def data_mget(args: _Args) -> bool:
    return args[0] == "MGET" and str(args[1]).startswith(f"{NS}:v1:d:")


def versions_mget(args: _Args) -> bool:
    """The tag-version read (the namespace epoch comes first)."""
    return args[0] == "MGET" and str(args[1]) == KEYS.meta_key("epoch")


def script(cache: AsyncCache, name: str) -> Callable[[_Args], bool]:
    sha = getattr(cache._tier, name).sha
    return lambda args: args[0] == "EVALSHA" and args[1] == sha


def awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The names of the coroutines ``task`` is suspended in, outermost first."""
    names = []
    coro: Any = task.get_coro()
    while coro is not None and hasattr(coro, "cr_frame"):
        if coro.cr_frame is not None:
            names.append(coro.cr_frame.f_code.co_name)
        coro = coro.cr_await
    return names


@pytest.fixture(params=IMPL_IDS)
def l1_class(request: pytest.FixtureRequest) -> Any:
    return load_l1(request.param)


@pytest.fixture
def server(redis_server_factory: Callable[..., RedisServerProcess]):
    s = redis_server_factory()
    yield s
    if s.running:
        s.resume()  # a failed test must not leave it frozen for the teardown


@pytest.fixture
async def client(server: RedisServerProcess):
    # a long time budget: a frozen server blocks the call instead of timing it out
    c = PausingRedis.from_url(server.url, socket_timeout=30, socket_connect_timeout=30)
    c.server = server
    yield c
    await c.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def cache(client: PausingRedis, l1_class: Any, clock: FakeClock):
    # no bus: every read checks tag versions in Redis, an await of its own
    # a lease outlives every deadline of these tests: only a give-back removes it
    c = AsyncCache(client, namespace=NS, bus=False, lease_wait=30, lease_ttl=300, clock=clock)
    c._l1 = l1_class(1000)  # the implementation under test (the async cache binds none)
    yield c
    await c.close()


async def blocked_at(
    client: PausingRedis,
    matches: Callable[[_Args], bool],
    call: Callable[[], Awaitable[Any]],
    frame: str,
    nth: int = 1,
) -> asyncio.Task[Any]:
    """``call`` as a task, blocked waiting for the reply to the ``nth`` command that
    ``matches`` (Redis frozen just before it was sent), inside ``frame``."""
    paused = client.pause_before(matches, nth)
    task = asyncio.ensure_future(call())
    waiter = asyncio.ensure_future(paused.wait())
    await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    assert paused.is_set(), f"the call ended without sending the command: {task!r}"
    # Cancel once the command is sent and the call waits for the reply. (Earlier, redis-py
    # is in asyncio.wait_for around the socket write, which on Python < 3.12 drops a
    # cancellation that arrives as the write completes: the call would just go on.)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while "read_response" not in awaiting(task):
        assert loop.time() < deadline, awaiting(task)
        await asyncio.sleep(0.001)
    assert frame in awaiting(task), awaiting(task)
    return task


async def cancel_and_resume(client: PausingRedis, task: asyncio.Task[Any]) -> None:
    """Cancel ``task``, let Redis run again, and wait for the task to end cancelled."""
    task.cancel()
    await asyncio.sleep(0)
    client.server.resume()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)


async def cancel_at(
    client: PausingRedis,
    matches: Callable[[_Args], bool],
    call: Callable[[], Awaitable[Any]],
    frame: str,
    nth: int = 1,
) -> None:
    """:func:`blocked_at`, then :func:`cancel_and_resume`."""
    await cancel_and_resume(client, await blocked_at(client, matches, call, frame, nth))


async def assert_nothing_left(cache: AsyncCache, key: str) -> None:
    with pytest.raises(ValueError, match="no outstanding ticket"):
        cache.l1.release(0, key)  # succeeds only while a ticket for key is out
    assert cache._flights == {}
    value = await cache.get_or_set(key, lambda: "refilled")
    assert cache.l1.peek(key) == value  # a later fill is installed


async def lease_of(client: PausingRedis, key: str) -> bytes | None:
    return await client.get(KEYS.lease_key(key))  # type: ignore[no-any-return]


async def until_no_lease(client: PausingRedis, key: str) -> None:
    # the cancelled call's give-back and any command Redis ran after resuming are done
    # only once Redis has answered them: poll, with a deadline
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while await lease_of(client, key) is not None:
        assert loop.time() < deadline, "the lease was not given back"
        await asyncio.sleep(0.01)


# -- get / get_many ------------------------------------------------------------------------


async def test_get_cancelled_in_the_l2_read(cache: AsyncCache, client: PausingRedis) -> None:
    await cache.set("k", "v")
    cache.l1.clear()
    await cancel_at(client, data_get, lambda: cache.get("k"), "_get_after_l1_miss")
    await assert_nothing_left(cache, "k")


async def test_get_many_cancelled_in_the_mget(cache: AsyncCache, client: PausingRedis) -> None:
    await cache.set_many({"a": "v", "b": "v"})
    cache.l1.clear()
    await cancel_at(client, data_mget, lambda: cache.get_many(["a", "b", "c"]), "get_many")
    for key in ("a", "b", "c"):
        await assert_nothing_left(cache, key)


async def test_get_many_cancelled_while_it_checks_tag_versions(
    cache: AsyncCache, client: PausingRedis
) -> None:
    await cache.set_many({"a": "v", "b": "v"}, tags=["t"])
    cache.l1.clear()
    await cancel_at(
        client, versions_mget, lambda: cache.get_many(["a", "b", "c"]), "_check_versions"
    )
    for key in ("a", "b", "c"):
        await assert_nothing_left(cache, key)
    assert await cache.get_many(["a", "b"]) == {"a": "v", "b": "v"}


# -- get_or_set: each await of the leader ---------------------------------------------------


async def test_get_or_set_cancelled_in_the_l2_read_hands_over_to_a_waiter(
    cache: AsyncCache, client: PausingRedis
) -> None:
    leader = await blocked_at(
        client,
        script(cache, "_read_else_lease_versions"),
        lambda: cache.get_or_set("k", lambda: "v"),
        "_lookup",
    )
    waiter = asyncio.ensure_future(cache.get_or_set("k", lambda: "from-waiter"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while cache.stats().coalesced < 1:
        assert loop.time() < deadline
        await asyncio.sleep(0.001)
    await cancel_and_resume(client, leader)
    assert await asyncio.wait_for(waiter, 30) == "from-waiter"  # it took over
    await assert_nothing_left(cache, "k")


async def test_get_or_set_cancelled_checking_the_l2_entry(
    cache: AsyncCache, client: PausingRedis
) -> None:
    # the first step read the versions of the tags the call names (none): the entry's
    # own tag is checked with a version read of its own
    await cache.set("k", "v", tags=["t"])
    cache.l1.clear()
    await cancel_at(client, versions_mget, lambda: cache.get_or_set("k", lambda: "x"), "_lookup")
    await assert_nothing_left(cache, "k")


async def test_get_or_set_cancelled_holding_a_fresh_lease_in_take_lease(
    cache: AsyncCache, client: PausingRedis, clock: FakeClock
) -> None:
    # an entry that is logically expired but still in Redis: the leader takes the lease
    # and reads the entry in one step, then checks its tags (a version read; the first
    # step read the versions along with the entry)
    await cache.set("k", "old", ttl=60)
    cache.l1.clear()
    clock.advance(120)
    await cancel_at(
        client,
        versions_mget,
        lambda: cache.get_or_set("k", lambda: "v"),
        "_take_lease",
    )
    await until_no_lease(client, "k")
    await assert_nothing_left(cache, "k")


async def test_get_or_set_cancelled_while_polling_a_lease_held_elsewhere(
    cache: AsyncCache, client: PausingRedis
) -> None:
    await client.set(KEYS.lease_key("k"), b"another-process", px=60_000)
    await cancel_at(
        client,
        script(cache, "_read_or_lease"),
        lambda: cache.get_or_set("k", lambda: "v"),
        "_take_lease",
        nth=2,  # the first poll found the lease taken; the second one is frozen
    )
    assert await lease_of(client, "k") == b"another-process"  # not ours to give back
    with pytest.raises(ValueError, match="no outstanding ticket"):
        cache.l1.release(0, "k")
    assert cache._flights == {}
    await client.delete(KEYS.lease_key("k"))
    await assert_nothing_left(cache, "k")


async def test_get_or_set_cancelled_reading_versions_for_its_stamps(
    cache: AsyncCache, client: PausingRedis, clock: FakeClock
) -> None:
    # a lease taken in the first step comes with the stamps; one taken over an expired
    # entry (in _take_lease, after its version check) reads them apart
    await cache.set("k", "old", ttl=60, tags=["t"])
    cache.l1.clear()
    clock.advance(120)
    await cancel_at(
        client,
        versions_mget,
        lambda: cache.get_or_set("k", lambda: "v", tags=["t"]),
        "_stamps",
        nth=2,
    )
    await until_no_lease(client, "k")
    await assert_nothing_left(cache, "k")


async def test_get_or_set_cancelled_in_the_loader(cache: AsyncCache, client: PausingRedis) -> None:
    started = asyncio.Event()

    async def loader() -> str:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    task = asyncio.ensure_future(cache.get_or_set("k", loader))
    await asyncio.wait_for(started.wait(), 30)
    assert await lease_of(client, "k") is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    assert await lease_of(client, "k") is None  # given back before the call ended
    await assert_nothing_left(cache, "k")


async def test_get_or_set_cancelled_writing_its_fill(
    cache: AsyncCache, client: PausingRedis
) -> None:
    await cancel_at(
        client,
        script(cache, "_write_if_lease"),
        lambda: cache.get_or_set("k", lambda: "v"),
        "_fill",
    )
    await until_no_lease(client, "k")  # consumed by the write, or given back
    await assert_nothing_left(cache, "k")


async def test_a_decorated_function_cancelled_in_the_l2_read(
    cache: AsyncCache, client: PausingRedis
) -> None:
    @cache.cached(key="item:{n}")
    async def item(n: int) -> str:
        return "v"

    await cancel_at(
        client, script(cache, "_read_else_lease_versions"), lambda: item(1), "_lookup"
    )
    await assert_nothing_left(cache, "item:1")
    assert await item(1) == "refilled"  # the entry the later fill installed
