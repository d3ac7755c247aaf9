"""Background jobs of a cache (early refreshes): a bounded set of asyncio tasks for
``AsyncCache``, of daemon threads for ``Cache``; both stopped by the cache's close.

A matching pair (``AsyncBackground`` / ``Background``) so that the async source's
rewrite to sync stays mechanical. A job that cannot start (the limit is reached, or the
set is closed) is simply not run: callers use it for optional work.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["AsyncBackground", "Background"]


class AsyncBackground:
    """At most ``limit`` tasks at a time, in the running loop; :meth:`aclose` cancels
    them and waits for them."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, job: Callable[[], Awaitable[Any]], name: str) -> bool:
        """Start ``job()`` as a task; False (and nothing runs) if at the limit or closed."""
        if self._closed or len(self._tasks) >= self._limit:
            return False
        coro: Any = job()
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def __len__(self) -> int:
        return len(self._tasks)

    def reset(self) -> None:
        """Forget every task (a forked child, or a new event loop: they are not ours)."""
        self._tasks = set()
        self._closed = False

    async def aclose(self, timeout: float) -> None:
        """Cancel every task and wait for them (at most ``timeout`` seconds); no job
        starts afterwards."""
        self._closed = True
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - close() always runs in a loop
            current = None
        mine = []
        for task in list(self._tasks):
            if task.done():
                continue
            loop = task.get_loop()
            if loop is current:
                task.cancel()
                mine.append(task)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)
        if mine:
            await asyncio.wait(mine, timeout=timeout)


class Background:
    """At most ``limit`` daemon threads at a time; :meth:`close` waits for them (at most
    ``timeout`` seconds: a thread cannot be cancelled, a job ends by itself)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._closed = False

    def spawn(self, job: Callable[[], Any], name: str) -> bool:
        """Start ``job()`` in a thread; False (and nothing runs) if at the limit or closed."""

        def run() -> None:
            try:
                job()
            finally:
                with self._lock:
                    self._threads.discard(thread)

        with self._lock:
            if self._closed or len(self._threads) >= self._limit:
                return False
            thread = threading.Thread(target=run, name=name, daemon=True)
            self._threads.add(thread)
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._threads.discard(thread)
            raise
        return True

    def __len__(self) -> int:
        return len(self._threads)

    def reset(self) -> None:
        """Forget every thread (a forked child has none of its parent's)."""
        self._lock = threading.Lock()
        self._threads = set()
        self._closed = False

    def close(self, timeout: float) -> None:
        """Wait for every running job (at most ``timeout`` seconds in all); no job
        starts afterwards."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
