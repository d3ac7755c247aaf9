"""The msgpack codec: the envelope stored in Redis, ext types, limits and optional signing.

Design notes
------------
* **Security.** msgpack only, never pickle. Decoding bytes from Redis can only give an
  :class:`Entry` or raise :class:`CorruptEntryError` (which the cache turns into a miss and
  a ``decode_errors`` count); nothing in the blob selects code to run except the decoders
  the *application* registered for its own ext codes. With ``secret=`` every blob carries
  an HMAC-SHA256 tag that is checked (``hmac.compare_digest``) before unpacking.
* **Key rotation.** ``secret=`` takes one secret or a sequence of them (or ``secrets=``):
  the first signs, every one verifies (each is tried in turn: the tag carries no key id,
  so blobs written before rotation stay readable). Rotate in three rolling deploys:
  ``[old, new]`` (everyone accepts ``new``), then ``[new, old]`` (``new`` signs, entries
  signed by ``old`` still read), then, once those have expired or been rewritten,
  ``[new]``. A blob signed by a key no longer listed is corrupt: a miss and a
  ``decode_errors`` count, never an exception.
* **One unpack on the hit path.** An entry is a single msgpack array
  ``[FORMAT_VERSION, key, created_at, expires_at, [tags...], [stamps...], epoch, payload]``
  so ``decode`` is one ``msgpack.unpackb`` call; the payload is nested, not a second blob.
  An entry written by a loader fill carries a ninth item, ``load_us``: how long the
  loader took, in whole microseconds, rounded up (early refresh, ``_xfetch.py``, needs it). It is
  optional (an 8-item envelope reads as ``load_time=0.0``), so entries written before it
  existed, and by ``set()``, stay byte-for-byte what they were; a 9-item envelope is a
  miss (a ``decode_errors`` count) to a release that predates it.
  (With a secret, the 32-byte tag is a prefix: ``tag || array``.) ``stamps`` holds, for
  each tag, the tag's version when the entry was written, and ``epoch`` the namespace
  epoch: the cache treats an entry whose tag was invalidated since (or written before the
  last epoch bump) as a miss, which is what makes tag invalidation O(1).
* **Types.** Natively: ``None``, ``bool``, ``int`` (64-bit), ``float`` (NaN/inf too),
  ``str``, ``bytes``, ``list``, ``dict`` (keys of any supported hashable type). As ext types
  with reserved codes 1..15: ``tuple`` (stays a tuple, also as a map key), ``set``,
  ``frozenset``, ``datetime``, ``date``, ``time``, ``timedelta``, ``UUID``, ``Decimal`` and
  ints beyond 64 bits. Application types go through a :class:`TypeRegistry` (codes
  16..127). ``bytearray`` and ``memoryview`` are written as bin and come back as ``bytes``.
* **Exact types only.** A subclass of a supported type (``OrderedDict``, ``IntEnum``,
  a ``namedtuple``, a ``datetime`` subclass...) is rejected with
  :class:`SerializationError` unless it is registered itself: writing it as its base type
  would make an L2 hit return a different type than the L1 hit for the same entry.
* **Datetimes.** Lossless: all fields including microseconds and ``fold``; an aware value
  keeps its UTC offset, but as a fixed offset (``datetime.timezone``): a named zone
  (``ZoneInfo("Europe/Paris")``) comes back as ``timezone(timedelta(hours=1))`` — the same
  instant and wall time. An aware ``time`` whose zone needs a date to know its offset is
  rejected.
* **Limits.** ``max_size`` bounds the whole blob (checked after encoding, and before
  unpacking on decode; ``unpackb`` also caps every declared str/bin/array/ext length by
  the buffer length and a map's by half of it, so a tiny blob declaring a 4 GiB string
  or array fails before allocating). Those caps are msgpack's defaults for ``unpackb``,
  not passed explicitly: passing them costs ~70 ns (~9%) per decode, and
  ``tests/test_fuzz.py`` pins them instead. What remains is nesting: each open array may
  declare up to the blob's length in items before they are read and msgpack
  preallocates that list (zeroed pages, mostly untouched), so a hostile blob can reserve
  up to ``1024 x 8 x len(blob)`` bytes of address space for an instant before it is a
  miss: keep ``max_size`` modest.
  ``max_depth`` bounds container nesting on encode: ``dict``, ``list``, ``tuple``,
  ``set``, ``frozenset`` and each registered-type object count one level each; a deeper
  (or self-referential) value is a :class:`SerializationError`. On decode, ext nesting
  (tuples, sets, registered types) is capped at ``max_depth`` and plain array/map nesting
  by msgpack's own unpacker stack (1024 per ext level); a foreign writer can thus
  produce a value deeper than ``max_depth`` but never an unbounded recursion. With
  ``secret=`` only writers that hold the secret are accepted, so decoded values obey the
  encode limits. Every declared length is capped by the blob's length, so the objects
  built from a blob are bounded by ``max_size`` times a constant (an empty list is
  one byte on the wire and ~56 bytes in memory): keep ``max_size`` modest.
* **msgpack Timestamp.** Ext type -1 is decoded by msgpack itself: a foreign writer's
  timestamp comes back as a ``msgpack.Timestamp`` value (stratacache never writes one).
* **Thread safety.** A :class:`Codec` is immutable after construction; it keeps one
  reusable ``msgpack.Packer`` per thread.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import hmac
import math
import struct
import threading
import uuid
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple, Optional, Union

import msgpack  # type: ignore[import-untyped]

from ._errors import CorruptEntryError, SerializationError, ValueTooLargeError

__all__ = [
    "FORMAT_VERSION",
    "Codec",
    "Entry",
    "TypeRegistry",
    "default_registry",
    "register_dataclass",
    "register_type",
]

FORMAT_VERSION = 2
"""Version of the envelope layout; a blob with any other version is a miss."""

MIN_USER_CODE = 16
MAX_USER_CODE = 127
MAX_DEPTH_LIMIT = 100  # keeps encode/decode recursion far below the interpreter's limit
MIN_SECRET_LENGTH = 16
_MAC_SIZE = 32

# Ext codes of the built-in types (1..15 are reserved for stratacache).
EXT_TUPLE = 1
EXT_SET = 2
EXT_FROZENSET = 3
EXT_DATETIME = 4
EXT_DATE = 5
EXT_TIME = 6
EXT_TIMEDELTA = 7
EXT_UUID = 8
EXT_DECIMAL = 9
EXT_BIGINT = 10

_DATETIME = struct.Struct(">HBBBBBBI")  # year month day hour minute second fold microsecond
_DATE = struct.Struct(">HBB")
_TIME = struct.Struct(">BBBBI")  # hour minute second fold microsecond
_OFFSET = struct.Struct(">q")  # UTC offset in microseconds
_TIMEDELTA = struct.Struct(">iII")  # days seconds microseconds

_ONE_DAY_US = 86_400_000_000

# Types msgpack packs as they are (with strict_types=True) — nothing to prepare.
_LEAF_TYPES: frozenset[type] = frozenset(
    {str, int, float, bool, type(None), bytes, bytearray, memoryview}
)
# Types with built-in support: cannot be registered by an application.
_BUILTIN_TYPES: frozenset[type] = _LEAF_TYPES | {
    dict,
    list,
    tuple,
    set,
    frozenset,
    _dt.datetime,
    _dt.date,
    _dt.time,
    _dt.timedelta,
    uuid.UUID,
    decimal.Decimal,
}


def normalize_secrets(secret: Union[bytes, Sequence[bytes], None]) -> tuple[bytes, ...]:
    """``secret`` (one secret, a sequence of them, or None) as a checked tuple."""
    if secret is None:
        return ()
    if isinstance(secret, (bytes, str, bytearray, memoryview)):
        candidates: tuple[Any, ...] = (secret,)
    else:
        candidates = tuple(secret)
        if not candidates:
            raise ValueError("secrets must not be empty (pass None for no signing)")
    for one in candidates:
        if not isinstance(one, bytes):
            raise TypeError(f"secret must be bytes, not {type(one).__name__}")
        if len(one) < MIN_SECRET_LENGTH:
            raise ValueError(f"secret must be at least {MIN_SECRET_LENGTH} bytes long")
    return candidates


class Entry(NamedTuple):
    """A decoded envelope (a ``NamedTuple``: immutable, and cheap to build on the hit path)."""

    value: Any
    created_at: float
    """Wall-clock epoch seconds (``time.time()``) when the entry was written."""
    expires_at: Optional[float]
    """Wall-clock epoch seconds of logical expiry; ``None`` = never."""
    tags: tuple[str, ...]
    stamps: tuple[int, ...] = ()
    """The version of each of ``tags`` when the entry was written (same order)."""
    epoch: int = 0
    """The namespace epoch when the entry was written."""
    load_time: float = 0.0
    """Seconds the loader took to compute the value (0.0: unknown, e.g. ``set()``)."""


_new_entry = tuple.__new__


class TypeRegistry:
    """Encoder/decoder pairs for application types, each under its own msgpack ext code.

    Lookup is by exact type (a subclass must be registered itself). A :class:`Codec`
    reads its registry at every call, so types registered after the codec was built are
    used too. Register at import time: registration is not meant to race with encoding.
    """

    __slots__ = ("_decoders", "_encoders")

    def __init__(self) -> None:
        self._encoders: dict[type, tuple[int, Callable[[Any], Any]]] = {}
        self._decoders: dict[int, Callable[[Any], Any]] = {}

    def register(
        self,
        cls: type,
        code: int,
        encode: Callable[[Any], Any],
        decode: Callable[[Any], Any],
    ) -> None:
        """Encode instances of exactly ``cls`` as ``encode(obj)`` under ext ``code``.

        ``encode`` returns any value the codec supports (it is encoded recursively, within
        the same depth limit); ``decode`` receives that value back and rebuilds the
        object. An exception from ``decode`` makes the entry a miss. ``code`` must be in
        16..127 (1..15 are stratacache's); a code or class already registered, or a type
        with built-in support, is a ``ValueError``.
        """
        if not isinstance(cls, type):
            raise TypeError(f"cls must be a class, not {type(cls).__name__}")
        if type(code) is not int or not MIN_USER_CODE <= code <= MAX_USER_CODE:
            raise ValueError(
                f"ext code for {cls.__qualname__} must be an int in "
                f"{MIN_USER_CODE}..{MAX_USER_CODE}, got {code!r}"
            )
        if not callable(encode) or not callable(decode):
            raise TypeError("encode and decode must be callables")
        if cls in _BUILTIN_TYPES:
            raise ValueError(f"{cls.__qualname__} is supported natively; it cannot be registered")
        if cls in self._encoders:
            raise ValueError(
                f"{cls.__qualname__} is already registered (code {self._encoders[cls][0]})"
            )
        if code in self._decoders:
            raise ValueError(f"ext code {code} is already registered")
        self._decoders[code] = decode
        self._encoders[cls] = (code, encode)

    def register_dataclass(self, cls: type, code: int) -> None:
        """Register a dataclass: its ``init`` fields are written as a ``{name: value}`` map.

        Field values are encoded recursively. Decoding calls ``cls(**fields)``, so adding a
        field with a default stays compatible with entries written before.
        """
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise TypeError(f"{cls!r} is not a dataclass type")
        names = tuple(f.name for f in dataclasses.fields(cls) if f.init)

        def encode(obj: Any) -> dict[str, Any]:
            return {name: getattr(obj, name) for name in names}

        def decode(fields: Any) -> Any:
            if type(fields) is not dict:
                raise TypeError(f"{cls.__qualname__} payload is not a map")
            return cls(**fields)

        self.register(cls, code, encode, decode)

    def code_of(self, cls: type) -> Optional[int]:
        """The ext code registered for ``cls``, or ``None``."""
        found = self._encoders.get(cls)
        return None if found is None else found[0]

    def copy(self) -> TypeRegistry:
        """An independent registry with the same registrations."""
        other = TypeRegistry()
        other._encoders.update(self._encoders)
        other._decoders.update(self._decoders)
        return other


default_registry = TypeRegistry()
"""The registry a :class:`Codec` uses when not given ``types=``."""


def register_type(
    cls: type, code: int, encode: Callable[[Any], Any], decode: Callable[[Any], Any]
) -> None:
    """:meth:`TypeRegistry.register` on :data:`default_registry`."""
    default_registry.register(cls, code, encode, decode)


def register_dataclass(cls: type, code: int) -> None:
    """:meth:`TypeRegistry.register_dataclass` on :data:`default_registry`."""
    default_registry.register_dataclass(cls, code)


class _TooDeep(Exception):
    """Internal: ext nesting on decode exceeded max_depth."""


class _DecodeState(threading.local):
    depth = 0  # current ext nesting of the decode running on this thread


class _Packers(threading.local):
    packer: Optional[msgpack.Packer] = None


def _pack_overflow(obj: Any) -> Any:
    """``default=`` hook of the packer: only ever reached for ints beyond 64 bits."""
    if type(obj) is int:
        return msgpack.ExtType(
            EXT_BIGINT, obj.to_bytes((obj.bit_length() + 8) // 8, "big", signed=True)
        )
    raise SerializationError(f"cannot encode value of type {type(obj).__qualname__!r}")


def _encode_offset(offset: Optional[_dt.timedelta]) -> bytes:
    if offset is None:
        return b""
    return _OFFSET.pack(offset // _dt.timedelta(microseconds=1))


def _decode_offset(data: bytes) -> Optional[_dt.timezone]:
    if not data:
        return None
    (micros,) = _OFFSET.unpack(data)
    if not -_ONE_DAY_US < micros < _ONE_DAY_US:
        raise ValueError("UTC offset out of range")
    return _dt.timezone(_dt.timedelta(microseconds=micros))


def _encode_datetime(obj: _dt.datetime) -> msgpack.ExtType:
    head = _DATETIME.pack(
        obj.year, obj.month, obj.day, obj.hour, obj.minute, obj.second, obj.fold, obj.microsecond
    )
    return msgpack.ExtType(EXT_DATETIME, head + _encode_offset(obj.utcoffset()))


def _decode_datetime(data: bytes) -> _dt.datetime:
    size = _DATETIME.size
    if len(data) not in (size, size + _OFFSET.size):
        raise ValueError("bad datetime payload")
    y, mo, d, h, mi, s, fold, us = _DATETIME.unpack_from(data)
    return _dt.datetime(y, mo, d, h, mi, s, us, _decode_offset(data[size:]), fold=fold)


def _encode_date(obj: _dt.date) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_DATE, _DATE.pack(obj.year, obj.month, obj.day))


def _decode_date(data: bytes) -> _dt.date:
    return _dt.date(*_DATE.unpack(data))


def _encode_time(obj: _dt.time) -> msgpack.ExtType:
    offset = obj.utcoffset()
    if obj.tzinfo is not None and offset is None:
        raise SerializationError(
            f"cannot encode time {obj!r}: its tzinfo gives no UTC offset without a date"
        )
    head = _TIME.pack(obj.hour, obj.minute, obj.second, obj.fold, obj.microsecond)
    return msgpack.ExtType(EXT_TIME, head + _encode_offset(offset))


def _decode_time(data: bytes) -> _dt.time:
    size = _TIME.size
    if len(data) not in (size, size + _OFFSET.size):
        raise ValueError("bad time payload")
    h, mi, s, fold, us = _TIME.unpack_from(data)
    return _dt.time(h, mi, s, us, _decode_offset(data[size:]), fold=fold)


def _encode_timedelta(obj: _dt.timedelta) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_TIMEDELTA, _TIMEDELTA.pack(obj.days, obj.seconds, obj.microseconds))


def _decode_timedelta(data: bytes) -> _dt.timedelta:
    days, seconds, micros = _TIMEDELTA.unpack(data)
    return _dt.timedelta(days, seconds, micros)


def _encode_uuid(obj: uuid.UUID) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_UUID, obj.bytes)


def _decode_uuid(data: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=data)


def _encode_decimal(obj: decimal.Decimal) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_DECIMAL, str(obj).encode("ascii"))


def _decode_decimal(data: bytes) -> decimal.Decimal:
    return decimal.Decimal(data.decode("ascii"))


def _decode_bigint(data: bytes) -> int:
    return int.from_bytes(data, "big", signed=True)


# Types without nested values: encoded without counting depth.
_SCALAR_ENCODERS: dict[type, Callable[[Any], msgpack.ExtType]] = {
    _dt.datetime: _encode_datetime,
    _dt.date: _encode_date,
    _dt.time: _encode_time,
    _dt.timedelta: _encode_timedelta,
    uuid.UUID: _encode_uuid,
    decimal.Decimal: _encode_decimal,
}
_SCALAR_DECODERS: dict[int, Callable[[bytes], Any]] = {
    EXT_DATETIME: _decode_datetime,
    EXT_DATE: _decode_date,
    EXT_TIME: _decode_time,
    EXT_TIMEDELTA: _decode_timedelta,
    EXT_UUID: _decode_uuid,
    EXT_DECIMAL: _decode_decimal,
    EXT_BIGINT: _decode_bigint,
}
_COLLECTION_CODES: dict[type, int] = {tuple: EXT_TUPLE, set: EXT_SET, frozenset: EXT_FROZENSET}
_COLLECTION_TYPES: dict[int, Callable[[list[Any]], Any]] = {
    EXT_TUPLE: tuple,
    EXT_SET: set,
    EXT_FROZENSET: frozenset,
}
_SUPPORTED_BASES = tuple(_BUILTIN_TYPES)


def _unsupported(obj: Any) -> SerializationError:
    cls = type(obj)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if isinstance(obj, _SUPPORTED_BASES):
        base = next(b for b in cls.__mro__[1:] if b in _BUILTIN_TYPES)
        return SerializationError(
            f"cannot encode value of type {name!r}: it is a subclass of "
            f"{base.__qualname__!r}, and subclasses are not written as their base type (an "
            "L2 hit would return a different type than L1); convert it, or register the "
            "class with stratacache.register_type()"
        )
    hint = (
        "register it with stratacache.register_dataclass()"
        if dataclasses.is_dataclass(obj)
        else "register it with stratacache.register_type()"
    )
    return SerializationError(f"cannot encode value of type {name!r}: {hint}")


class Codec:
    """Encodes cache entries to msgpack bytes and decodes them back, safely.

    :param max_size: largest blob (envelope and signature included) ``encode`` produces
        and ``decode`` accepts, in bytes.
    :param max_depth: deepest container nesting accepted on encode (1..100), see the
        module notes for what is guaranteed on decode.
    :param secret: when set, blobs are signed with HMAC-SHA256 (keys derived from the
        secret, distinct for entries and bare values) and unsigned or tampered blobs are
        corrupt. At least 16 bytes; 32 random bytes recommended. A sequence of secrets
        rotates keys: the first signs, all verify.
    :param secrets: the same as a sequence passed as ``secret`` (give one or the other).
    :param types: the registry of application types; :data:`default_registry` if omitted.
    """

    __slots__ = (
        "_decoders",
        "_encoders",
        "_entry_key",
        "_entry_keys",
        "_ext_hook",
        "_max_depth",
        "_max_size",
        "_packers",
        "_secrets",
        "_state",
        "_value_key",
        "_value_keys",
        "types",
    )

    def __init__(
        self,
        *,
        max_size: int = 8 * 1024 * 1024,
        max_depth: int = 32,
        secret: Union[bytes, Sequence[bytes], None] = None,
        types: Optional[TypeRegistry] = None,
        secrets: Optional[Sequence[bytes]] = None,
    ) -> None:
        if type(max_size) is not int or max_size < 64:
            raise ValueError(f"max_size must be an int >= 64, got {max_size!r}")
        if type(max_depth) is not int or not 1 <= max_depth <= MAX_DEPTH_LIMIT:
            raise ValueError(f"max_depth must be an int in 1..{MAX_DEPTH_LIMIT}, got {max_depth!r}")
        if types is None:
            types = default_registry
        elif not isinstance(types, TypeRegistry):
            raise TypeError(f"types must be a TypeRegistry, not {type(types).__name__}")
        self._max_size = max_size
        self._max_depth = max_depth
        self.types = types
        self._encoders = types._encoders
        self._decoders = types._decoders
        if secret is not None and secrets is not None:
            raise TypeError("give secret= or secrets=, not both")
        self._secrets = normalize_secrets(secret if secrets is None else secrets)
        self._entry_keys = tuple(
            hmac.digest(s, b"stratacache/entry", "sha256") for s in self._secrets
        )
        self._value_keys = tuple(
            hmac.digest(s, b"stratacache/value", "sha256") for s in self._secrets
        )
        # the signing keys (the first secret's); None when unsigned
        self._entry_key = self._entry_keys[0] if self._entry_keys else None
        self._value_key = self._value_keys[0] if self._value_keys else None
        self._packers = _Packers()
        self._state = _DecodeState()
        self._ext_hook = self._decode_ext  # bound once, not at every decode

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def max_depth(self) -> int:
        return self._max_depth

    @property
    def signed(self) -> bool:
        return self._entry_key is not None

    @property
    def secrets(self) -> tuple[bytes, ...]:
        """The secrets, the signing one first (empty when unsigned); the cache derives
        its bus keys from them unless given ``bus_secret=``."""
        return self._secrets

    # -- encode ------------------------------------------------------------------------

    def encode(
        self,
        key: str,
        value: Any,
        *,
        created_at: float,
        expires_at: Optional[float] = None,
        tags: tuple[str, ...] = (),
        stamps: Optional[tuple[int, ...]] = None,
        epoch: int = 0,
        load_time: float = 0.0,
    ) -> bytes:
        """The blob stored under ``key``.

        ``stamps`` are the versions of ``tags`` (default: all 0) and ``epoch`` the
        namespace epoch, both checked by the cache when it reads the entry.
        ``load_time``: seconds the loader took (stored in whole microseconds; ``0``
        writes the 8-item envelope of entries without one).

        Raises :class:`SerializationError` (a ``TypeError``) for an unsupported or too
        deeply nested value, :class:`ValueTooLargeError` when the blob exceeds
        ``max_size``; nothing is written by the caller in either case.
        """
        if type(key) is not str:
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        for tag in tags:
            if type(tag) is not str:
                raise TypeError(f"tags must be str, got {type(tag).__name__}")
        if stamps is None:
            stamp_list = [0] * len(tags)
        else:
            stamp_list = list(stamps)
            if len(stamp_list) != len(tags) or any(type(s) is not int for s in stamp_list):
                raise TypeError("stamps must be one int per tag")
        if type(epoch) is not int:
            raise TypeError(f"epoch must be an int, not {type(epoch).__name__}")
        if not (isinstance(load_time, (int, float)) and load_time >= 0.0):
            raise ValueError(f"load_time must be seconds >= 0, got {load_time!r}")
        envelope = [
            FORMAT_VERSION,
            key,
            float(created_at),
            None if expires_at is None else float(expires_at),
            list(tags),
            stamp_list,
            epoch,
            self._prepare(value, 0),
        ]
        load_us = math.ceil(load_time * 1e6) if load_time < 1e9 else 10**15
        if load_us:
            envelope.append(load_us)
        return self._finish(envelope, self._entry_key)

    def encode_value(self, value: Any) -> bytes:
        """A bare value (no envelope), under the same types and limits."""
        return self._finish(self._prepare(value, 0), self._value_key)

    def copy_value(self, value: Any) -> Any:
        """A deep copy of ``value`` by a msgpack round trip: what an L2 hit of it would
        return (same types and limits; no signature, no ``max_size``: nothing leaves the
        process). :class:`SerializationError` for a value the codec cannot encode."""
        packed = self._pack(self._prepare(value, 0))
        return msgpack.unpackb(packed, strict_map_key=False, ext_hook=self._ext_hook)

    def _finish(self, prepared: Any, mac_key: Optional[bytes]) -> bytes:
        body = self._pack(prepared)
        if mac_key is not None:
            body = hmac.digest(mac_key, body, "sha256") + body
        if len(body) > self._max_size:
            raise ValueTooLargeError(
                f"encoded value is {len(body)} bytes, larger than max_size={self._max_size}"
            )
        return body

    def _pack(self, prepared: Any) -> bytes:
        packer = self._packers.packer
        if packer is None:
            packer = self._packers.packer = msgpack.Packer(
                use_bin_type=True, strict_types=True, default=_pack_overflow
            )
        try:
            return packer.pack(prepared)  # type: ignore[no-any-return]
        except SerializationError:
            raise
        except UnicodeEncodeError as exc:
            raise SerializationError(f"cannot encode a str as UTF-8: {exc}") from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"cannot encode value: {exc}") from exc

    def _prepare(self, obj: Any, depth: int) -> Any:
        """``obj`` with every non-native value replaced by an ExtType; checks depth.

        Returns ``obj`` itself when nothing inside needs converting (the common case for
        flat dicts and lists), so flat values cost one type check per item.
        """
        cls = type(obj)
        if cls in _LEAF_TYPES:
            return obj
        if cls is dict:
            if depth >= self._max_depth:
                raise self._too_deep()
            for k, v in obj.items():
                if type(k) not in _LEAF_TYPES or type(v) not in _LEAF_TYPES:
                    break
            else:
                return obj
            depth += 1
            prepare = self._prepare
            return {
                (k if type(k) in _LEAF_TYPES else prepare(k, depth)): (
                    v if type(v) in _LEAF_TYPES else prepare(v, depth)
                )
                for k, v in obj.items()
            }
        if cls is list:
            if depth >= self._max_depth:
                raise self._too_deep()
            for item in obj:
                if type(item) not in _LEAF_TYPES:
                    break
            else:
                return obj
            depth += 1
            prepare = self._prepare
            return [item if type(item) in _LEAF_TYPES else prepare(item, depth) for item in obj]
        scalar = _SCALAR_ENCODERS.get(cls)
        if scalar is not None:
            return scalar(obj)
        code = _COLLECTION_CODES.get(cls)
        if code is not None:
            if depth >= self._max_depth:
                raise self._too_deep()
            depth += 1
            prepare = self._prepare
            return msgpack.ExtType(code, self._pack([prepare(item, depth) for item in obj]))
        registered = self._encoders.get(cls)
        if registered is not None:
            if depth >= self._max_depth:
                raise self._too_deep()
            code, encode = registered
            try:
                encoded = encode(obj)
            except SerializationError:
                raise
            except Exception as exc:
                raise SerializationError(
                    f"the encoder registered for {cls.__qualname__} failed: {exc!r}"
                ) from exc
            return msgpack.ExtType(code, self._pack(self._prepare(encoded, depth + 1)))
        raise _unsupported(obj)

    def _too_deep(self) -> SerializationError:
        return SerializationError(
            f"value is nested deeper than max_depth={self._max_depth} (or refers to itself)"
        )

    # -- decode ------------------------------------------------------------------------

    def decode(self, key: str, data: bytes) -> Entry:
        """The entry in ``data``, read under ``key``.

        Raises :class:`CorruptEntryError` — and nothing else — when ``data`` is not a valid
        entry for ``key`` written by this format version (and signed with this secret).
        """
        try:
            if len(data) > self._max_size:
                raise CorruptEntryError(f"entry of {len(data)} bytes is larger than max_size")
            if self._entry_keys:
                data = self._verify(self._entry_keys, data)
            obj = msgpack.unpackb(data, strict_map_key=False, ext_hook=self._ext_hook)
            if type(obj) is not list:
                raise CorruptEntryError("not an entry envelope")
            if len(obj) == 9:
                load_us = obj.pop()
                if type(load_us) is not int or load_us < 0:
                    raise CorruptEntryError("bad load time")
                load_time = load_us / 1e6
            else:
                load_time = 0.0
            version, stored_key, created_at, expires_at, tags, stamps, epoch, value = obj
            if type(version) is not int or version != FORMAT_VERSION:
                raise CorruptEntryError(f"unknown envelope version {version!r}")
            if type(stored_key) is not str or stored_key != key:
                raise CorruptEntryError("entry was written under another key")
            # NaN is not a time: a planted NaN expires_at made the read path raise
            # ValueError (an L1 TTL of NaN) instead of a miss (tests/fuzz, regress-nan-*).
            if type(created_at) is not float or created_at != created_at:
                raise CorruptEntryError("bad created_at")
            if expires_at is not None and (
                type(expires_at) is not float or expires_at != expires_at
            ):
                raise CorruptEntryError("bad expires_at")
            if type(tags) is not list:
                raise CorruptEntryError("bad tags")
            if type(stamps) is not list or len(stamps) != len(tags):
                raise CorruptEntryError("bad stamps")
            if type(epoch) is not int:
                raise CorruptEntryError("bad epoch")
            if tags:
                for tag in tags:
                    if type(tag) is not str:
                        raise CorruptEntryError("bad tags")
                for stamp in stamps:
                    if type(stamp) is not int:
                        raise CorruptEntryError("bad stamps")
                tags = tuple(tags)
                stamps = tuple(stamps)
            else:
                tags = stamps = ()
            return _new_entry(  # type: ignore[no-any-return]
                Entry, (value, created_at, expires_at, tags, stamps, epoch, load_time)
            )
        except CorruptEntryError:
            raise
        except Exception as exc:  # anything msgpack, an ext decoder or a bomb can raise
            raise CorruptEntryError(f"undecodable entry: {exc.__class__.__name__}") from exc

    def decode_value(self, data: bytes) -> Any:
        """A bare value written by :meth:`encode_value`; :class:`CorruptEntryError` if bad."""
        try:
            if len(data) > self._max_size:
                raise CorruptEntryError(f"value of {len(data)} bytes is larger than max_size")
            if self._value_keys:
                data = self._verify(self._value_keys, data)
            return msgpack.unpackb(data, strict_map_key=False, ext_hook=self._ext_hook)
        except CorruptEntryError:
            raise
        except Exception as exc:
            raise CorruptEntryError(f"undecodable value: {exc.__class__.__name__}") from exc

    @staticmethod
    def _verify(mac_keys: tuple[bytes, ...], data: bytes) -> Any:
        """The signed body of ``data`` (a memoryview), after checking its tag against
        each key (the signing key first: the common case costs one HMAC)."""
        view = memoryview(data)
        if len(view) < _MAC_SIZE:
            raise CorruptEntryError("entry is too short to carry a signature")
        body = view[_MAC_SIZE:]
        tag = view[:_MAC_SIZE]
        for mac_key in mac_keys:
            if hmac.compare_digest(hmac.digest(mac_key, body, "sha256"), tag):
                return body
        raise CorruptEntryError("bad signature (or signed with a key no longer listed)")

    def _decode_ext(self, code: int, data: bytes) -> Any:
        """``ext_hook=`` of the unpacker; raises on anything unknown or malformed."""
        scalar = _SCALAR_DECODERS.get(code)
        if scalar is not None:
            return scalar(data)
        state = self._state
        depth = state.depth
        if depth >= self._max_depth:
            raise _TooDeep("ext types nested deeper than max_depth")
        state.depth = depth + 1
        try:
            inner = msgpack.unpackb(data, strict_map_key=False, ext_hook=self._ext_hook)
            collection = _COLLECTION_TYPES.get(code)
            if collection is not None:
                if type(inner) is not list:
                    raise ValueError("bad collection payload")
                return collection(inner)
            decoder = self._decoders.get(code)
            if decoder is None:
                raise ValueError(f"unknown ext code {code}")
            return decoder(inner)
        finally:
            state.depth = depth
