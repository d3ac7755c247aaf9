"""The invalidation bus: one listener and one publisher per cache (tasks here, threads in
the generated sync twin), on the namespace's pub/sub channel.

The bookkeeping (sequence numbers, gaps, health, batching) lives in ``stratacache._bus``
and is shared by both halves; this module only moves bytes. See ``_bus.py`` for why each
flush happens. Neither loop ever lets an exception out: the listener re-subscribes with a
bounded backoff, a publish that fails is a gap that receivers answer with a flush (and,
since this instance cannot reach Redis, makes its own bus unhealthy at once).

A third worker, the *prober*, PINGs Redis (every master of a cluster) every
``PROBE_INTERVAL`` outside the circuit breaker. Heartbeats prove that the subscription
hears, but a heartbeat every ``heartbeat_timeout / 4`` is slow to notice a paused server,
and meanwhile L1 keeps serving values that other instances may be changing (their writes
wait in their outboxes). A PING that is not answered within the client's timeout makes
the bus unhealthy at once (L1 flushed and bypassed); the first answer after that asks for
a heartbeat now, so the bus recovers as soon as it hears it, and closes the breaker, so
that reads and the outbox come back to Redis at the same moment. A PING costs Redis one
command per instance and interval, and fans out to nobody (a heartbeat fans out to every
instance of the namespace). After a PING was answered, the prober also refreshes this
instance's heartbeat record when it is due (``_instances.py``: at most once a second);
:meth:`AsyncInvalidationBus.aclose` deletes it.

Each start of the bus is a *run*: its workers and the primitives they wait on. A
worker that ends while its run is current (any cause: its event loop ended, an error
that escaped) makes the bus unhealthy at once; the next call that needs the bus starts a
new run — in the caller's event loop, which may be a new one (``asyncio.run`` again).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .._bus import BusPublisherState, BusState
from .._bus_messages import Action
from .._errors import RedisUnavailableError
from .._instances import InstanceRecorder
from .._primitives import (
    AsyncEvent,
    AsyncLock,
    AsyncWorker,
    async_current_loop,
    async_redis_call,
    async_shard_client,
    async_wait_event,
)
from .redis_tier import AsyncRedisTier

_POLL = 0.05  # longest a listener waits for a message before it looks at its health
_RECONNECT_FIRST = 0.05  # first pause before re-subscribing after a failure (seconds)
_RECONNECT_MAX = 2.0  # bounded backoff
_STOP_TIMEOUT = 5.0
PROBE_INTERVAL = 0.05  # seconds between the prober's PINGs
_WORKERS = ("listener", "publisher", "prober")


class _Resubscribe(Exception):
    """The subscription ended or went silent: open a new one (and flush)."""


class _Run:
    """One start of the bus: its workers and the primitives they use, made in (and only
    usable from) the event loop it started in; a new event loop gets a new run."""

    def __init__(self) -> None:
        self.loop = async_current_loop()
        self.stop = AsyncEvent()
        self.wake = AsyncEvent()
        self.ready = AsyncEvent()
        self.publish_lock = AsyncLock()
        self.stopping = False
        self.heartbeat_now = False
        self.workers: list[AsyncWorker] = []

    def halt(self) -> None:
        """Ask both workers to end (they also end when cancelled)."""
        self.stopping = True
        loop = self.loop
        if loop is None or loop is async_current_loop():
            self._wake_workers()
        elif not loop.is_closed():  # its events may only be set from their own loop
            loop.call_soon_threadsafe(self._wake_workers)

    def _wake_workers(self) -> None:
        self.stop.set()
        self.wake.set()


class AsyncInvalidationBus:
    """Publishes this cache's invalidations and applies everyone else's to its L1."""

    def __init__(
        self,
        tier: AsyncRedisTier,
        channel: str,
        state: BusState,
        outbox: BusPublisherState,
        *,
        batch_window: float,
        heartbeat_timeout: float,
        on_redis_answers: Callable[[], None] | None = None,
        on_redis_silent: Callable[[float], None] | None = None,
        recorder: InstanceRecorder | None = None,
    ) -> None:
        self._tier = tier
        self._recorder = recorder
        self._on_redis_answers = on_redis_answers
        self._on_redis_silent = on_redis_silent
        # the prober's view: never refused by the breaker, and closes it when Redis answers
        self._probe_tier = tier.around_breaker()
        self._channel = channel
        self.state = state
        self.outbox = outbox
        self._window = batch_window
        self._timeout = heartbeat_timeout
        self._interval = max(0.005, heartbeat_timeout / 4)
        self._poll = min(_POLL, self._interval)
        self._cluster = tier.cluster
        self._start_lock = threading.Lock()
        self._run = _Run()
        self._stopping = False
        self.started = False
        self.loop: Any = None
        """The event loop the bus runs in (always None in the sync twin: threads)."""
        self.reconnects = 0

    # -- lifecycle ------------------------------------------------------------------------

    def needs_start(self) -> bool:
        """Whether the next call needing the bus must (re)start it: never started, started
        in another event loop, or a worker has ended. False once closed."""
        if self._stopping:
            return False
        if not self.started or self.loop is not async_current_loop():
            return True
        return not all(worker.alive() for worker in self._run.workers)

    def check_workers(self) -> None:
        """Mark the bus unhealthy if a worker has ended without being told to (even one
        whose event loop was closed with it still pending, which no callback reports)."""
        run = self._run
        if self._stopping or run.stopping:
            return
        for worker, name in zip(run.workers, _WORKERS):
            if not worker.alive():
                self.state.on_worker_died(name)

    async def start(self) -> None:
        """Start (or restart) the listener and publisher in the running event loop; wait
        (at most ``heartbeat_timeout``) until the bus is healthy. Until then the cache
        writes nothing to L1, so not waiting longer is safe: a Redis that is down costs L1
        hits, never freshness."""
        with self._start_lock:
            if not self.needs_start():
                return
            restart = self.started
            old, run = self._run, _Run()
            self._run = run
            self.started = True
            loop = async_current_loop()
            moved = loop is not self.loop
            self.loop = loop
        if restart:
            # deaf since the old run's end (or since its loop stopped running): unhealthy
            # (L1 flushed) before anything else, until the new run hears our heartbeat
            why = "was started in another event loop" if moved else "stopped"
            self.state.on_worker_died("listener", why)
            old.halt()
            for worker in old.workers:
                await worker.stop(_STOP_TIMEOUT)
            self.state.on_workers_restarted()
        run.workers = [
            AsyncWorker(
                lambda: self._listen(run),
                "stratacache-bus-listener",
                lambda: self._worker_ended(run, "listener"),
            ),
            AsyncWorker(
                lambda: self._publish_loop(run),
                "stratacache-bus-publisher",
                lambda: self._worker_ended(run, "publisher"),
            ),
            AsyncWorker(
                lambda: self._probe_loop(run),
                "stratacache-bus-prober",
                lambda: self._worker_ended(run, "prober"),
            ),
        ]
        await async_wait_event(run.ready, self._timeout)

    def _worker_ended(self, run: _Run, name: str) -> None:
        if not (run.stopping or self._stopping) and run is self._run:
            self.state.on_worker_died(name)

    async def aclose(self) -> None:
        """Stop both loops and send what is still batched (best effort)."""
        self._stopping = True
        run = self._run
        run.halt()
        if self.started and run.loop is async_current_loop() and self.state.healthy:
            # what is still batched, then a last heartbeat: our own listener, waiting for a
            # message for up to _POLL, hears it and sees the stop flag at once (a thread
            # cannot be interrupted in its socket read otherwise; a task is cancelled)
            async with run.publish_lock:
                await self._send([*self.outbox.drain(), self.outbox.encode(Action.HEARTBEAT)])
        for worker in run.workers:
            await worker.stop(_STOP_TIMEOUT)
        run.workers = []
        if self.started and self.outbox.pending() and run.loop is async_current_loop():
            await self._send(self.outbox.drain())
        recorder = self._recorder
        if recorder is not None and recorder.written and run.loop is async_current_loop():
            try:  # gone from the instances list now rather than when its TTL runs out
                await self._probe_tier.remove_instance(recorder.key, recorder.index, recorder.id)
            except Exception:
                pass

    # -- publishing -----------------------------------------------------------------------

    async def publish(
        self, action: Action, args: Iterable[str] = (), *, at_once: bool = False
    ) -> None:
        """Tell every other instance to invalidate: sent by the publisher loop at once when
        no publish is in flight, else with the others that arrive meanwhile as one
        message; with no window (``batch_window == 0``) or ``at_once``, sent before this
        returns, after what is still batched (one instance's messages go out in the order
        of its calls: a ``delete`` then an ``invalidate_tag`` are heard in that order)."""
        run = self._run
        if self._window > 0 and not at_once:
            if self.outbox.add(action, args):
                run.wake.set()
            return
        async with run.publish_lock:
            await self._send(self.outbox.drain() + self.outbox.encode_all(action, args))

    async def _send(self, payloads: list[bytes], *, guarded: bool = True) -> bool:
        """Publish each payload; False if a call to Redis failed (not merely refused by
        the open breaker)."""
        reached = True
        for payload in payloads:
            try:
                await self._tier.publish(self._channel, payload, guarded=guarded)
            except RedisUnavailableError as exc:
                # its sequence number is used: receivers see a gap and flush
                reached = reached and exc.__cause__ is None
                continue
            self.outbox.sent += 1
        return reached

    async def _publish_loop(self, run: _Run) -> None:
        next_heartbeat = time.monotonic()
        while not run.stopping:
            await async_wait_event(run.wake, max(0.0, next_heartbeat - time.monotonic()))
            run.wake.clear()
            if run.stopping:
                break
            try:
                async with run.publish_lock:
                    batch = self.outbox.drain()
                    reached = await self._send(batch)
                    now = time.monotonic()
                    if run.heartbeat_now or now >= next_heartbeat:
                        run.heartbeat_now = False
                        next_heartbeat = now + self._interval
                        heartbeat = self.outbox.encode(Action.HEARTBEAT)
                        reached = await self._send([heartbeat], guarded=False) and reached
                if not reached:
                    # Redis is out of our reach, so others' messages are out of reach too:
                    # no need to wait for heartbeat_timeout of silence to know it
                    self.state.on_publish_failed()
                self.state.check_health()
                # No pause after a send: a write on a quiet bus goes out at once, and what
                # arrived while a publish was in flight (a burst) goes out next, as one
                # message (add() set ``wake`` for it). A pause here would delay a lone
                # write that follows another by up to the pause.
            except Exception:  # pragma: no cover - never let the loop die (bug guard)
                await async_wait_event(run.stop, self._interval)

    async def _probe_loop(self, run: _Run) -> None:
        answered = True
        while not run.stopping:
            try:
                sent = time.monotonic()
                if await self._probe_tier.ping():
                    if not answered:
                        # back: hear ourselves now rather than at the next heartbeat
                        run.heartbeat_now = True
                        run.wake.set()
                        if self._on_redis_answers is not None:
                            self._on_redis_answers()
                    answered = True
                    recorder = self._recorder
                    if recorder is not None and recorder.due():
                        blob, ttl_ms, expires_ms = recorder.record()
                        await self._probe_tier.put_instance(
                            recorder.key, recorder.index, recorder.id, blob, ttl_ms, expires_ms
                        )
                        recorder.written += 1
                else:
                    answered = False
                    self.state.on_probe_failed()
                    if self._on_redis_silent is not None:
                        # silent since the PING was sent (not since it timed out: a write
                        # that Redis took meanwhile is newer than the silence)
                        self._on_redis_silent(time.monotonic() - sent)
            except Exception:  # pragma: no cover - never let the loop die (bug guard)
                pass
            await async_wait_event(run.stop, PROBE_INTERVAL)

    # -- listening ------------------------------------------------------------------------

    async def _listen(self, run: _Run) -> None:
        pause = _RECONNECT_FIRST
        while not run.stopping:
            subscribed = False
            try:
                subscribed = await self._listen_once(run)
            except Exception:  # a dropped or refused connection, a timeout: try again
                self.reconnects += 1
            if run is self._run:  # (a superseded run's listener has nothing to report)
                self.state.on_disconnected(closing=run.stopping)
            if run.stopping:
                break
            if subscribed:
                pause = _RECONNECT_FIRST
            await async_wait_event(run.stop, pause)
            pause = min(pause * 2, _RECONNECT_MAX)

    async def _listen_once(self, run: _Run) -> bool:
        """Subscribe and handle messages until stopped or the subscription fails.

        Returns (or raises) when the subscription must be renewed; True if it had been
        confirmed, so that the next attempt starts with a short pause again.
        """
        client = None
        if self._cluster:  # sharded pub/sub: one connection to the channel's shard
            client = await async_shard_client(self._tier.client, self._channel)
        pubsub = (client or self._tier.client).pubsub()
        confirmed = False
        try:
            if self._cluster:
                await async_redis_call(pubsub.ssubscribe, self._channel)
            else:
                await async_redis_call(pubsub.subscribe, self._channel)
            opened = time.monotonic()
            while not run.stopping:
                message = await async_redis_call(pubsub.get_message, timeout=self._poll)
                healthy = self.state.check_health()
                if message is not None:
                    subscribed = self._handle(message, run)
                    if subscribed and confirmed:
                        # redis-py reconnected and re-subscribed by itself (the client's
                        # reconnect-once policy): a renewal all the same
                        self.reconnects += 1
                    confirmed = subscribed or confirmed
                elif not healthy and self.state.silent_for(opened) > 3 * self._timeout:
                    # subscribed but deaf (half-open socket?): renew the subscription
                    raise _Resubscribe("no heartbeat heard")
            return confirmed
        except Exception:
            if confirmed:
                self.reconnects += 1
                return True
            raise
        finally:
            try:
                await pubsub.aclose()
            finally:
                if client is not None:
                    await client.aclose()

    def _handle(self, message: dict[str, Any], run: _Run) -> bool:
        """Apply one pub/sub message; True if it confirmed a subscription."""
        kind = message["type"]
        if kind in ("message", "smessage"):
            self.state.on_payload(message["data"])
            if self.state.healthy and not run.ready.is_set():
                run.ready.set()
            return False
        if kind in ("subscribe", "ssubscribe"):
            self.state.on_subscribed()
            run.heartbeat_now = True  # hear ourselves as soon as possible
            run.wake.set()
            return True
        if kind in ("unsubscribe", "sunsubscribe"):
            # Redis ends shard subscriptions when the slot moves: renew on its new owner
            raise _Resubscribe(f"{kind} from the server")
        return False
