"""The distributed lock and fenced writes on real Redis (a standalone server and a cluster;
faults on private servers). DistributedLock runs the generated twin of this file, with
threads where this one has tasks.

Lease lengths are short (0.2-2 s) so that waiting for a lease to run out stays cheap;
every other wait polls or waits for an event.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from redis.exceptions import ResponseError

from stratacache._async.lock import AsyncDistributedLock
from stratacache._errors import LockLost, LockTimeout, RedisUnavailableError
from stratacache._keys import KeySpace
from stratacache._lock_scripts import WRITE_FENCED
from stratacache._primitives import (
    AsyncRedis,
    AsyncRedisCluster,
    async_close_client,
    async_reconnect_once,
    async_sleep,
)
from stratacache.testing import free_port

from concurrency import AsyncTask, FakeClock, async_until

KEYS = KeySpace("locks")
NAME = "nightly-report"
LOCK_KEY = KEYS.lock_key(NAME)
COUNTER_KEY = KEYS.fence_counter_key(NAME)
ENTRY = "report"
ENTRY_KEYS = [KEYS.data_key(ENTRY), KEYS.lease_key(ENTRY), KEYS.fence_key(ENTRY)]


@pytest.fixture
async def connect(target: tuple[str, bool]):
    """``connect(**options)`` opens a client on the target; all are closed afterwards."""
    url, cluster = target
    opened = []

    def open_client(**options: object):
        if cluster:
            client = AsyncRedisCluster.from_url(url, **options)
        else:
            client = AsyncRedis.from_url(url, retry=async_reconnect_once(), **options)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await async_close_client(client)


def make_lock(client, **options: object) -> AsyncDistributedLock:
    return AsyncDistributedLock(client, KEYS, NAME, **options)  # type: ignore[arg-type]


async def write_fenced(script, token: int, blob: bytes) -> int:
    return int(await script(keys=ENTRY_KEYS, args=[token, blob, 60_000]))


# -- arguments -------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    ({"name": 7}, TypeError),
    ({"name": ""}, ValueError),
    ({"name": "x" * 2000}, ValueError),
    ({"name": "a\ud800"}, ValueError),
    ({"ttl": 0}, ValueError),
    ({"ttl": -1.0}, ValueError),
    ({"ttl": float("nan")}, ValueError),
    ({"ttl": float("inf")}, ValueError),
    ({"ttl": "10"}, TypeError),
    ({"ttl": True}, TypeError),
    ({"blocking_timeout": -0.5}, ValueError),
    ({"blocking_timeout": float("nan")}, ValueError),
    ({"blocking_timeout": "1"}, TypeError),
    ({"auto_extend": "yes"}, TypeError),
    ({"auto_extend": None}, TypeError),
    ({"keyspace": "locks"}, TypeError),
    ({"client": object()}, TypeError),
    ({"client": None}, TypeError),
]


@pytest.mark.parametrize(("bad", "error"), BAD_ARGUMENTS)
async def test_bad_arguments_are_rejected_before_any_io(
    bad: dict[str, object], error: type[Exception]
) -> None:
    # nothing listens on this port: any I/O would raise ConnectionError, not these
    dead = AsyncRedis(
        host="127.0.0.1", port=free_port(), retry=async_reconnect_once(), socket_connect_timeout=0.2
    )
    arguments: dict[str, object] = {"client": dead, "keyspace": KEYS, "name": NAME, **bad}
    try:
        with pytest.raises(error):
            AsyncDistributedLock(**arguments)  # type: ignore[arg-type]
    finally:
        await async_close_client(dead)


async def test_arguments_that_are_fine(target: tuple[str, bool], connect) -> None:
    client = connect()
    lock = AsyncDistributedLock(
        client, KEYS, "{odd}%name", ttl=timedelta(seconds=2), blocking_timeout=0
    )
    assert lock.name == "{odd}%name"
    assert not lock.held and not lock.lost
    assert "unlocked" in repr(lock)
    async with lock:
        assert lock.held
        assert await client.exists(KEYS.lock_key("{odd}%name")) == 1
    assert "released" in repr(lock)


async def test_misuse_is_a_runtime_error(target: tuple[str, bool], connect) -> None:
    lock = make_lock(connect(), ttl=5)
    with pytest.raises(RuntimeError):
        lock.token  # noqa: B018
    with pytest.raises(RuntimeError):
        lock.check()
    with pytest.raises(RuntimeError):
        await lock.release()
    await lock.acquire()
    with pytest.raises(RuntimeError, match="already acquired"):
        await lock.acquire()
    await lock.release()
    with pytest.raises(RuntimeError, match="not acquired"):
        await lock.release()
    with pytest.raises(RuntimeError):
        lock.check()


# -- exclusion and tokens ----------------------------------------------------------------------


async def test_mutual_exclusion(target: tuple[str, bool], connect) -> None:
    raw = connect()
    first = make_lock(connect(), ttl=5)
    second = make_lock(connect(), ttl=5, blocking_timeout=0)
    token = await first.acquire()
    assert token == first.token >= 1
    assert first.held and not first.lost
    with pytest.raises(LockTimeout):
        await second.acquire()
    with pytest.raises(LockTimeout):
        async with second:
            pytest.fail("entered a held lock")
    assert not second.held
    assert first.held  # failed attempts change nothing
    await first.release()
    assert not first.held and not first.lost
    assert await raw.exists(LOCK_KEY) == 0

    async with second as inside:
        assert inside is second and second.held
        assert second.token > token
        again = make_lock(connect(), ttl=5, blocking_timeout=0)
        with pytest.raises(LockTimeout):
            await again.acquire()
    assert await raw.exists(LOCK_KEY) == 0
    # the same instance can be acquired again, with a new token
    async with first:
        assert first.token > second.token


async def test_blocking_acquire_waits_for_a_release_and_times_out(
    target: tuple[str, bool], connect
) -> None:
    holder = make_lock(connect(), ttl=5)
    await holder.acquire()

    # a clock that moves 10 ms per read: the timeout is reached after a known number of
    # attempts, however slowly this machine runs them (each pause is real but short)
    ticks = FakeClock()

    def ticking() -> float:
        ticks.advance(0.01)
        return ticks()

    impatient = make_lock(connect(), ttl=5, blocking_timeout=0.1, timer=ticking)
    start = ticks()
    with pytest.raises(LockTimeout, match=r"within 0\.1 s"):
        await impatient.acquire()
    assert ticks() - start > 0.1  # it kept trying for the whole timeout, by its clock
    assert not impatient.held

    reads: list[float] = []

    def timer() -> float:
        reads.append(1.0)
        return time.monotonic()

    patient = make_lock(connect(), ttl=5, blocking_timeout=10, timer=timer)
    waiting = AsyncTask(patient.acquire)
    # deadline + (start, retry) of a failed attempt + the start of the next one
    await async_until(lambda: len(reads) >= 4)
    assert not patient.held
    await holder.release()
    token = await waiting.join()
    assert token == patient.token > holder.token
    assert patient.held
    await patient.release()


async def test_tokens_strictly_increase_also_after_a_lock_expired(
    target: tuple[str, bool], connect
) -> None:
    raw = connect()
    tokens: list[int] = []
    lock = make_lock(connect(), ttl=5)
    for _ in range(3):
        async with lock:
            tokens.append(lock.token)
    async with make_lock(connect(), ttl=5) as other:
        tokens.append(other.token)

    # a holder that never releases: its lease runs out by itself on the server
    expiring = make_lock(connect(), ttl=0.2, auto_extend=False)
    tokens.append(await expiring.acquire())
    successor = make_lock(connect(), ttl=5, blocking_timeout=5)
    tokens.append(await successor.acquire())  # possible only once the lease ran out
    assert expiring.lost and not expiring.held
    with pytest.raises(LockLost):
        await expiring.release()
    await successor.release()

    assert tokens == sorted(set(tokens)), tokens
    assert len(tokens) == 6
    assert await raw.pttl(COUNTER_KEY) == -1  # the counter never expires
    async with lock:
        assert lock.token > tokens[-1]


async def test_releasing_a_lost_lock_keeps_the_new_holders_key(
    target: tuple[str, bool], connect
) -> None:
    raw = connect()
    old = make_lock(connect(), ttl=0.2, auto_extend=False)
    await old.acquire()
    new = make_lock(connect(), ttl=5, blocking_timeout=5)
    await new.acquire()  # after old's lease ran out
    value = await raw.get(LOCK_KEY)
    assert value is not None

    with pytest.raises(LockLost, match="another holder"):
        await old.release()
    assert await raw.get(LOCK_KEY) == value
    assert 0 < await raw.pttl(LOCK_KEY) <= 5000
    assert old.lost and not old.held
    assert new.held
    await new.release()  # still ours: no error
    assert await raw.exists(LOCK_KEY) == 0


async def test_check_follows_the_local_clock(target: tuple[str, bool], connect) -> None:
    raw = connect()
    clock = FakeClock()
    lock = make_lock(connect(), ttl=10, auto_extend=False, timer=clock)
    await lock.acquire()
    lock.check()
    clock.advance(9.5)  # within the lease minus the drift margin (1 % + 2 ms)
    lock.check()
    assert lock.held
    clock.advance(0.5)  # the lease may have run out on the server by now
    assert lock.lost and not lock.held
    with pytest.raises(LockLost, match="may have run out"):
        lock.check()
    # lost is sticky: the release deletes the key (still ours) yet reports the loss
    assert await raw.exists(LOCK_KEY) == 1
    with pytest.raises(LockLost):
        await lock.release()
    assert await raw.exists(LOCK_KEY) == 0


# -- extension ---------------------------------------------------------------------------------


async def test_auto_extension_keeps_a_short_lease_alive(target: tuple[str, bool], connect) -> None:
    raw = connect()
    # Two seconds: the worker renews every 2/3 s, so a scheduling stall of more than a
    # second on a busy machine is tolerated; the test waits on renewals, not on a duration.
    lock = make_lock(connect(), ttl=2)
    contender = make_lock(connect(), ttl=2, blocking_timeout=0)
    async with lock:
        token = lock.token
        renewals = 0
        last = await raw.pttl(LOCK_KEY)
        deadline = time.monotonic() + 30
        while renewals < 3:  # three renewals, a third of the ttl apart: it outlived its ttl
            assert time.monotonic() < deadline, f"{renewals} renewals seen"
            pttl = await raw.pttl(LOCK_KEY)
            assert 0 < pttl <= 2000  # never gone, never longer than one lease
            if pttl > last:  # only an extension moves the expiry later
                renewals += 1
            last = pttl
            with pytest.raises(LockTimeout):
                await contender.acquire()
            lock.check()
            await async_sleep(0.05)
        assert lock.held and lock.token == token
    assert not lock.lost
    assert await raw.exists(LOCK_KEY) == 0
    async with contender:
        assert contender.token > token


async def test_a_holder_whose_lease_vanished_is_told_and_fenced_off(
    target: tuple[str, bool], connect
) -> None:
    raw = connect()
    write = raw.register_script(WRITE_FENCED)
    holder = make_lock(connect(), ttl=0.5)
    contender = make_lock(connect(), ttl=5, blocking_timeout=5)
    with pytest.raises(LockLost):
        async with holder:
            old_token = holder.token
            await raw.delete(LOCK_KEY)  # the lease is gone (as after a failover that lost it)
            new_token = await contender.acquire()
            assert new_token > old_token
            # the worker's next extension finds another holder (well before the clock would)
            await async_until(lambda: holder.lost, 5)
            with pytest.raises(LockLost, match="extension found"):
                holder.check()
            assert not holder.held
            assert await write_fenced(write, new_token, b"new") == 1
            assert await write_fenced(write, old_token, b"old") == 0
            assert await raw.get(ENTRY_KEYS[0]) == b"new"
    assert await raw.exists(LOCK_KEY) == 1  # leaving the block did not delete it
    await contender.release()


async def test_a_holder_whose_extension_cannot_run_loses_the_lock(redis_server_factory) -> None:
    # The scenario: the holder's extensions cannot reach Redis for longer than its
    # lease (the server is frozen), a second client takes the lock, and the first one's
    # late write is refused by the fence.
    server = redis_server_factory()
    holder_client = AsyncRedis.from_url(
        server.url, socket_timeout=0.1, retry=async_reconnect_once()
    )
    other_client = AsyncRedis.from_url(server.url, socket_timeout=5, retry=async_reconnect_once())
    try:
        write = other_client.register_script(WRITE_FENCED)
        holder = AsyncDistributedLock(holder_client, KEYS, NAME, ttl=0.3)
        contender = AsyncDistributedLock(other_client, KEYS, NAME, ttl=5, blocking_timeout=5)
        with pytest.raises(LockLost):
            async with holder:
                old_token = holder.token
                server.pause()
                try:
                    await async_until(lambda: holder.lost, 30)  # the local clock says so
                    # the worker's extensions time out until the lease has run out; then
                    # it marks the lock lost itself (before check() could)
                    lease = holder._lease
                    assert lease is not None
                    await async_until(lambda: bool(lease.reason), 30)
                finally:
                    server.resume()
                with pytest.raises(LockLost, match="did not confirm an extension"):
                    holder.check()
                new_token = await contender.acquire()
                assert new_token > old_token
                assert await write_fenced(write, new_token, b"new") == 1
                assert await write_fenced(write, old_token, b"old") == 0  # the late write
                assert await other_client.get(ENTRY_KEYS[0]) == b"new"
        assert holder.lost
        assert await other_client.exists(LOCK_KEY) == 1
        await contender.release()
    finally:
        await async_close_client(holder_client)
        await async_close_client(other_client)


async def test_redis_failures_surface_as_redis_unavailable(redis_server_factory) -> None:
    server = redis_server_factory()
    client = AsyncRedis.from_url(server.url, socket_timeout=0.5, retry=async_reconnect_once())
    try:
        lock = AsyncDistributedLock(client, KEYS, NAME, ttl=5)
        short = AsyncDistributedLock(client, KEYS, "short", ttl=0.3)
        await lock.acquire()
        await short.acquire()
        server.kill()
        # the worker's extensions fail until the lease has run out
        await async_until(lambda: short.lost, 5)
        with pytest.raises(LockLost):
            await short.release()  # Redis is gone, and so is the lease
        with pytest.raises(RedisUnavailableError):
            await lock.release()  # the lease is still valid: only Redis is missing
        assert not lock.held  # released here; on the server it runs out by itself
        with pytest.raises(RedisUnavailableError):
            await lock.acquire()
    finally:
        await async_close_client(client)


# -- fenced writes ---------------------------------------------------------------------------


async def test_write_fenced_script(target: tuple[str, bool], connect) -> None:
    raw = connect()
    write = raw.register_script(WRITE_FENCED)
    data, lease, fence = ENTRY_KEYS
    await raw.set(lease, b"a loader's lease")
    assert await write_fenced(write, 5, b"v5") == 1
    assert await raw.exists(lease) == 0  # a write revokes any fill lease
    assert 0 < await raw.pttl(data) <= 60_000
    assert await raw.pttl(fence) == -1  # the fence never expires
    assert await write_fenced(write, 5, b"v5 again") == 1  # the same holder writes twice
    assert await write_fenced(write, 4, b"v4") == 0
    assert await raw.get(data) == b"v5 again"
    assert await write_fenced(write, 12, b"v12") == 1  # 12 > 5 as numbers, not as text
    assert await write_fenced(write, 9, b"v9") == 0
    assert int(await raw.get(fence)) == 12
    await raw.delete(data)  # deleting the entry does not reset its fence
    assert await write_fenced(write, 11, b"v11") == 0
    assert await raw.exists(data) == 0
    with pytest.raises(ResponseError, match="fencing token must be an integer"):
        await write(keys=ENTRY_KEYS, args=["eleven", b"x", 1000])
