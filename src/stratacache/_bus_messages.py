"""Invalidation-bus messages: encoding and hostile-input-safe decoding (no I/O).

A message is a msgpack array ``[version, source, seq, sent_at, action, args]``:

- ``version``: :data:`BUS_FORMAT_VERSION`; other versions are dropped, so a rolling
  upgrade costs a flush (the receiver sees a sequence gap), never a crash.
- ``source``: the sending cache's random id (16 bytes), so instances drop their own.
- ``seq``: that source's sequence number (1, 2, 3, ...): a gap means a lost message.
- ``sent_at``: the sender's wall clock (seconds), for the lag metric.
- ``action``: one of :class:`Action`.
- ``args``: keys, tags or glob patterns (a list of str); empty for ``CLEAR``/``HEARTBEAT``.

Never the value. Bytes from the channel are untrusted (anyone with access to Redis can
publish): :func:`decode_message` returns a :class:`BusMessage` or ``None``, never raises.

**Signing.** With bus keys (derived by :func:`bus_keys` from the cache's secrets and the
channel name, so a message cannot be replayed into another namespace's channel), a
message on the wire is ``HMAC-SHA256(key, body) || body``: the tag covers the whole
message (source, sequence number, action and args), the first key signs and every key
verifies (each is tried: no key id, as for entries). :func:`verify_message` returns the
body or ``None``; only a verified body is decoded.
"""

from __future__ import annotations

import enum
import hmac
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import msgpack  # type: ignore[import-untyped]

BUS_FORMAT_VERSION = 1
SOURCE_ID_BYTES = 16
MAX_MESSAGE_BYTES = 64 * 1024
"""Largest message sent or accepted; longer batches are split over several messages."""
_MAX_ARGS = 16 * 1024
_ENVELOPE_BYTES = 64  # generous bound of everything but the args in an encoded message
MAC_BYTES = 32
"""Length of the HMAC-SHA256 tag in front of a signed message (not counted in
:data:`MAX_MESSAGE_BYTES`, which bounds the body)."""


class Action(enum.IntEnum):
    """What a message asks of every other instance's L1."""

    INVALIDATE_KEYS = 1
    INVALIDATE_TAGS = 2
    INVALIDATE_MATCHING = 3
    CLEAR = 4
    HEARTBEAT = 5


@dataclass(frozen=True)
class BusMessage:
    """One decoded bus message."""

    source: bytes
    seq: int
    sent_at: float
    action: Action
    args: tuple[str, ...] = ()


def encode_message(message: BusMessage) -> bytes:
    """The wire form of ``message`` (msgpack array; see the module notes)."""
    return msgpack.packb(  # type: ignore[no-any-return]
        [
            BUS_FORMAT_VERSION,
            message.source,
            message.seq,
            message.sent_at,
            int(message.action),
            list(message.args),
        ],
        use_bin_type=True,
    )


def decode_message(data: object) -> BusMessage | None:
    """The message in ``data``, or None if it is not a well-formed message of our version."""
    if not isinstance(data, bytes) or len(data) > MAX_MESSAGE_BYTES:
        return None
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_array_len=_MAX_ARGS,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception:  # msgpack raises several kinds on hostile input; all mean "drop"
        return None
    if not isinstance(raw, list) or len(raw) != 6:
        return None
    version, source, seq, sent_at, action, args = raw
    if version != BUS_FORMAT_VERSION or type(version) is not int:
        return None
    if not isinstance(source, bytes) or len(source) != SOURCE_ID_BYTES:
        return None
    if type(seq) is not int or seq < 1:
        return None
    # NaN or an infinity is not a time (a stranger's -inf put an infinite lag in the p99)
    if type(sent_at) not in (float, int) or not math.isfinite(sent_at):
        return None
    if type(action) is not int or action not in Action._value2member_map_:
        return None
    if not isinstance(args, list) or not all(type(a) is str for a in args):
        return None
    kind = Action(action)
    if kind in (Action.CLEAR, Action.HEARTBEAT) and args:
        return None
    return BusMessage(source, seq, float(sent_at), kind, tuple(args))


def bus_keys(secrets: Sequence[bytes], channel: str) -> tuple[bytes, ...]:
    """The bus keys of ``channel``, one per secret (same order: the first signs)."""
    label = b"stratacache/bus\0" + channel.encode("utf-8")
    return tuple(hmac.digest(secret, label, "sha256") for secret in secrets)


def sign_message(payload: bytes, key: bytes) -> bytes:
    """``payload`` with its tag in front (see the module notes)."""
    return hmac.digest(key, payload, "sha256") + payload


def verify_message(data: object, keys: Sequence[bytes]) -> bytes | None:
    """The body of a signed message if its tag matches one of ``keys``, else ``None``
    (unsigned, truncated, forged, signed by a retired key, or not bytes); never raises."""
    if not isinstance(data, bytes) or not MAC_BYTES < len(data) <= MAX_MESSAGE_BYTES + MAC_BYTES:
        return None
    tag, body = data[:MAC_BYTES], data[MAC_BYTES:]
    for key in keys:
        if hmac.compare_digest(hmac.digest(key, body, "sha256"), tag):
            return body
    return None


def split_args(args: Sequence[str], limit: int = MAX_MESSAGE_BYTES) -> Iterator[list[str]]:
    """``args`` in consecutive chunks whose messages each encode within ``limit`` bytes."""
    budget = limit - _ENVELOPE_BYTES
    chunk: list[str] = []
    size = 0
    for arg in args:
        # msgpack str: at most 5 header bytes + UTF-8 (at most 4 bytes per character)
        need = 5 + (len(arg) if arg.isascii() else len(arg.encode("utf-8")))
        if chunk and (size + need > budget or len(chunk) >= _MAX_ARGS):
            yield chunk
            chunk, size = [], 0
        chunk.append(arg)
        size += need
    if chunk:
        yield chunk


__all__ = [
    "BUS_FORMAT_VERSION",
    "MAC_BYTES",
    "MAX_MESSAGE_BYTES",
    "SOURCE_ID_BYTES",
    "Action",
    "BusMessage",
    "bus_keys",
    "decode_message",
    "encode_message",
    "sign_message",
    "split_args",
    "verify_message",
]
