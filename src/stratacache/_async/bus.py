"""The invalidation bus: one listener and one publisher per cache (tasks here, threads in
the generated sync twin), on the namespace's pub/sub channel.

The bookkeeping (sequence numbers, gaps, health, batching) lives in ``stratacache._bus``
and is shared by both halves; this module only moves bytes. See ``_bus.py`` for why each
flush happens. Neither loop ever lets an exception out: the listener re-subscribes with a
bounded backoff, a publish that fails is a gap that receivers answer with a flush.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from .._bus import BusPublisherState, BusState
from .._bus_messages import Action
from .._errors import RedisUnavailableError
from .._primitives import (
    AsyncEvent,
    AsyncLock,
    AsyncWorker,
    async_shard_client,
    async_sleep,
    async_wait_event,
)
from .redis_tier import AsyncRedisTier

_POLL = 0.05  # longest a listener waits for a message before it looks at its health
_RECONNECT_FIRST = 0.05  # first pause before re-subscribing after a failure (seconds)
_RECONNECT_MAX = 2.0  # bounded backoff
_STOP_TIMEOUT = 5.0


class _Resubscribe(Exception):
    """The subscription ended or went silent: open a new one (and flush)."""


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
    ) -> None:
        self._tier = tier
        self._channel = channel
        self.state = state
        self.outbox = outbox
        self._window = batch_window
        self._timeout = heartbeat_timeout
        self._interval = max(0.005, heartbeat_timeout / 4)
        self._poll = min(_POLL, self._interval)
        self._cluster = tier.cluster
        self._start_lock = threading.Lock()
        self._publish_lock = AsyncLock()
        self._stop = AsyncEvent()
        self._wake = AsyncEvent()
        self._ready = AsyncEvent()
        self._heartbeat_now = False
        self._stopping = False
        self._workers: list[AsyncWorker] = []
        self.started = False
        self.reconnects = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the listener and publisher; wait (at most ``heartbeat_timeout``) until the
        bus is healthy. Until then the cache writes nothing to L1, so not waiting longer
        is safe: a Redis that is down costs L1 hits, never freshness."""
        with self._start_lock:
            if self.started:
                return
            self.started = True
        self._workers = [
            AsyncWorker(self._listen, "stratacache-bus-listener"),
            AsyncWorker(self._publish_loop, "stratacache-bus-publisher"),
        ]
        await async_wait_event(self._ready, self._timeout)

    async def aclose(self) -> None:
        """Stop both loops and send what is still batched (best effort)."""
        self._stopping = True
        self._stop.set()
        self._wake.set()
        for worker in self._workers:
            await worker.stop(_STOP_TIMEOUT)
        self._workers = []
        if self.started and self.outbox.pending():
            await self._send(self.outbox.drain())

    # -- publishing -----------------------------------------------------------------------

    async def publish(
        self, action: Action, args: Iterable[str] = (), *, at_once: bool = False
    ) -> None:
        """Tell every other instance to invalidate: sent by the publisher loop at once when
        the bus is quiet, else with the others of the same ``batch_window`` as one message;
        with no window or ``at_once``, sent before this returns."""
        if self._window > 0 and not at_once:
            if self.outbox.add(action, args):
                self._wake.set()
            return
        async with self._publish_lock:
            await self._send(self.outbox.encode_all(action, args))

    async def _send(self, payloads: list[bytes], *, guarded: bool = True) -> None:
        for payload in payloads:
            try:
                await self._tier.publish(self._channel, payload, guarded=guarded)
            except RedisUnavailableError:
                continue  # its sequence number is used: receivers see a gap and flush
            self.outbox.sent += 1

    async def _publish_loop(self) -> None:
        next_heartbeat = time.monotonic()
        while not self._stopping:
            await async_wait_event(self._wake, max(0.0, next_heartbeat - time.monotonic()))
            self._wake.clear()
            if self._stopping:
                break
            try:
                async with self._publish_lock:
                    batch = self.outbox.drain()
                    await self._send(batch)
                    now = time.monotonic()
                    if self._heartbeat_now or now >= next_heartbeat:
                        self._heartbeat_now = False
                        next_heartbeat = now + self._interval
                        heartbeat = self.outbox.encode(Action.HEARTBEAT)
                        await self._send([heartbeat], guarded=False)
                self.state.check_health()
                if batch and self._window > 0:
                    # Leading-edge batching: a write on a quiet bus goes out at once; what
                    # arrives in the next window (a burst) goes out as one message.
                    await async_sleep(self._window)
            except Exception:  # pragma: no cover - never let the loop die (bug guard)
                await async_wait_event(self._stop, self._interval)

    # -- listening ------------------------------------------------------------------------

    async def _listen(self) -> None:
        pause = _RECONNECT_FIRST
        while not self._stopping:
            subscribed = False
            try:
                subscribed = await self._listen_once()
            except Exception:  # a dropped or refused connection, a timeout: try again
                self.reconnects += 1
            self.state.on_disconnected()
            if self._stopping:
                break
            if subscribed:
                pause = _RECONNECT_FIRST
            await async_wait_event(self._stop, pause)
            pause = min(pause * 2, _RECONNECT_MAX)

    async def _listen_once(self) -> bool:
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
                await pubsub.ssubscribe(self._channel)
            else:
                await pubsub.subscribe(self._channel)
            opened = time.monotonic()
            while not self._stopping:
                message = await pubsub.get_message(timeout=self._poll)
                healthy = self.state.check_health()
                if message is not None:
                    subscribed = self._handle(message)
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

    def _handle(self, message: dict[str, Any]) -> bool:
        """Apply one pub/sub message; True if it confirmed a subscription."""
        kind = message["type"]
        if kind in ("message", "smessage"):
            self.state.on_payload(message["data"])
            if self.state.healthy and not self._ready.is_set():
                self._ready.set()
            return False
        if kind in ("subscribe", "ssubscribe"):
            self.state.on_subscribed()
            self._heartbeat_now = True  # hear ourselves as soon as possible
            self._wake.set()
            return True
        if kind in ("unsubscribe", "sunsubscribe"):
            # Redis ends shard subscriptions when the slot moves: renew on its new owner
            raise _Resubscribe(f"{kind} from the server")
        return False
