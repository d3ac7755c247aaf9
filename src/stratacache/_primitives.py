"""Paired primitives: each async name has a sync twin that ``scripts/gen_sync.py`` swaps in.

The async half of the library uses only the ``Async*`` / ``async_*`` names below; the
generated sync half uses the twins. Keeping every difference between the halves in this
one module is what lets the rewrite stay a mechanical token swap.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.connection
import redis.asyncio.retry
import redis.cluster
import redis.retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")

# -- Redis client classes -------------------------------------------------------------

AsyncRedis = redis.asyncio.Redis
AsyncRedisCluster = redis.asyncio.cluster.RedisCluster
Redis = redis.Redis
RedisCluster = redis.cluster.RedisCluster


# One immediate retry, on a connection error only: a pooled connection that died with a
# restarted server fails on first use, and a fresh one is the fix. Timeouts are not retried
# (each call keeps its time budget); everything else is the circuit breaker's business.


def async_reconnect_once() -> redis.asyncio.retry.Retry:
    """The retry policy of clients the cache builds (asyncio): see the notes above."""
    return redis.asyncio.retry.Retry(NoBackoff(), 1, supported_errors=(ConnectionError,))


def reconnect_once() -> redis.retry.Retry:
    """The retry policy of clients the cache builds (sync): see the notes above."""
    return redis.retry.Retry(NoBackoff(), 1, supported_errors=(ConnectionError,))


# A cluster client retries a failed command up to 10 times by default, re-reading the
# topology and backing off (up to 1 s) before each try: one call to a paused master then
# takes seconds instead of its ``socket_timeout``, and stalls the caller's other work. The
# cache never retries in a loop (the breaker and the outbox are its answer to a failed
# call): no retry. A connection that died with a restarted node fails one call, and
# redis-py then drops that node's idle connections, so the next call gets a fresh one.


def async_cluster_no_retry() -> redis.asyncio.retry.Retry:
    """The cluster-level retry policy of cluster clients the cache builds (asyncio)."""
    return redis.asyncio.retry.Retry(NoBackoff(), 0)


def cluster_no_retry() -> redis.retry.Retry:
    """The cluster-level retry policy of cluster clients the cache builds (sync)."""
    return redis.retry.Retry(NoBackoff(), 0)


def async_bind_fast_get(l1: Any, fallback: Callable[..., Any]) -> Callable[..., Any] | None:
    """No fast binding for the async cache: its ``get`` must return an awaitable."""
    return None


def bind_fast_get(l1: Any, fallback: Callable[..., Any]) -> Callable[..., Any] | None:
    """The sync cache's ``get``: L1 hits answered by one C call, misses to ``fallback``."""
    return l1.getter(fallback)  # type: ignore[no-any-return]


def async_bind_fast_cached(
    l1: Any, make_key: Any, fallback: Callable[..., Any]
) -> Callable[..., Any] | None:
    """No fast binding for the async cache: its decorated functions return awaitables."""
    return None


def bind_fast_cached(
    l1: Any, make_key: Any, fallback: Callable[..., Any]
) -> Callable[..., Any] | None:
    """A sync decorated function: L1 hits (key from ``make_key``'s memo) in one C call,
    misses to ``fallback(key, args, kwargs)``."""
    return l1.memoized(make_key, fallback, make_key.memo, make_key.skip)  # type: ignore[no-any-return]


# -- sleeping and calling user code ----------------------------------------------------


async def async_sleep(seconds: float) -> None:
    """Sleep without blocking the event loop."""
    await asyncio.sleep(seconds)


def sleep(seconds: float) -> None:
    """Sleep the calling thread."""
    time.sleep(seconds)


async def async_call_loader(loader: Callable[[], Any]) -> Any:
    """Call a zero-argument loader; await its result if it is awaitable."""
    result = loader()
    if inspect.isawaitable(result):
        result = await result
    return result


def call_loader(loader: Callable[[], T]) -> T:
    """Call a zero-argument loader."""
    return loader()


async def async_call_loader_within(
    loader: Callable[[], Any], seconds: float, on_timeout: Callable[[], BaseException]
) -> Any:
    """Call a loader; if its awaitable has not finished within ``seconds``, cancel it
    and raise ``on_timeout()``. (A loader that blocks the event loop without awaiting
    cannot be interrupted: the limit applies to awaitable loaders.)"""
    result = loader()
    if not inspect.isawaitable(result):
        return result
    if hasattr(asyncio, "timeout"):  # 3.11+: a timer on this task, no task of its own
        limit = asyncio.timeout(max(seconds, 0.0))
        try:
            async with limit:
                return await result
        except TimeoutError:
            if limit.expired():
                raise on_timeout() from None
            raise  # the loader's own TimeoutError
    inner = asyncio.ensure_future(result)
    try:
        done, _ = await asyncio.wait({inner}, timeout=max(seconds, 0.0))
    except BaseException:  # cancelled ourselves: the loader goes with us
        inner.cancel()
        raise
    if not done:
        inner.cancel()
        await asyncio.wait({inner})  # let it run its cleanup before the caller moves on
        raise on_timeout()
    return inner.result()


def call_loader_within(
    loader: Callable[[], T], seconds: float, on_timeout: Callable[[], BaseException]
) -> T:
    """Call a loader (in the load's worker thread): a thread cannot be interrupted, so
    the loader runs to its end and its result is still cached; callers stop waiting for
    it at the hard timeout (see ``loader_call.py``)."""
    return loader()


class AsyncLoadTask:
    """A load running as an asyncio task, so that callers can stop waiting for it (soft
    and hard timeouts) while it goes on. ``on_done`` is called when it ends, however."""

    __slots__ = ("_task",)

    def __init__(
        self, run: Callable[[], Any], name: str, on_done: Callable[[AsyncLoadTask], None]
    ) -> None:
        self._task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(run(), name=name)
        self._task.add_done_callback(lambda _task: on_done(self))

    def done(self) -> bool:
        """Whether the load has ended."""
        return self._task.done()

    def outcome(self) -> Any:
        """The load's result, or raise its exception (``CancelledError`` if cancelled)."""
        return self._task.result()

    def cancel(self) -> bool:
        """Cancel the load (True: a cancellation was requested)."""
        return self._task.cancel()

    async def join(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for the load to end; True if it has."""
        if not self._task.done():
            await asyncio.wait({self._task}, timeout=timeout)
        return self._task.done()


class LoadTask:
    """A load running in a worker thread of its own, so that callers can stop waiting
    for it (soft and hard timeouts) while it goes on; a thread cannot be cancelled.
    ``on_done`` is called (in the thread) when it ends, however."""

    __slots__ = ("_done", "_error", "_result", "_thread")

    def __init__(
        self, run: Callable[[], Any], name: str, on_done: Callable[[LoadTask], None]
    ) -> None:
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None

        def target() -> None:
            try:
                self._result = run()
            except BaseException as exc:
                self._error = exc
            finally:
                self._done.set()
                on_done(self)

        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self._thread.start()

    def done(self) -> bool:
        """Whether the load has ended."""
        return self._done.is_set()

    def outcome(self) -> Any:
        """The load's result, or raise its exception."""
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self) -> bool:
        """A thread cannot be cancelled: False."""
        return False

    def join(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for the load to end; True if it has."""
        return self._done.wait(timeout)


# -- a one-shot result that several callers wait on -------------------------------------


class AsyncResultSlot(Generic[T]):
    """A result or exception set once by a leader and awaited by any number of waiters."""

    __slots__ = ("_done", "_exception", "_value")

    def __init__(self) -> None:
        self._done = asyncio.Event()
        self._value: T | None = None
        self._exception: BaseException | None = None

    def set_result(self, value: T) -> None:
        """Publish the value and wake every waiter."""
        self._value = value
        self._done.set()

    def set_exception(self, exc: BaseException) -> None:
        """Publish an exception and wake every waiter."""
        self._exception = exc
        self._done.set()

    async def wait(self) -> T:
        """Wait for the outcome; return the value or raise the exception."""
        await self._done.wait()
        if self._exception is not None:
            raise self._exception
        return self._value  # type: ignore[return-value]

    async def settled(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (``None``: no limit) for the outcome; True if
        it is there (read it with :meth:`outcome`)."""
        if timeout is None:
            await self._done.wait()
            return True
        return await async_wait_event(self._done, timeout)

    def outcome(self) -> T:
        """The value, or raise the exception (the outcome must be set)."""
        if self._exception is not None:
            raise self._exception
        return self._value  # type: ignore[return-value]


class ResultSlot(Generic[T]):
    """A result or exception set once by a leader thread and waited on by other threads.

    Every miss of a sync cache makes one, and most are never waited on: the gate is a
    bare lock, held from the start and released with the outcome (a waiter acquires it
    and hands it on at once), rather than an Event, whose Condition costs several times
    as much to make. ``_settled`` is set before the release, so that an outcome set is
    seen as set at once, even while a waiter holds the gate for a moment."""

    __slots__ = ("_exception", "_gate", "_settled", "_value")

    def __init__(self) -> None:
        self._gate = threading.Lock()
        self._gate.acquire()
        self._settled = False
        self._value: T | None = None
        self._exception: BaseException | None = None

    def set_result(self, value: T) -> None:
        """Publish the value and wake every waiter."""
        self._value = value
        self._open()

    def set_exception(self, exc: BaseException) -> None:
        """Publish an exception and wake every waiter."""
        self._exception = exc
        self._open()

    def _open(self) -> None:
        if not self._settled:
            self._settled = True
            self._gate.release()

    def wait(self) -> T:
        """Wait for the outcome; return the value or raise the exception."""
        if not self._settled:
            self._gate.acquire()
            self._gate.release()
        if self._exception is not None:
            raise self._exception
        return self._value  # type: ignore[return-value]

    def settled(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (``None``: no limit) for the outcome; True if
        it is there (read it with :meth:`outcome`)."""
        if self._settled:
            return True
        if not self._gate.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return self._settled
        self._gate.release()
        return True

    def outcome(self) -> T:
        """The value, or raise the exception (the outcome must be set)."""
        if self._exception is not None:
            raise self._exception
        return self._value  # type: ignore[return-value]


# -- locks, events and background workers (the bus's listener and publisher) --------------

AsyncLock = asyncio.Lock
Lock = threading.Lock
AsyncEvent = asyncio.Event
Event = threading.Event


async def async_wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``event``; True if it is set."""
    if event.is_set():
        return True
    # asyncio.wait, not wait_for: wait_for (before 3.12) can swallow a cancellation that
    # arrives as the event is set, and a background loop must always stop when cancelled
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
    finally:
        if not waiter.done():
            waiter.cancel()
    return bool(done)


def wait_event(event: threading.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``event``; True if it is set."""
    return event.wait(timeout)


# -- the event loop a cache is bound to, and cancellations redis-py loses ------------------


def async_current_loop() -> asyncio.AbstractEventLoop | None:
    """The running event loop (None outside one): an ``AsyncCache`` whose bus was started
    in another loop (a second ``asyncio.run``) rebinds itself to this one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def current_loop() -> Any:
    """Threads have no loop to rebind to: always None, so the sync cache never rebinds."""
    return None


def _cancels_requested() -> int:
    task = asyncio.current_task()
    # Task.cancelling() exists from Python 3.11; before it a lost cancellation is invisible
    return task.cancelling() if task is not None and hasattr(task, "cancelling") else 0


async def async_redis_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Await one redis.asyncio call, re-raising a cancellation that it swallowed.

    redis-py sends every command through ``asyncio.wait_for`` (``socket_timeout``), and
    before Python 3.12 ``wait_for`` returns the inner result when the cancellation
    arrives as the send completes (cpython gh-86296): the CancelledError is lost, the
    caller carries on, and a background loop that ``asyncio.run`` cancelled at shutdown
    never ends. The task's count of cancel requests still shows it (3.11+), so a call
    that returns with more requests pending than it started with was cancelled.
    """
    before = _cancels_requested()
    try:
        result = await fn(*args, **kwargs)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        if _cancels_requested() > before:  # a cancellation turned into an error
            raise asyncio.CancelledError() from exc
        raise
    if _cancels_requested() > before:
        raise asyncio.CancelledError()
    return result


def redis_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """One redis-py call (threads cannot be cancelled: nothing to guard)."""
    return fn(*args, **kwargs)


# -- connections borrowed from a client's pool (``_async/direct.py``) ------------------

_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)


def fork_generation() -> int:
    """How many forks lie between the first process and this one (connections borrowed
    before a fork belong to the parent)."""
    return _forks


def async_direct_source(client: Any, node: Any) -> Any:
    """Where ``AsyncDirect`` borrows connections for ``node`` (a cluster node; None on a
    standalone client): the client's pool, or the asyncio cluster node itself; None if
    the client must be used as it is (a single-connection client, no node)."""
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        return node
    if getattr(client, "connection", None) is not None:
        return None
    return client.connection_pool


def direct_source(client: Any, node: Any) -> Any:
    """Where ``Direct`` borrows connections for ``node`` (a cluster node; None on a
    standalone client): a connection pool; None if the client must be used as it is (a
    single-connection client, client-side caching, no node)."""
    if isinstance(client, redis.cluster.RedisCluster):
        if node is None or node.redis_connection is None:
            return None
        pool = node.redis_connection.connection_pool
    else:
        if getattr(client, "connection", None) is not None:
            return None
        pool = client.connection_pool
    return None if getattr(pool, "cache", None) is not None else pool


async def async_borrow_connection(source: Any) -> Any:
    """Check a connection out of ``source`` (see :func:`async_direct_source`)."""
    if isinstance(source, redis.asyncio.cluster.ClusterNode):
        return source.acquire_connection()
    return await source.get_connection()


def borrow_connection(source: Any) -> Any:
    """Check a connection out of a pool."""
    return source.get_connection()


async def async_give_back_connection(source: Any, conn: Any) -> None:
    """Return a connection to ``source``."""
    if isinstance(source, redis.asyncio.cluster.ClusterNode):
        source.release(conn)
    else:
        await source.release(conn)


def give_back_connection(source: Any, conn: Any) -> None:
    """Return a connection to its pool."""
    source.release(conn)


# -- one exchange on a borrowed connection (``_async/direct.py``) ------------------------
#
# redis.asyncio's ``send_packed_command`` wraps every write in ``asyncio.wait_for`` (a
# task of its own per call before Python 3.12) and ``read_response`` opens another timer
# per reply: on an L2 hit they cost more than the GET itself. ``async_request`` writes the
# packed command to the connection's stream writer and reads the reply with the
# connection's own parser (hiredis when installed) under ONE timer of ``socket_timeout``
# for the whole exchange, and on any failure disconnects the connection as redis-py does.
# Those two are PRIVATE attributes of redis-py's connection (``_writer``, ``_parser``):
# they are used only on redis-py's own connection classes (whose send / read methods are
# not overridden), connected, with no health check due, and the parser is called as
# ``read_response`` calls it (RESP3: a push message is handled by the parser); any other
# connection (a subclass, an attribute that a redis-py release renamed) takes the public
# ``send_packed_command`` + ``read_response``, which tests/_async/test_direct.py covers.
# The sync connection's public calls have no such overhead and are used as they are.

_ASYNC_SEND = redis.asyncio.connection.AbstractConnection.send_packed_command
_ASYNC_READ = redis.asyncio.connection.AbstractConnection.read_response


def _async_streams(conn: Any) -> tuple[Any, Any] | None:
    """The stream writer and parser of ``conn`` if the exchange may use them (see the
    notes above), else None (the public calls)."""
    kind = type(conn)
    if kind.send_packed_command is not _ASYNC_SEND or kind.read_response is not _ASYNC_READ:
        return None  # a connection class with behaviour of its own
    writer = getattr(conn, "_writer", None)
    parser = getattr(conn, "_parser", None)
    if writer is None or parser is None:
        return None  # not connected (the public send connects)
    interval = getattr(conn, "health_check_interval", 0)
    if interval and asyncio.get_running_loop().time() > conn.next_health_check:
        return None  # the public send runs the health check that is due
    return writer, parser


async def _async_public_exchange(conn: Any, packed: Any) -> Any:
    await conn.send_packed_command(packed)
    try:
        return await conn.read_response()
    except ResponseError as exc:  # an error reply: the connection is clean
        return exc


async def _async_stream_exchange(conn: Any, writer: Any, parser: Any, packed: Any) -> Any:
    try:
        async with asyncio.timeout(conn.socket_timeout):  # None: no limit
            writer.writelines(packed)
            if writer.transport.get_write_buffer_size():
                await writer.drain()  # a large value: wait for the socket to take it
            if conn.protocol in (3, "3"):
                reply = await parser.read_response(disable_decoding=False, push_request=False)
            else:
                reply = await parser.read_response(disable_decoding=False)
    except TimeoutError:
        await conn.disconnect(nowait=True)
        raise RedisTimeoutError(f"Timeout reading from {conn.host}:{conn.port}") from None
    except OSError as exc:
        await conn.disconnect(nowait=True)
        raise ConnectionError(f"Error talking to {conn.host}:{conn.port}: {exc}") from exc
    except BaseException:  # a dropped connection, a cancellation: the socket is unusable
        await conn.disconnect(nowait=True)
        raise
    if conn.health_check_interval:
        conn.next_health_check = asyncio.get_running_loop().time() + conn.health_check_interval
    return reply


async def async_request(conn: Any, packed: Any) -> Any:
    """Send one command (``pack_command`` output) on ``conn`` and read its reply; an error
    reply is returned, not raised (the connection is clean then); a timeout, a connection
    error or a cancellation disconnects ``conn`` and raises."""
    streams = _async_streams(conn)
    if streams is None:
        return await _async_public_exchange(conn, packed)
    return await _async_stream_exchange(conn, streams[0], streams[1], packed)


def request(conn: Any, packed: Any) -> Any:
    """Send one command on ``conn`` and read its reply, an error reply returned (redis-py's
    public calls; they disconnect ``conn`` on a failure)."""
    conn.send_packed_command(packed)
    try:
        return conn.read_response()
    except ResponseError as exc:
        return exc


class AsyncWorker:
    """A background loop as an asyncio task (started in the running loop).

    ``on_exit`` is called when the task ends, for whatever reason (returned, raised,
    cancelled — ``asyncio.run`` cancels it when its loop ends).
    """

    def __init__(
        self, run: Callable[[], Any], name: str, on_exit: Callable[[], None] | None = None
    ) -> None:
        self._task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(run(), name=name)
        if on_exit is not None:
            self._task.add_done_callback(lambda _task: on_exit())

    def alive(self) -> bool:
        """Whether the loop still runs (a task of a closed loop never will again)."""
        return not self._task.done() and not self._task.get_loop().is_closed()

    def abandon(self) -> None:
        """Cancel the task without waiting (it may belong to another loop, which cancels
        it when, if ever, it runs again)."""
        task = self._task
        loop = task.get_loop()
        if not task.done() and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)

    async def stop(self, timeout: float) -> None:
        """Cancel the task and wait for it (at most ``timeout`` seconds)."""
        task = self._task
        loop = task.get_loop()
        if task.done() or loop.is_closed():
            return
        if loop is not async_current_loop():
            self.abandon()  # another loop's task (not running, or in another thread)
            return
        task.cancel()
        await asyncio.wait({task}, timeout=timeout)


class Worker:
    """A background loop as a daemon thread; it ends when its loop sees the stop flag.

    ``on_exit`` is called in the thread when the loop ends, for whatever reason.

    :meth:`alive` is asked on every cache miss (has a bus worker ended?): it reads a flag
    the thread clears as its loop ends, however it ends, rather than ``Thread.is_alive``
    (three calls and a lock); a forked child, where the thread does not exist, reads the
    fork count.
    """

    def __init__(
        self, run: Callable[[], Any], name: str, on_exit: Callable[[], None] | None = None
    ) -> None:
        def target() -> None:
            try:
                run()
            finally:
                self._running = False
                if on_exit is not None:
                    on_exit()

        self._running = True
        self._fork = fork_generation()
        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """Whether the thread still runs (in this process)."""
        return self._running and self._fork == _forks

    def abandon(self) -> None:
        """Nothing to do: a thread ends by its own stop flag."""

    def stop(self, timeout: float) -> None:
        """Wait for the thread to end (at most ``timeout`` seconds)."""
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


def _asyncio_connections(client: Any) -> list[Any]:
    """Every connection a redis.asyncio client holds (a cluster's: on every node)."""
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        manager = client.nodes_manager
        nodes = [*manager.nodes_cache.values(), *manager.startup_nodes.values()]
        return [conn for node in nodes for conn in node._connections]
    pool = client.connection_pool
    return [*pool._available_connections, *pool._in_use_connections]


def _loop_closed(conn: Any) -> bool:
    writer = getattr(conn, "_writer", None)
    loop = None if writer is None else getattr(writer.transport, "_loop", None)
    return loop is not None and loop.is_closed()


# A forked child's copies of the parent's stream writers, kept alive: a StreamWriter that
# is garbage-collected while its transport is open closes that transport (Python 3.11.5+),
# and closing unregisters the socket from the event loop's epoll instance, which the child
# SHARES with the parent (a fork copies the epoll fd, not the instance): the parent's
# loop then never hears of that socket again, and its next command waits for its whole
# timeout. (``subprocess.Popen(preexec_fn=...)`` runs the fork hooks in its child too.)
_FORKED_WRITERS: list[Any] = []


def _drop_connection(conn: Any) -> None:
    """Detach an asyncio connection from its socket without its event loop. If that loop
    is closed, the socket is closed as the loop would have done (no ResourceWarning);
    otherwise (a forked child's copy of the parent's loop) it is only detached, its writer
    kept (see ``_FORKED_WRITERS``): the parent's loop and socket are left as they are (the
    child's copy of the socket is closed when the child execs or exits)."""
    writer = getattr(conn, "_writer", None)
    if writer is None:
        return
    if not _loop_closed(conn):
        _FORKED_WRITERS.append(writer)
    else:
        transport = writer.transport
        try:
            transport.close()  # marks it closing, then fails to schedule the rest
        except RuntimeError:
            pass
        try:
            # the rest, which the closed loop would have run: it closes the socket in a
            # finally, whatever the protocol's callbacks do
            transport._call_connection_lost(None)
        except Exception:  # a dead loop's callbacks: the socket is closed all the same
            pass
    conn._writer = conn._reader = None


def async_forget_connections(client: Any) -> None:
    """Drop the asyncio connections and locks a client holds: in a forked child they
    belong to the parent's sockets and event loop; after the loop they were made in has
    ended (a second ``asyncio.run``) they can no longer be used nor closed the usual way.
    New ones are made on demand, in the loop that needs them."""
    for conn in _asyncio_connections(client):
        _drop_connection(conn)
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        manager = client.nodes_manager
        for node in [*manager.nodes_cache.values(), *manager.startup_nodes.values()]:
            node._connections.clear()
            node._free.clear()
        client._lock = None  # made on first use
        client._usage_lock = asyncio.Lock()
        manager._initialize_lock = asyncio.Lock()
    else:
        pool = client.connection_pool
        pool.reset()
        if isinstance(getattr(pool, "_lock", None), asyncio.Lock):
            pool._lock = asyncio.Lock()
        for name in ("_single_conn_lock", "_usage_lock"):
            if isinstance(getattr(client, name, None), asyncio.Lock):
                setattr(client, name, asyncio.Lock())


_RLOCK_TYPE = type(threading.RLock())
_LOCK_TYPE = type(threading.Lock())


def _fresh_locks(owner: Any, *names: str) -> None:
    """Replace the ``threading`` locks named (those ``owner`` has) with new ones."""
    for name in names:
        lock = getattr(owner, name, None)
        if isinstance(lock, _RLOCK_TYPE):
            setattr(owner, name, threading.RLock())
        elif isinstance(lock, _LOCK_TYPE):
            setattr(owner, name, threading.Lock())


def forget_connections(client: Any) -> None:
    """In a forked child: new locks for a sync client and its pools.

    redis-py's pools see the new pid and start afresh on their next use, but that reset
    takes the pool's lock (redis-py 8) under its fork lock. A lock that one of the parent's
    threads (the bus's, a loader's) held at the fork is never released in the child: the
    child's first command then hung, and the next thread's gave up after five seconds with
    ``ChildDeadlockedError``. The connections themselves are left to that reset."""
    if isinstance(client, redis.cluster.RedisCluster):
        _fresh_locks(client, "_lock")
        manager = client.nodes_manager
        _fresh_locks(manager, "_lock", "_initialization_lock")
        _fresh_locks(getattr(manager, "read_load_balancer", None), "_lock")
        pools = [
            node.redis_connection.connection_pool
            for node in list(manager.nodes_cache.values())
            if node.redis_connection is not None
        ]
    else:
        _fresh_locks(client, "single_connection_lock")
        pools = [client.connection_pool]
    for pool in pools:
        _fresh_locks(pool, "_fork_lock", "_lock")


async def async_close_client(client: Any) -> None:
    """Close a client and every connection it opened (those of an event loop that has
    ended are closed without it: closing them through it would raise)."""
    if any(_loop_closed(conn) for conn in _asyncio_connections(client)):
        async_forget_connections(client)
    await client.aclose()


def close_client(client: Any) -> None:
    """Close a client and every connection it opened.

    redis-py's sync ``RedisCluster.close()`` leaves the node pools' connections open (its
    per-node ``Redis`` objects do not own their pools), so they are disconnected here.
    """
    if isinstance(client, redis.cluster.RedisCluster):
        for node in client.get_nodes():  # type: ignore[no-untyped-call]
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()
    client.close()


async def async_shard_client(cluster: Any, channel: str) -> redis.asyncio.Redis:
    """A client of its own on the cluster node that serves ``channel`` (for SSUBSCRIBE)."""
    await cluster.initialize()
    node = cluster.get_node_from_key(channel)
    pool = redis.asyncio.ConnectionPool(
        connection_class=node.connection_class, **node.connection_kwargs
    )
    return redis.asyncio.Redis.from_pool(pool)


def shard_client(cluster: Any, channel: str) -> redis.Redis:
    """A client of its own on the cluster node that serves ``channel`` (for SSUBSCRIBE)."""
    node = cluster.get_node_from_key(channel)
    pool = node.redis_connection.connection_pool
    return redis.Redis.from_pool(
        redis.ConnectionPool(connection_class=pool.connection_class, **pool.connection_kwargs)
    )


# -- bounded concurrency (cache warming: batches in flight at once) -----------------------


class AsyncBoundedGroup:
    """Runs zero-argument coroutine functions as tasks, at most ``limit`` at a time:
    :meth:`submit` waits for a free slot. The functions must handle their own errors."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def submit(self, fn: Callable[[], Any]) -> None:
        """Start ``fn()`` once fewer than ``limit`` runs are in flight (with a limit of
        1: run it now, in the caller)."""
        if self._limit == 1:
            await fn()
            return
        await self._slots.acquire()
        try:
            task = asyncio.get_running_loop().create_task(self._run(fn))
        except BaseException:
            self._slots.release()
            raise
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, fn: Callable[[], Any]) -> None:
        try:
            await fn()
        finally:
            self._slots.release()

    async def join(self) -> None:
        """Wait for every run started; re-raise the first error one of them let out."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def cancel(self) -> None:
        """Cancel the runs still in flight and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


class BoundedGroup:
    """Runs zero-argument functions in threads, at most ``limit`` at a time:
    :meth:`submit` waits for a free slot. The functions must handle their own errors."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._slots = threading.Semaphore(limit)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=limit, thread_name_prefix="stratacache-group"
        )
        self._futures: list[concurrent.futures.Future[Any]] = []

    def submit(self, fn: Callable[[], Any]) -> None:
        """Start ``fn()`` once fewer than ``limit`` runs are in flight (with a limit of
        1: run it now, in the caller)."""
        if self._limit == 1:
            fn()
            return
        self._slots.acquire()
        try:
            future = self._pool.submit(self._run, fn)
        except BaseException:
            self._slots.release()
            raise
        self._futures = [f for f in self._futures if not f.done()]
        self._futures.append(future)

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        finally:
            self._slots.release()

    def join(self) -> None:
        """Wait for every run started; re-raise the first error one of them let out."""
        try:
            for future in self._futures:
                future.result()
        finally:
            self._pool.shutdown(wait=True)

    def cancel(self) -> None:
        """Drop the runs not started yet and wait for the running ones (threads cannot
        be interrupted)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


__all__ = [
    "AsyncBoundedGroup",
    "AsyncEvent",
    "AsyncLoadTask",
    "AsyncLock",
    "AsyncRedis",
    "AsyncRedisCluster",
    "AsyncResultSlot",
    "AsyncWorker",
    "BoundedGroup",
    "Event",
    "LoadTask",
    "Lock",
    "Redis",
    "RedisCluster",
    "ResultSlot",
    "Worker",
    "async_bind_fast_cached",
    "async_bind_fast_get",
    "async_borrow_connection",
    "async_call_loader",
    "async_call_loader_within",
    "async_close_client",
    "async_cluster_no_retry",
    "async_current_loop",
    "async_direct_source",
    "async_forget_connections",
    "async_give_back_connection",
    "async_reconnect_once",
    "async_redis_call",
    "async_request",
    "async_shard_client",
    "async_sleep",
    "async_wait_event",
    "bind_fast_cached",
    "bind_fast_get",
    "borrow_connection",
    "call_loader",
    "call_loader_within",
    "close_client",
    "cluster_no_retry",
    "current_loop",
    "direct_source",
    "forget_connections",
    "fork_generation",
    "give_back_connection",
    "reconnect_once",
    "redis_call",
    "request",
    "shard_client",
    "sleep",
    "wait_event",
]
