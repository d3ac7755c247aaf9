"""The invalidation bus's bookkeeping, written once for both halves (no I/O).

Design notes
------------
Redis pub/sub delivers at most once, so a listener must assume it misses messages and
fall back on flushing its L1 (every entry is then re-read from L2 on its next use):

- on every (re)subscribe: whatever was published while we were not subscribed is lost
  (and as soon as a subscription is seen to fail: the bus is unhealthy until the new one
  is confirmed, so L1 does not serve through the reconnect);
- on a gap in a source's sequence numbers (a lost message; an output-buffer overflow
  drops the connection, which is also a resubscribe);
- when the bus is *unhealthy*: each instance publishes a heartbeat and must hear its own
  within ``heartbeat_timeout``. A subscription can go silent without an error (a paused
  server, a half-open socket); only hearing ourselves proves it is alive. While the bus
  is unhealthy the cache keeps its L1 empty (reads go to L2 / the loader) unless the
  ``serve_l1`` policy is chosen; on recovery L1 is flushed once more, which also refuses
  every fill that started while the bus was down (the L1's ticket guard).

Heartbeats use the same sequence as invalidations, so a lost invalidation is noticed by
the next heartbeat of its source at the latest (``heartbeat_timeout / 4``).

**Signed messages and replays.** With bus keys, a message whose tag does not verify is
dropped (and counted as forged) *before* anything else: it never reaches the sequence
check, so a stranger's message cannot cause a gap flush, nor count as our own
heartbeat. A message whose sequence number is not above the last one heard from its
source (ours included) is a duplicate or a replay and is ignored (counted as dropped):
one source's messages reach the channel in order (each is encoded and published under
the publish lock), and a later one that did arrive first, after a publish that timed
out, was a gap that flushed L1 after the earlier message was encoded, so ignoring it
loses nothing. A replayed message is thus either ignored or, when its source is not
known (after our own resubscribe), applied once: it only ever *removes* entries from
L1, which then re-reads them from L2; a bus message never carries a value. Without bus
keys the sequence numbers are not trusted (anyone can forge a high one, which would make
the real source's next messages look old): any break in a source's sequence, backwards
too, is a gap and flushes L1, the safe answer.

:class:`BusState` is shared by the listener (thread or task), the publisher and the
cache's callers; a lock guards it (no I/O is done under it).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Literal

from ._bus_messages import (
    SOURCE_ID_BYTES,
    Action,
    BusMessage,
    decode_message,
    encode_message,
    sign_message,
    split_args,
    verify_message,
)
from ._keys import fnmatch_glob
from ._stats import LatencyRecorder

UnhealthyPolicy = Literal["bypass_l1", "serve_l1"]
_MAX_SOURCES = 10_000  # sources remembered for gap detection (least recently heard go)
LOG_INTERVAL = 60.0
"""Seconds between two WARNINGs about the bus's health (the spells between are counted)."""

logger = logging.getLogger("stratacache.bus")


def new_source_id() -> bytes:
    """A random id for one cache instance in one process."""
    return os.urandom(SOURCE_ID_BYTES)


class BusState:
    """What the listener has heard: sequence tracking, health, flushes and metrics.

    Health changes are logged on ``stratacache.bus`` (outside the lock): a WARNING when
    the bus turns unhealthy, with why, and an INFO when it recovers, with how long it
    lasted; at most one WARNING per ``log_interval`` seconds (the spells in between are
    counted in the next one, and their recoveries are not logged).
    """

    def __init__(
        self,
        source: bytes,
        flush_l1: Callable[[], None],
        apply: Callable[[BusMessage], None],
        *,
        heartbeat_timeout: float,
        policy: UnhealthyPolicy = "bypass_l1",
        timer: Callable[[], float],
        clock: Callable[[], float],
        name: str = "",
        log_interval: float = LOG_INTERVAL,
        keys: tuple[bytes, ...] = (),
    ) -> None:
        self.source = source
        self._keys = keys
        self._flush_l1 = flush_l1
        self._apply = apply
        self.heartbeat_timeout = heartbeat_timeout
        self.policy = policy
        self._timer = timer
        self._clock = clock
        self._name = name
        self._lock = threading.Lock()
        self._last_seq: OrderedDict[bytes, int] = OrderedDict()
        self._own_seq = 0  # our own last message heard: an older one is a replay
        self.healthy = False
        self.ever_healthy = False
        """Set once the first heartbeat was heard (later flushes follow a deaf spell)."""
        # False only while unhealthy under "bypass_l1": the cache then writes nothing to L1
        self.l1_usable = policy == "serve_l1"
        self._last_heard: float | None = None
        self._unhealthy_since: float | None = None  # the start-up wait is not counted
        self._unhealthy_total = 0.0
        self.unhealthy_reason = "starting"
        """Why the bus is (or last was) unhealthy."""
        self.flush_cause = ""
        """Why L1 is being flushed (read by the flush callback): ``subscribe``, ``gap``,
        ``unhealthy`` or ``recovered`` (our heartbeat heard again)."""
        self.redis_trouble = False
        """Whether the current (or last) deaf spell, or a gap, may come from Redis being
        out of reach of some instance (not from this process's own workers ending): then
        another instance may hold writes in its outbox that L2 does not show yet."""
        # workers (listener, publisher) that ended: no heartbeat heard can prove health
        # until they are restarted
        self._dead: set[str] = set()
        self._log_interval = log_interval
        self._last_warning: float | None = None
        self._spell_logged = False
        self._spells_unlogged = 0
        self.received = 0
        self.dropped = 0
        self.forged = 0
        """Messages dropped because their signature was missing or wrong (also counted
        in ``dropped``); always 0 without bus keys."""
        self.flushes_subscribe = 0
        self.flushes_gap = 0
        self.flushes_heartbeat = 0
        self.lag = LatencyRecorder()

    # -- events from the listener -------------------------------------------------------

    def on_subscribed(self) -> None:
        """A (re)subscription is confirmed: anything may have been missed before it."""
        with self._lock:
            self._last_seq.clear()
            self.flushes_subscribe += 1
            self.flush_cause = "subscribe"
            self._flush_l1()

    def on_disconnected(self, *, closing: bool = False) -> None:
        """The subscription is gone: until a new one is confirmed and our heartbeat heard,
        the bus is unhealthy (messages published meanwhile are lost to us). ``closing``:
        the cache is being closed, which is nothing an operator must hear about."""
        self._turn_unhealthy("the subscription was lost", "subscribe", quiet=closing)

    def on_publish_failed(self) -> None:
        """A publish to Redis failed or timed out: this instance cannot reach Redis, so
        what others publish cannot reach it either; unhealthy now rather than after
        ``heartbeat_timeout`` of silence."""
        self._turn_unhealthy("a publish to Redis failed", "heartbeat")

    def on_probe_failed(self) -> None:
        """Redis did not answer the prober's PING in time (a paused or unreachable
        server): unhealthy now, since others' invalidations cannot reach us either."""
        self._turn_unhealthy("Redis did not answer a PING", "heartbeat")

    def on_worker_died(self, worker: str, why: str = "stopped") -> None:
        """A listener or publisher ended while the bus runs (its event loop ended, an
        uncaught error): unhealthy at once, and until :meth:`on_workers_restarted`."""
        with self._lock:
            self._dead.add(worker)
        self._turn_unhealthy(f"the bus {worker} {why}", "subscribe", redis_trouble=False)

    def on_workers_restarted(self) -> None:
        """New workers run: health can be proved again (by our next heartbeat heard)."""
        with self._lock:
            self._dead.clear()

    @property
    def dead_workers(self) -> frozenset[str]:
        """The workers known to have ended (empty while the bus runs)."""
        return frozenset(self._dead)

    def on_payload(self, data: object) -> None:
        """Handle one message from the channel (untrusted bytes)."""
        forged = False
        if self._keys:
            data = verify_message(data, self._keys)
            forged = data is None
        message = None if forged else decode_message(data)
        now_wall = self._clock()
        recovered: str | None = None
        with self._lock:
            if message is None:
                self.dropped += 1
                self.forged += forged
                return
            signed = bool(self._keys)
            if message.source == self.source:
                if signed and message.seq <= self._own_seq:
                    self.dropped += 1  # a replay of ours: not a proof that we hear
                    return
                self._own_seq = message.seq
                self.received += 1
                self.lag.record(max(0.0, now_wall - message.sent_at))
                if message.action is Action.HEARTBEAT:
                    recovered = self._heard_own_heartbeat()
            else:
                last = self._last_seq.get(message.source)
                if signed and last is not None and message.seq <= last:
                    self.dropped += 1  # a duplicate or replay (see the module notes)
                    return
                self.received += 1
                self.lag.record(max(0.0, now_wall - message.sent_at))
                self._last_seq[message.source] = message.seq
                self._last_seq.move_to_end(message.source)
                if len(self._last_seq) > _MAX_SOURCES:
                    self._last_seq.popitem(last=False)
                if last is not None and message.seq != last + 1:
                    self.flushes_gap += 1
                    self.redis_trouble = True  # its write may have failed with the message
                    self.flush_cause = "gap"
                    self._flush_l1()
                elif message.action is not Action.HEARTBEAT:
                    self._apply(message)
        if recovered is not None:
            logger.info("%s", recovered)

    def last_seq_of(self, source: bytes) -> int | None:
        """The last sequence number heard from ``source`` since the last subscribe."""
        with self._lock:
            return self._last_seq.get(source)

    # -- health ---------------------------------------------------------------------------

    def _heard_own_heartbeat(self) -> str | None:
        """Lock held; the recovery line to log, if any."""
        self._last_heard = self._timer()
        if self.healthy or self._dead:
            return None
        # messages may have been lost while we could not hear: flush before L1 is used
        line = None
        if self._unhealthy_since is not None:
            spell = self._last_heard - self._unhealthy_since
            self._unhealthy_total += spell
            self._unhealthy_since = None
            if self._spell_logged:
                line = f"stratacache bus{self._label()} healthy again after {spell:.3f} s"
        self.flushes_heartbeat += 1
        self.flush_cause = "recovered"
        self._flush_l1()
        self.healthy = True
        self.ever_healthy = True
        self.l1_usable = True
        return line

    def check_health(self) -> bool:
        """Mark the bus unhealthy if our own heartbeat is overdue; return ``healthy``."""
        with self._lock:
            if not self.healthy:
                return False
            if not self._overdue(self._timer()):
                return True
        reason = f"our own heartbeat is overdue (none heard for {self.heartbeat_timeout:g} s)"
        return self._turn_unhealthy(reason, "heartbeat", only_if_overdue=True)

    def _overdue(self, now: float) -> bool:
        return self._last_heard is None or now - self._last_heard > self.heartbeat_timeout

    def _turn_unhealthy(
        self,
        reason: str,
        flush: str,
        *,
        only_if_overdue: bool = False,
        redis_trouble: bool = True,
        quiet: bool = False,
    ) -> bool:
        """Healthy -> unhealthy (else nothing): under "bypass_l1", refuse L1 writes first,
        then empty L1 (see the cache notes); log it outside the lock. Returns ``healthy``."""
        with self._lock:
            now = self._timer()
            if not self.healthy or (only_if_overdue and not self._overdue(now)):
                return self.healthy
            self.healthy = False
            self._unhealthy_since = now
            self.unhealthy_reason = reason
            self.redis_trouble = redis_trouble
            if self.policy == "bypass_l1":
                self.l1_usable = False
                if flush == "subscribe":
                    self.flushes_subscribe += 1
                else:
                    self.flushes_heartbeat += 1
                self.flush_cause = "unhealthy"
                self._flush_l1()
            line = None if quiet else self._warning_line(reason, now)
            if quiet:
                self._spell_logged = False  # nor its recovery
        if line is not None:
            logger.warning("%s", line)
        return False

    def _warning_line(self, reason: str, now: float) -> str | None:
        """Lock held: the WARNING to log for a new unhealthy spell, unless rate-limited."""
        if self._last_warning is not None and now - self._last_warning < self._log_interval:
            self._spells_unlogged += 1
            self._spell_logged = False
            return None
        self._last_warning = now
        self._spell_logged = True
        effect = (
            "L1 is bypassed (reads go to Redis or the loader)"
            if self.policy == "bypass_l1"
            else "L1 keeps serving (bus_unhealthy='serve_l1'), bounded by l1_max_ttl"
        )
        line = f"stratacache bus{self._label()} unhealthy: {reason}; {effect} until it recovers"
        if self._spells_unlogged:
            line += f" ({self._spells_unlogged} earlier unhealthy spells not logged)"
            self._spells_unlogged = 0
        return line

    def _label(self) -> str:
        return f" {self._name!r}" if self._name else ""

    def silent_for(self, since: float) -> float:
        """Seconds since our own heartbeat was last heard (or since ``since``, if later)."""
        with self._lock:
            heard = since if self._last_heard is None else max(since, self._last_heard)
            return self._timer() - heard

    def unhealthy_seconds(self) -> float:
        """Total time spent unhealthy after the first heartbeat (including the current spell)."""
        with self._lock:
            total = self._unhealthy_total
            if self._unhealthy_since is not None:
                total += self._timer() - self._unhealthy_since
            return total


class BusPublisherState:
    """The sending side: sequence numbers and the batch of pending invalidations."""

    def __init__(self, source: bytes, clock: Callable[[], float], key: bytes | None = None) -> None:
        self.source = source
        self._clock = clock
        self._key = key  # signs every message (heartbeats too) when set
        self._lock = threading.Lock()
        self._seq = 0
        self._keys: dict[str, None] = {}
        self._tags: dict[str, None] = {}
        self._patterns: dict[str, None] = {}
        self._clear = False
        self.sent = 0

    @property
    def last_seq(self) -> int:
        """The last sequence number handed out."""
        return self._seq

    def add(self, action: Action, args: Iterable[str] = ()) -> bool:
        """Queue an invalidation for the next batch; True if the batch was empty."""
        with self._lock:
            was_empty = not (self._keys or self._tags or self._patterns or self._clear)
            if action is Action.INVALIDATE_KEYS:
                self._keys.update(dict.fromkeys(args))
            elif action is Action.INVALIDATE_TAGS:
                self._tags.update(dict.fromkeys(args))
            elif action is Action.INVALIDATE_MATCHING:
                self._patterns.update(dict.fromkeys(args))
            elif action is Action.CLEAR:
                self._clear = True
            return was_empty

    def pending(self) -> bool:
        """Whether a batch is waiting to be sent."""
        return bool(self._keys or self._tags or self._patterns or self._clear)

    def drain(self) -> list[bytes]:
        """The pending batch as encoded messages (sequence numbers assigned in order)."""
        with self._lock:
            keys, self._keys = list(self._keys), {}
            tags, self._tags = list(self._tags), {}
            patterns, self._patterns = list(self._patterns), {}
            clear, self._clear = self._clear, False
        out: list[bytes] = []
        if clear:
            out.append(self.encode(Action.CLEAR))
        for action, args in (
            (Action.INVALIDATE_KEYS, keys),
            (Action.INVALIDATE_TAGS, tags),
            (Action.INVALIDATE_MATCHING, patterns),
        ):
            out.extend(self.encode(action, chunk) for chunk in split_args(args))
        return out

    def encode(self, action: Action, args: Iterable[str] = ()) -> bytes:
        """One message with the next sequence number (a message that is then not sent is
        a gap at every receiver: they flush, which is the safe outcome)."""
        with self._lock:
            self._seq += 1
            seq = self._seq
        payload = encode_message(BusMessage(self.source, seq, self._clock(), action, tuple(args)))
        return payload if self._key is None else sign_message(payload, self._key)

    def encode_all(self, action: Action, args: Iterable[str]) -> list[bytes]:
        """Unbatched: the messages for one invalidation, split by the size bound."""
        if action is Action.CLEAR or action is Action.HEARTBEAT:  # no args: one message
            return [self.encode(action)]
        return [self.encode(action, chunk) for chunk in split_args(list(args))]


def apply_to_l1(l1: Any, message: BusMessage) -> None:
    """Carry out one invalidation on an L1 (through its key/tag index and fill guard)."""
    if message.action is Action.INVALIDATE_KEYS:
        for key in message.args:
            l1.invalidate(key)
    elif message.action is Action.INVALIDATE_TAGS:
        l1.invalidate_tags(message.args)
    elif message.action is Action.INVALIDATE_MATCHING:
        for pattern in message.args:
            try:
                l1.invalidate_matching(fnmatch_glob(pattern))  # patterns are Redis globs
            except ValueError:  # not a glob we could have sent: drop everything instead
                l1.clear()
    elif message.action is Action.CLEAR:
        l1.clear()
