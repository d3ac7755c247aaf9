"""Paired concurrency helpers for the suite written once in ``tests/_async/``.

``scripts/gen_sync.py`` swaps each async name for its sync twin: tasks become threads,
``asyncio.Event`` becomes ``threading.Event``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from stratacache import MISSING
from stratacache._bus_messages import Action
from stratacache._keys import KeySpace
from stratacache._primitives import AsyncRedisCluster, RedisCluster

AsyncEvent = asyncio.Event
Event = threading.Event


class AsyncTask:
    """A running coroutine; ``await join()`` returns its result or raises its error."""

    def __init__(self, fn: Callable[[], Awaitable[Any]]) -> None:
        self._task = asyncio.ensure_future(fn())

    async def join(self) -> Any:
        return await self._task


class Task:
    """A running thread; ``join()`` returns its result or raises its error."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._result: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._result = fn()
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self) -> Any:
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "task did not finish in 30 s"
        if self._error is not None:
            raise self._error
        return self._result


async def async_wait_event(event: asyncio.Event) -> None:
    """Wait for an event (bounded, so a broken test fails instead of hanging)."""
    await asyncio.wait_for(event.wait(), timeout=30)


def wait_event(event: threading.Event) -> None:
    """Wait for an event (bounded, so a broken test fails instead of hanging)."""
    assert event.wait(timeout=30), "event not set within 30 s"


class FakeClock:
    """A settable clock for both the monotonic timer and the wall clock of a cache."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def async_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Let other tasks run until ``predicate()`` holds (fails after ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0)


def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Let other threads run until ``predicate()`` holds (fails after ``timeout``)."""

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.0005)


async def async_bus_settled(writer: Any, readers: Iterable[Any], timeout: float = 5.0) -> None:
    """Until every one of ``readers`` (caches) has heard all that ``writer`` published so
    far, so that an invalidation still in flight cannot land in the middle of a test.

    The readers are subscribed first (healthy: each heard its own heartbeat); then the
    writer sends a heartbeat at once, which goes out after whatever it still has batched,
    and they hear it within a round trip. (Waiting for the last sequence number the writer
    had used can take until its next periodic heartbeat, heartbeat_timeout / 4: a message
    sent before a reader subscribed is never heard.)"""
    wbus = writer._bus
    if wbus is None:
        return
    buses = []
    for reader in readers:
        await reader._bus_started()
        if reader._bus is not None:
            buses.append(reader._bus)
    for bus in buses:
        await async_until(lambda bus=bus: bus.state.healthy, timeout)
    await wbus.publish(Action.HEARTBEAT, at_once=True)
    last = wbus.outbox.last_seq
    for bus in buses:
        await async_until(
            lambda bus=bus: (bus.state.last_seq_of(wbus.outbox.source) or 0) >= last, timeout
        )


def bus_settled(writer: Any, readers: Iterable[Any], timeout: float = 5.0) -> None:
    """The sync twin of :func:`async_bus_settled`."""
    wbus = writer._bus
    if wbus is None:
        return
    buses = []
    for reader in readers:
        reader._bus_started()
        if reader._bus is not None:
            buses.append(reader._bus)
    for bus in buses:
        until(lambda bus=bus: bus.state.healthy, timeout)
    wbus.publish(Action.HEARTBEAT, at_once=True)
    last = wbus.outbox.last_seq
    for bus in buses:
        until(lambda bus=bus: (bus.state.last_seq_of(wbus.outbox.source) or 0) >= last, timeout)


async def async_publish_raw(raw: Any, namespace: str, payload: bytes) -> None:
    """Publish ``payload`` on the bus channel of ``namespace`` with a plain client (as a
    foreign or hostile instance would): ``SPUBLISH`` on a cluster, as the bus does."""
    channel = KeySpace(namespace).channel()
    if isinstance(raw, AsyncRedisCluster):
        await raw.spublish(channel, payload)
    else:
        await raw.publish(channel, payload)


def publish_raw(raw: Any, namespace: str, payload: bytes) -> None:
    """The sync twin of :func:`async_publish_raw`."""
    channel = KeySpace(namespace).channel()
    if isinstance(raw, RedisCluster):
        raw.spublish(channel, payload)
    else:
        raw.publish(channel, payload)


async def async_l1_warmed(cache: Any, key: str, expected: object, timeout: float = 5.0) -> None:
    """Read ``key`` until ``cache``'s L1 holds ``expected`` (the value came through L2; a
    flush after a starved heartbeat, or a late invalidation, may drop the first copy)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        assert await cache.get(key) == expected
        if cache.l1.peek(key, MISSING) == expected:
            return
        assert loop.time() < deadline, f"{key!r} never held in L1"
        await asyncio.sleep(0.005)


def l1_warmed(cache: Any, key: str, expected: object, timeout: float = 5.0) -> None:
    """The sync twin of :func:`async_l1_warmed`."""
    deadline = time.monotonic() + timeout
    while True:
        assert cache.get(key) == expected
        if cache.l1.peek(key, MISSING) == expected:
            return
        assert time.monotonic() < deadline, f"{key!r} never held in L1"
        time.sleep(0.005)
