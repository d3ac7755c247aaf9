"""Sync only: the bus's threads ending by any cause, and forking while they hold locks.

Real Redis and real threads; a thread is ended by raising an exception in it
(``PyThreadState_SetAsyncExc``), as a bug or an interpreter shutdown would.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import pytest

from stratacache import Cache
from stratacache._bus_messages import Action

from concurrency import until

NS = "threads"
DEADLINE = 10.0


def bus_thread(cache: Cache, name: str) -> threading.Thread:
    """The cache's own listener or publisher thread."""
    assert cache._bus is not None
    workers = dict(zip(("listener", "publisher", "prober"), cache._bus._run.workers))
    thread: threading.Thread = workers[name]._thread
    assert thread.name == f"stratacache-bus-{name}"
    return thread


def kill_thread(thread: threading.Thread, poke: Callable[[], object]) -> None:
    """Raise SystemExit in ``thread``; it is raised at the thread's next bytecode, so
    ``poke`` gives it something to do until it is gone."""
    assert thread.ident is not None
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(SystemExit)
    )
    assert done == 1
    deadline = time.monotonic() + DEADLINE
    while thread.is_alive():
        assert time.monotonic() < deadline, "the thread did not end"
        poke()
        thread.join(0.01)


# the thread's death by an exception is the point (pytest reports it as a warning), and
# a thread killed in the middle of a Redis call leaves that socket to the collector
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize("worker", ["listener", "publisher", "prober"])
def test_a_dead_bus_thread_makes_the_bus_unhealthy_at_once_and_is_restarted(
    redis_url: str, worker: str, caplog: pytest.LogCaptureFixture
) -> None:
    # heartbeat_timeout far beyond the deadline: only the thread's end can explain it
    cache = Cache(redis_url, namespace=NS, redis_timeout=2.0, heartbeat_timeout=60.0)
    writer = Cache(redis_url, namespace=NS, redis_timeout=2.0)
    try:
        writer.set("k", 1)
        assert cache.get("k") == 1
        until(lambda: cache.stats().bus_state == "healthy", DEADLINE)
        assert cache.get("k") == 1
        assert cache.l1.peek("k") == 1
        with caplog.at_level(logging.WARNING, logger="stratacache.bus"):
            # poked through the bus itself: a cache call would restart the thread
            bus = cache._bus
            assert bus is not None
            kill_thread(
                bus_thread(cache, worker),
                lambda: bus.publish(Action.INVALIDATE_KEYS, ["poke"]),
            )
            until(lambda: cache.stats().bus_state == "unhealthy", DEADLINE)
        assert len(cache.l1) == 0
        assert cache._bus is not None and worker in cache._bus.state.unhealthy_reason
        # logged right after the state changed, by the thread that saw the death
        until(lambda: any(worker in r.getMessage() for r in caplog.records), DEADLINE)
        # the next call that needs the bus starts both threads again
        assert cache.get("k") == 1
        until(lambda: cache.stats().bus_state == "healthy", DEADLINE)
        assert bus_thread(cache, "listener").is_alive()
        assert bus_thread(cache, "publisher").is_alive()
        assert cache.get("k") == 1
        assert cache.l1.peek("k") == 1
        writer.set("k", 2)
        until(lambda: cache.get("k") == 2, DEADLINE)
    finally:
        cache.close()
        writer.close()
        gc.collect()  # the killed thread's socket, here rather than in another test


@contextlib.contextmanager
def held(locks: list[threading.Lock]) -> Iterator[None]:
    """Hold ``locks`` in another thread (as the listener thread may at a fork)."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        for lock in locks:
            lock.acquire()
        taken.set()
        release.wait()
        for lock in reversed(locks):
            lock.release()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(DEADLINE)
    try:
        yield
    finally:
        release.set()
        thread.join(DEADLINE)


def wait_child(pid: int, timeout: float) -> int | None:
    """The child's exit status, or None (after killing it) if it did not end in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_while_bus_threads_hold_the_locks_does_not_hang_the_child(
    redis_url: str,
) -> None:
    # gunicorn --preload: the parent's listener may hold the tag-version or bus lock (or
    # the pure L1's, or redis-py's) at the very moment of the fork; the child never gets
    # it back
    cache = Cache(redis_url, namespace=NS, redis_timeout=2.0)
    writer = Cache(redis_url, namespace=NS, redis_timeout=2.0)
    try:
        writer.set("k", 1)
        assert cache.get("k") == 1
        until(lambda: cache.stats().bus_state == "healthy", DEADLINE)
        bus = cache._bus
        assert bus is not None
        locks = [cache._versions._lock, bus.state._lock, bus.outbox._lock]
        # and redis-py's pool lock, inside any command's check-out: the pool's reset after
        # the fork takes it (redis-py 8)
        assert cache._tier is not None
        locks.append(cache._tier.client.connection_pool._lock)
        l1_lock = getattr(cache.l1, "_lock", None)  # the pure L1's (the compiled has none)
        if l1_lock is not None:
            locks.append(l1_lock)
        with held(locks):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork + threads
                pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                status = 1
                try:
                    fresh = len(cache.l1) == 0
                    value = cache.get("k")
                    cache.set("k2", "child")
                    until(lambda: cache.stats().bus_state == "healthy", DEADLINE)
                    status = 0 if fresh and value == 1 and cache.get("k2") == "child" else 2
                    cache.close()
                finally:
                    os._exit(status)
            code = wait_child(pid, 30.0)
        assert code == 0, "the forked child hung (killed)" if code is None else code
        assert writer.get("k2") == "child"
    finally:
        cache.close()
        writer.close()
