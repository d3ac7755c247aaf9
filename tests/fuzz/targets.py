"""Fuzz targets: one function per decoder, each taking untrusted bytes.

A target returns normally for every input the decoder handles as documented (a value, a
``None``, or the decoder's typed error) and raises anything else: that is a bug. The same
targets run under atheris (``tests/fuzz/run.py``, ``make fuzz``) and under pytest over the
committed corpus plus random mutations (``tests/test_fuzz.py``), so the smoke needs no
fuzzer installed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hmac
import math
from typing import Callable

from stratacache._bus_messages import decode_message, encode_message
from stratacache._codec import Codec, TypeRegistry
from stratacache._errors import CorruptEntryError, InvalidKeyError
from stratacache._instances import decode_record
from stratacache._keys import KeySpace, fnmatch_glob, glob_match, validate_key

SECRET = b"fuzzing-secret-0123456789abcdef!"
KEY = "k"
NAMESPACE = "fz"


@dataclasses.dataclass
class Point:
    """A registered application type, so ext decoding reaches a user decoder too."""

    x: int
    y: int = 0


def _registry() -> TypeRegistry:
    types = TypeRegistry()
    types.register_dataclass(Point, 16)
    return types


# Small limits make the limit paths reachable by short inputs.
PLAIN = Codec(types=_registry(), max_size=4096, max_depth=8)
SIGNED = Codec(types=_registry(), max_size=4096, max_depth=8, secret=SECRET)
_ENTRY_MAC_KEY = hmac.digest(SECRET, b"stratacache/entry", "sha256")
SPACE = KeySpace(NAMESPACE)


def _decode_entry(codec: Codec, data: bytes) -> None:
    try:
        entry = codec.decode(KEY, data)
    except CorruptEntryError:
        return
    assert type(entry.tags) is tuple and len(entry.tags) == len(entry.stamps)
    assert all(type(t) is str for t in entry.tags)
    assert type(entry.created_at) is float and type(entry.epoch) is int
    # the read path computes TTLs from these: a NaN made it raise (regress-nan-expires-at)
    assert entry.created_at == entry.created_at
    assert entry.expires_at is None or entry.expires_at == entry.expires_at
    try:
        codec.decode_value(data)
    except CorruptEntryError:
        pass


def fuzz_codec(data: bytes) -> None:
    """``Codec.decode`` without a secret: an entry or ``CorruptEntryError``."""
    _decode_entry(PLAIN, data)


def fuzz_codec_signed(data: bytes) -> None:
    """``Codec.decode`` with a secret: the raw input (a stranger's blob, refused by the
    tag) and, when the first byte is odd, the rest signed with the right key (a writer
    holding the secret), so the fuzzer reaches the unpacking behind the tag."""
    _decode_entry(SIGNED, data)
    if data and data[0] & 1:
        body = data[1:]
        _decode_entry(SIGNED, hmac.digest(_ENTRY_MAC_KEY, body, "sha256") + body)


def fuzz_bus(data: bytes) -> None:
    """``decode_message``: a message or ``None``; a decoded message re-encodes to itself."""
    message = decode_message(data)
    if message is not None:
        assert math.isfinite(message.sent_at)  # the lag metric uses it (regress-inf-sent-at)
        assert decode_message(encode_message(message)) == message


def _text(data: bytes) -> str:
    # surrogateescape: undecodable bytes become lone surrogates, which keys must refuse
    return data.decode("utf-8", "surrogateescape")


def fuzz_keys(data: bytes) -> None:
    """Key parsing: ``validate_key``, ``user_key``/``entry_owner`` (raw Redis keys, str and
    bytes) and globs (``fnmatch_glob``, ``pattern``, ``glob_match``)."""
    text = _text(data)
    SPACE.user_key(data)
    SPACE.user_key(text)
    SPACE.entry_owner(data)
    SPACE.entry_owner(text)
    try:
        key = validate_key(text)
    except InvalidKeyError:
        pass
    else:
        owner = SPACE.user_key(SPACE.data_key(key))
        assert owner is None or owner == key, (owner, key)  # None only for hashed keys
        assert SPACE.entry_owner(SPACE.lease_key(key)) == owner
    # Globs: a pattern is the first line, a key to match the rest.
    glob, _, subject = text.partition("\n")
    try:
        pattern = fnmatch_glob(glob)
    except ValueError:  # a malformed glob (unterminated class...): the documented error
        return
    SPACE.pattern(glob)
    SPACE.entry_pattern(glob)
    if glob_match(glob, subject):
        # the L1 pattern may widen, never narrow
        assert fnmatch.fnmatchcase(subject, pattern), (glob, subject, pattern)


def fuzz_record(data: bytes) -> None:
    """``_instances.decode_record``: an ``InstanceInfo`` or ``None``."""
    info = decode_record(data)
    if info is not None:
        info.to_dict()


TARGETS: dict[str, Callable[[bytes], None]] = {
    "codec": fuzz_codec,
    "codec_signed": fuzz_codec_signed,
    "bus": fuzz_bus,
    "keys": fuzz_keys,
    "record": fuzz_record,
}
"""Target name -> function; the name is also the corpus folder ``corpus/<name>/``."""
