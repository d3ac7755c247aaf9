"""The msgpack codec: round trips, limits, and hostile bytes that must only ever be a miss."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import math
import os
import pickle
import threading
import tracemalloc
import uuid
import zoneinfo
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stratacache._codec import (
    EXT_TUPLE,
    FORMAT_VERSION,
    Codec,
    Entry,
    TypeRegistry,
    default_registry,
)
from stratacache._errors import (
    CorruptEntryError,
    SerializationError,
    StratacacheError,
    ValueTooLargeError,
)

KEY = "user:42"


# -- helpers -------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equality that also requires equal types everywhere (1 != 1.0 != True here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)  # NaN equals NaN, -0.0 differs from 0.0
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    if isinstance(a, (dt.datetime, dt.time)):
        # wall time, offset and fold; not ==, which is False across zones in a fold
        return (
            a.replace(tzinfo=None) == b.replace(tzinfo=None)
            and a.utcoffset() == b.utcoffset()
            and a.fold == b.fold
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    if isinstance(a, (set, frozenset)):
        rest = list(b)
        for x in a:
            for i, y in enumerate(rest):
                if same(x, y):
                    del rest[i]
                    break
            else:
                return False
        return not rest
    return bool(a == b)


fixed_offsets = st.builds(
    dt.timezone,
    st.timedeltas(min_value=dt.timedelta(hours=-23, minutes=-59), max_value=dt.timedelta(hours=23)),
)
zones = st.sampled_from(
    [zoneinfo.ZoneInfo(name) for name in ("Europe/Paris", "America/New_York", "Asia/Kolkata")]
)
hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.integers(),
    st.floats(),
    st.text(),
    st.binary(),
    st.datetimes(timezones=st.none() | fixed_offsets | zones),
    st.dates(),
    st.times(timezones=st.none() | fixed_offsets),
    st.timedeltas(),
    st.uuids(),
    st.decimals(allow_nan=False),  # a signaling NaN cannot be hashed
)
scalars = hashable_scalars | st.decimals()
hashables = st.recursive(
    hashable_scalars,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=8,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(hashables, inner, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
    ),
    max_leaves=20,
)


@pytest.fixture
def codec() -> Codec:
    return Codec(types=TypeRegistry())


def valid_blob(codec: Codec, value: Any = None) -> bytes:
    value = {"id": 1, "name": "x", "t": (1, 2)} if value is None else value
    return codec.encode(KEY, value, created_at=1000.0, expires_at=2000.0, tags=("a", "b"))


def raw_envelope(*fields: Any) -> bytes:
    """A hand-made envelope; six fields ``(version, key, created, expires, tags, payload)``
    get zero stamps and epoch 0 inserted, any other count is packed as given."""
    items = list(fields)
    if len(items) == 6:
        tags = items[4]
        stamps = [0] * len(tags) if isinstance(tags, list) else []
        items[5:5] = [stamps, 0]
    return msgpack.packb(items, use_bin_type=True)


# -- round trips ---------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(value=values)
def test_round_trip_of_every_supported_type(value: Any) -> None:
    codec = Codec(types=TypeRegistry())
    entry = codec.decode(KEY, codec.encode(KEY, value, created_at=12.5))
    assert same(entry.value, value), (entry.value, value)
    assert same(codec.decode_value(codec.encode_value(value)), value)


@given(
    value=values,
    created_at=st.floats(allow_nan=False, allow_infinity=False),
    expires_at=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    tags=st.lists(st.text(min_size=1), max_size=5).map(tuple),
)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_envelope_fields_round_trip(
    value: Any, created_at: float, expires_at: float | None, tags: tuple[str, ...]
) -> None:
    codec = Codec(types=TypeRegistry())
    blob = codec.encode(KEY, value, created_at=created_at, expires_at=expires_at, tags=tags)
    entry = codec.decode(KEY, blob)
    assert isinstance(entry, Entry)
    assert (entry.created_at, entry.expires_at, entry.tags) == (created_at, expires_at, tags)
    assert type(entry.tags) is tuple


def test_envelope_layout_is_one_msgpack_array(codec: Codec) -> None:
    blob = codec.encode(KEY, {"a": 1}, created_at=5, expires_at=9, tags=("t",))
    assert msgpack.unpackb(blob) == [FORMAT_VERSION, KEY, 5.0, 9.0, ["t"], [0], 0, {"a": 1}]
    stamped = codec.encode(KEY, 1, created_at=5, tags=("a", "b"), stamps=(3, 4), epoch=7)
    assert msgpack.unpackb(stamped) == [FORMAT_VERSION, KEY, 5.0, None, ["a", "b"], [3, 4], 7, 1]
    entry = codec.decode(KEY, stamped)
    assert (entry.tags, entry.stamps, entry.epoch) == (("a", "b"), (3, 4), 7)


def test_stamps_must_match_the_tags(codec: Codec) -> None:
    with pytest.raises(TypeError):
        codec.encode(KEY, 1, created_at=0, tags=("a",), stamps=(1, 2))
    with pytest.raises(TypeError):
        codec.encode(KEY, 1, created_at=0, tags=("a",), stamps=("1",))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        codec.encode(KEY, 1, created_at=0, epoch=1.0)  # type: ignore[arg-type]


def test_none_is_cached_as_a_value(codec: Codec) -> None:
    entry = codec.decode(KEY, codec.encode(KEY, None, created_at=1.0))
    assert entry == Entry(None, 1.0, None, ())
    assert entry.value is None


def test_entry_is_immutable(codec: Codec) -> None:
    entry = codec.decode(KEY, valid_blob(codec))
    with pytest.raises(AttributeError):
        entry.value = 1  # type: ignore[misc]


def test_tuples_stay_tuples_and_lists_stay_lists(codec: Codec) -> None:
    value = {"t": (1, (2, [3, (4,)]), ()), "l": [(), []], (1, "k"): "tuple key"}
    decoded = codec.decode(KEY, codec.encode(KEY, value, created_at=0.0)).value
    assert same(decoded, value)
    assert type(decoded["t"][1][1]) is list
    assert type(decoded["t"][1][1][1]) is tuple
    assert decoded[(1, "k")] == "tuple key"


def test_sets_and_frozensets_are_kept(codec: Codec) -> None:
    value = [{1, "a"}, frozenset({(1, 2), frozenset({3})}), set()]
    decoded = codec.decode_value(codec.encode_value(value))
    assert same(decoded, value)
    assert {frozenset({1}): "fs key"} == codec.decode_value(
        codec.encode_value({frozenset({1}): "fs key"})
    )


def test_aware_datetime_keeps_its_offset(codec: Codec) -> None:
    paris = dt.datetime(2024, 7, 1, 12, 30, 15, 123456, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    decoded = codec.decode_value(codec.encode_value(paris))
    assert decoded == paris
    assert decoded.utcoffset() == dt.timedelta(hours=2)
    assert decoded.tzinfo == dt.timezone(dt.timedelta(hours=2))  # named zone -> fixed offset
    assert (decoded.hour, decoded.microsecond) == (12, 123456)


def test_datetime_variants(codec: Codec) -> None:
    odd = dt.timezone(dt.timedelta(hours=-3, minutes=-30, seconds=-7, microseconds=-5))
    cases = [
        dt.datetime(2024, 1, 1),
        dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=odd),
        dt.datetime(2024, 11, 3, 1, 30, fold=1),
        dt.datetime(2024, 11, 3, 1, 30, fold=1, tzinfo=zoneinfo.ZoneInfo("America/New_York")),
        dt.time(23, 59, 59, 1, tzinfo=odd),
        dt.time(0, 0, fold=1),
        dt.date(2020, 2, 29),
        dt.timedelta(days=-999999999),
        dt.timedelta(days=999999999, seconds=86399, microseconds=999999),
    ]
    for value in cases:
        decoded = codec.decode_value(codec.encode_value(value))
        assert same(decoded, value), (decoded, value)
    naive = codec.decode_value(codec.encode_value(dt.datetime(2024, 1, 1)))
    assert naive.tzinfo is None


def test_time_in_a_named_zone_is_rejected(codec: Codec) -> None:
    with pytest.raises(SerializationError, match="offset"):
        codec.encode_value(dt.time(12, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")))


def test_uuid_decimal_bytes_and_special_numbers(codec: Codec) -> None:
    value = [
        uuid.uuid4(),
        decimal.Decimal("1.10"),
        decimal.Decimal("-0"),
        decimal.Decimal("NaN"),
        decimal.Decimal("sNaN"),
        decimal.Decimal("-Infinity"),
        decimal.Decimal("1e-999999"),
        b"\x00\xff",
        b"",
        math.nan,
        math.inf,
        -math.inf,
        -0.0,
        2**64,
        -(2**63) - 1,
        2**64 - 1,
        -(2**63),
        10**400,
        True,
        False,
    ]
    assert same(codec.decode_value(codec.encode_value(value)), value)


def test_bytearray_and_memoryview_come_back_as_bytes(codec: Codec) -> None:
    decoded = codec.decode_value(codec.encode_value([bytearray(b"ab"), memoryview(b"cd")]))
    assert decoded == [b"ab", b"cd"]
    assert all(type(item) is bytes for item in decoded)


def test_non_str_map_keys(codec: Codec) -> None:
    value = {1: "a", None: "b", 2.5: "c", b"k": "d", (1, 2): "e", uuid.UUID(int=1): "f"}
    assert same(codec.decode_value(codec.encode_value(value)), value)


def test_flat_values_are_not_copied(codec: Codec) -> None:
    flat = {"a": 1, "b": [1, 2]}
    assert codec._prepare(flat, 0) is not flat  # has a list: rebuilt
    leaf = {"a": 1, "b": "x"}
    assert codec._prepare(leaf, 0) is leaf
    assert codec._prepare([1, "a", None], 0) == [1, "a", None]


# -- application types ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int
    label: str = "p"


@dataclasses.dataclass
class Shape:
    points: list[Point]
    tags: tuple[str, ...]
    cached: int = dataclasses.field(default=0, init=False)


class Money:
    def __init__(self, amount: decimal.Decimal, currency: str) -> None:
        self.amount = amount
        self.currency = currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (self.amount, self.currency) == (
            other.amount,
            other.currency,
        )

    __hash__ = None  # type: ignore[assignment]


class Color(enum.IntEnum):
    RED = 1
    GREEN = 2


@pytest.fixture
def registry() -> TypeRegistry:
    types = TypeRegistry()
    types.register_dataclass(Point, 16)
    types.register_dataclass(Shape, 17)
    types.register(Money, 18, lambda m: [m.amount, m.currency], lambda f: Money(*f))
    types.register(Color, 127, int, Color)
    return types


def test_registered_types_round_trip(registry: TypeRegistry) -> None:
    codec = Codec(types=registry)
    value = {
        "shape": Shape([Point(1, 2), Point(3, 4, "q")], ("a",)),
        "price": Money(decimal.Decimal("9.99"), "EUR"),
        "color": Color.GREEN,
        Point(0, 0): "dataclass key",
    }
    decoded = codec.decode(KEY, codec.encode(KEY, value, created_at=0.0)).value
    assert decoded == value
    assert type(decoded["shape"].tags) is tuple
    assert decoded["color"] is Color.GREEN


def test_registration_rules(registry: TypeRegistry) -> None:
    class Other:
        pass

    with pytest.raises(ValueError, match="already registered"):
        registry.register(Other, 16, str, str)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Money, 40, str, str)
    for code in (0, 1, 15, 128, -1, True):
        with pytest.raises(ValueError, match=r"16\.\.127"):
            registry.register(Other, code, str, str)
    for builtin in (dict, tuple, dt.datetime, uuid.UUID, int):
        with pytest.raises(ValueError, match="natively"):
            registry.register(builtin, 50, str, str)
    with pytest.raises(TypeError):
        registry.register_dataclass(Other, 51)
    with pytest.raises(TypeError):
        registry.register_dataclass(Point(1, 2), 51)  # type: ignore[arg-type]
    assert registry.code_of(Money) == 18
    assert registry.code_of(Other) is None
    copy = registry.copy()
    copy.register(Other, 60, str, lambda _: Other())
    assert registry.code_of(Other) is None


def test_codec_sees_types_registered_after_it_was_built() -> None:
    types = TypeRegistry()
    codec = Codec(types=types)
    with pytest.raises(SerializationError):
        codec.encode_value(Point(1, 2))
    types.register_dataclass(Point, 20)
    assert codec.decode_value(codec.encode_value(Point(1, 2))) == Point(1, 2)


def test_default_registry_is_used_by_default() -> None:
    assert Codec().types is default_registry


def test_decoder_that_raises_is_a_corrupt_entry() -> None:
    types = TypeRegistry()

    def boom(_: Any) -> Any:
        raise RuntimeError("decoder failed")

    types.register(Money, 30, lambda m: [str(m.amount), m.currency], boom)
    codec = Codec(types=types)
    blob = codec.encode(KEY, Money(decimal.Decimal(1), "EUR"), created_at=0.0)
    with pytest.raises(CorruptEntryError):
        codec.decode(KEY, blob)


def test_dataclass_payload_with_wrong_fields_is_corrupt(registry: TypeRegistry) -> None:
    codec = Codec(types=registry)
    payload = msgpack.ExtType(16, msgpack.packb({"x": 1, "nope": 2}))
    with pytest.raises(CorruptEntryError):
        codec.decode(KEY, raw_envelope(FORMAT_VERSION, KEY, 0.0, None, [], payload))


def test_encoder_that_raises_is_a_serialization_error() -> None:
    types = TypeRegistry()

    def boom(_: Any) -> Any:
        raise RuntimeError("encoder failed")

    types.register(Money, 30, boom, Money)
    with pytest.raises(SerializationError, match="encoder registered for Money"):
        Codec(types=types).encode_value(Money(decimal.Decimal(1), "EUR"))


# -- what cannot be encoded ----------------------------------------------------------------


class Plain:
    pass


@pytest.mark.parametrize(
    "value",
    [object(), lambda: 1, Plain(), Plain, [1, {"a": object()}], {object(): 1}, 1j, Point(1, 2)],
    ids=["object", "lambda", "instance", "class", "nested", "key", "complex", "dataclass"],
)
def test_unserializable_values_raise_a_type_error(codec: Codec, value: Any) -> None:
    with pytest.raises(SerializationError) as info:
        codec.encode(KEY, value, created_at=0.0)
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, StratacacheError)
    assert "cannot encode value of type" in str(info.value)


def test_error_names_the_type_and_the_fix(codec: Codec) -> None:
    with pytest.raises(SerializationError, match=r"test_codec\.Plain.*register_type"):
        codec.encode_value(Plain())
    with pytest.raises(SerializationError, match="register_dataclass"):
        codec.encode_value(Point(1, 2))


Pair = collections.namedtuple("Pair", "a b")


class MyStr(str):
    pass


class MyDatetime(dt.datetime):
    pass


@pytest.mark.parametrize(
    "value",
    [
        collections.OrderedDict(a=1),
        collections.defaultdict(list),
        Pair(1, 2),
        Color.RED,
        MyStr("x"),
        MyDatetime(2024, 1, 1),
        msgpack.ExtType(EXT_TUPLE, b"\x90"),
    ],
    ids=["OrderedDict", "defaultdict", "namedtuple", "IntEnum", "str-subclass", "dt-sub", "ext"],
)
def test_subclasses_of_supported_types_are_rejected(codec: Codec, value: Any) -> None:
    with pytest.raises(SerializationError, match="subclass"):
        codec.encode_value(value)


def test_too_deep_is_rejected_before_anything_is_written() -> None:
    codec = Codec(max_depth=5, types=TypeRegistry())

    def nested(depth: int, make: Any) -> Any:
        value: Any = 1
        for _ in range(depth):
            value = make(value)
        return value

    for make in (lambda v: [v], lambda v: {"k": v}, lambda v: (v,), lambda v: frozenset([v])):
        codec.encode_value(nested(5, make))
        with pytest.raises(SerializationError, match="max_depth=5"):
            codec.encode(KEY, nested(6, make), created_at=0.0)
    # scalars inside the deepest container do not count
    codec.encode_value(nested(5, lambda v: [v, dt.datetime(2024, 1, 1), uuid.UUID(int=0)]))


def test_registered_objects_count_as_a_level() -> None:
    types = TypeRegistry()
    types.register_dataclass(Point, 16)
    codec = Codec(max_depth=2, types=types)
    codec.encode_value(Point(1, 2))  # Point, then its field map
    with pytest.raises(SerializationError, match="max_depth"):
        codec.encode_value([Point(1, 2)])


def test_self_referential_values_are_rejected(codec: Codec) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="refers to itself"):
        codec.encode_value(loop)
    mapping: dict[str, Any] = {}
    mapping["me"] = mapping
    with pytest.raises(SerializationError):
        codec.encode_value(mapping)


def test_too_large_is_rejected() -> None:
    codec = Codec(max_size=1024, types=TypeRegistry())
    codec.encode(KEY, "x" * 900, created_at=0.0)
    with pytest.raises(ValueTooLargeError) as info:
        codec.encode(KEY, "x" * 1024, created_at=0.0)
    assert isinstance(info.value, SerializationError)
    assert isinstance(info.value, TypeError)
    with pytest.raises(ValueTooLargeError):
        codec.encode_value([b"x" * 600, (b"y" * 600,)])


def test_blob_at_exactly_max_size_round_trips() -> None:
    codec = Codec(max_size=100, types=TypeRegistry())
    overhead = len(codec.encode(KEY, "", created_at=0.0))
    blob = codec.encode(KEY, "x" * (100 - overhead - 1), created_at=0.0)  # str8 header +1
    assert len(blob) == 100
    assert codec.decode(KEY, blob).value == "x" * (100 - overhead - 1)


def test_unencodable_strings_and_tags(codec: Codec) -> None:
    with pytest.raises(SerializationError, match="UTF-8"):
        codec.encode_value("lone \ud800 surrogate")
    with pytest.raises(TypeError):
        codec.encode(KEY, 1, created_at=0.0, tags=(1,))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        codec.encode(b"key", 1, created_at=0.0)  # type: ignore[arg-type]


def test_codec_arguments_are_validated() -> None:
    with pytest.raises(ValueError):
        Codec(max_size=10)
    with pytest.raises(ValueError):
        Codec(max_depth=0)
    with pytest.raises(ValueError):
        Codec(max_depth=101)
    with pytest.raises(TypeError):
        Codec(secret="text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Codec(secret=b"short")
    with pytest.raises(TypeError):
        Codec(types={})  # type: ignore[arg-type]


# -- hostile and broken bytes: always CorruptEntryError ------------------------------------


class Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_payload_is_never_executed(codec: Codec, tmp_path: Any, protocol: int) -> None:
    marker = tmp_path / "pwned"
    blob = pickle.dumps(Evil(str(marker)), protocol=protocol)
    with pytest.raises(CorruptEntryError):
        codec.decode(KEY, blob)
    with pytest.raises(CorruptEntryError):
        codec.decode_value(blob)
    # inside a valid envelope it is just bytes, never unpickled
    entry = codec.decode(KEY, raw_envelope(FORMAT_VERSION, KEY, 0.0, None, [], blob))
    assert entry.value == blob
    assert not marker.exists()


def test_truncated_blobs_are_corrupt(codec: Codec) -> None:
    blob = valid_blob(codec)
    for end in range(len(blob)):
        with pytest.raises(CorruptEntryError):
            codec.decode(KEY, blob[:end])


def test_trailing_bytes_are_corrupt(codec: Codec) -> None:
    with pytest.raises(CorruptEntryError):
        codec.decode(KEY, valid_blob(codec) + b"\xc0")


@pytest.mark.parametrize(
    "blob",
    [
        b"\xdd\xff\xff\xff\xff",  # array32 of 2**32-1 elements
        b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
        b"\xc6\xff\xff\xff\xff",  # bin32
        b"\xdf\xff\xff\xff\xff",  # map32
        b"\xc9\xff\xff\xff\xff\x10",  # ext32
        b"\x96\x01\xa7user:42\xcb" + bytes(8) + b"\xc0\x90\xdd\xff\xff\xff\xff",  # in envelope
        b"\x91" * 100_000 + b"\xc0",  # 100k nested arrays
        b"\x81\xc0" * 100_000 + b"\xc0",  # 100k nested maps
    ],
    ids=["array32", "str32", "bin32", "map32", "ext32", "envelope", "deep-arrays", "deep-maps"],
)
def test_msgpack_bombs_fail_fast_without_allocating(codec: Codec, blob: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(CorruptEntryError):
            codec.decode(KEY, blob)
        with pytest.raises(CorruptEntryError):
            codec.decode_value(blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * len(blob) + 1_000_000


def test_ext_nesting_deeper_than_max_depth_is_corrupt() -> None:
    codec = Codec(max_depth=8, types=TypeRegistry())
    payload = msgpack.packb([])
    for _ in range(20):  # a tuple in a tuple in a tuple ... as a foreign writer could
        payload = msgpack.packb([msgpack.ExtType(EXT_TUPLE, payload)])
    with pytest.raises(CorruptEntryError):
        codec.decode_value(payload)
    nested = msgpack.ExtType(EXT_TUPLE, payload)
    with pytest.raises(CorruptEntryError):
        codec.decode(KEY, raw_envelope(FORMAT_VERSION, KEY, 0.0, None, [], nested))
    # and the thread's depth counter is back at zero afterwards
    assert codec.decode_value(codec.encode_value(((((),),),))) == ((((),),),)


def test_wrong_version_is_corrupt(codec: Codec) -> None:
    for version in (FORMAT_VERSION + 1, 0, True, "1", 1.0, None):
        with pytest.raises(CorruptEntryError):
            codec.decode(KEY, raw_envelope(version, KEY, 0.0, None, [], 1))


def test_wrong_key_is_corrupt(codec: Codec) -> None:
    blob = valid_blob(codec)
    assert codec.decode(KEY, blob).value["id"] == 1
    for other in ("user:43", "", KEY + " ", KEY.upper()):
        with pytest.raises(CorruptEntryError, match="another key"):
            codec.decode(other, blob)
    with pytest.raises(CorruptEntryError):
        codec.decode(KEY, raw_envelope(FORMAT_VERSION, KEY.encode(), 0.0, None, [], 1))


@pytest.mark.parametrize(
    "fields",
    [
        (FORMAT_VERSION, KEY, "0", None, [], 1),
        (FORMAT_VERSION, KEY, 0, None, [], 1),  # created_at must be a float
        (FORMAT_VERSION, KEY, 0.0, "never", [], 1),
        (FORMAT_VERSION, KEY, 0.0, None, "tags", 1),
        (FORMAT_VERSION, KEY, 0.0, None, [1], 1),
        (FORMAT_VERSION, KEY, 0.0, None, {}, 1),
        (FORMAT_VERSION, KEY, 0.0, None, []),
        (FORMAT_VERSION, KEY, 0.0, None, [], 1, 2),
        (FORMAT_VERSION, KEY, 0.0, None, ["t"], [], 0, 1),  # one stamp per tag
        (FORMAT_VERSION, KEY, 0.0, None, ["t"], ["1"], 0, 1),
        (FORMAT_VERSION, KEY, 0.0, None, [], {}, 0, 1),
        (FORMAT_VERSION, KEY, 0.0, None, [], [], 0.0, 1),  # the epoch is an int
        (FORMAT_VERSION, KEY, 0.0, None, [], [], 0, 1, -2),  # load_us: an int >= 0
        (FORMAT_VERSION, KEY, 0.0, None, [], [], 0, 1, 2.0),
        (FORMAT_VERSION, KEY, 0.0, None, [], [], 0, 1, 2, 3),
    ],
)
def test_malformed_envelopes_are_corrupt(codec: Codec, fields: tuple[Any, ...]) -> None:
    with pytest.raises(CorruptEntryError):
        codec.decode(KEY, raw_envelope(*fields))


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc0", b"\x01", b"\xa7user:42", b"\x80", b"\xc1", "text", None, 42, [1]],
)
def test_foreign_data_is_corrupt(codec: Codec, data: Any) -> None:
    with pytest.raises(CorruptEntryError):
        codec.decode(KEY, data)


def test_bytes_like_input_is_accepted(codec: Codec) -> None:
    blob = valid_blob(codec)
    assert codec.decode(KEY, bytearray(blob)).value == codec.decode(KEY, memoryview(blob)).value


def test_oversized_blob_is_corrupt_even_if_valid() -> None:
    big = Codec(max_size=10_000, types=TypeRegistry())
    small = Codec(max_size=1_000, types=TypeRegistry())
    blob = big.encode(KEY, "x" * 5_000, created_at=0.0)
    with pytest.raises(CorruptEntryError, match="max_size"):
        small.decode(KEY, blob)
    with pytest.raises(CorruptEntryError, match="max_size"):
        small.decode_value(big.encode_value("x" * 5_000))


def test_unknown_ext_code_is_corrupt(codec: Codec) -> None:
    for code in (11, 15, 16, 99, 127):
        blob = raw_envelope(FORMAT_VERSION, KEY, 0.0, None, [], msgpack.ExtType(code, b"x"))
        with pytest.raises(CorruptEntryError):
            codec.decode(KEY, blob)


@pytest.mark.parametrize(
    ("code", "payload"),
    [
        (EXT_TUPLE, b"\x01"),  # not an array
        (2, b"\x91\x90"),  # set of an unhashable list
        (4, b"\x00" * 12),  # datetime with month 0
        (4, b"\x07\xe8\x01\x01" + b"\x00" * 8 + b"\x7f" + b"\x00" * 7),  # offset >= 1 day
        (4, b"\x00" * 5),
        (5, b"\x00"),
        (6, b"\x19" + b"\x00" * 7),  # hour 25
        (7, b"\x7f\xff\xff\xff" + b"\x00" * 8),  # too many days
        (8, b"\x00" * 15),  # UUID of 15 bytes
        (9, b"\xff\xfe"),  # Decimal of non-ASCII
        (9, b"1.2.3"),
    ],
)
def test_malformed_builtin_ext_payloads_are_corrupt(
    codec: Codec, code: int, payload: bytes
) -> None:
    blob = raw_envelope(FORMAT_VERSION, KEY, 0.0, None, [], msgpack.ExtType(code, payload))
    with pytest.raises(CorruptEntryError):
        codec.decode(KEY, blob)


def test_unhashable_map_key_is_corrupt(codec: Codec) -> None:
    # {[1]: 1}: a list key cannot be a dict key
    with pytest.raises(CorruptEntryError):
        codec.decode_value(b"\x81\x91\x01\x01")


def test_msgpack_timestamp_from_a_foreign_writer_is_a_plain_value(codec: Codec) -> None:
    blob = raw_envelope(FORMAT_VERSION, KEY, 0.0, None, [], msgpack.Timestamp(1, 2))
    assert codec.decode(KEY, blob).value == msgpack.Timestamp(1, 2)


@settings(max_examples=500)
@given(data=st.binary(max_size=200))
def test_random_bytes_only_ever_give_corrupt_entry(data: bytes) -> None:
    codec = Codec(types=TypeRegistry())
    try:
        codec.decode(KEY, data)
    except CorruptEntryError:
        pass
    try:
        codec.decode_value(data)
    except CorruptEntryError:
        pass


def _mutations() -> st.SearchStrategy[list[tuple[str, int, int]]]:
    op = st.tuples(
        st.sampled_from(["flip", "set", "insert", "delete"]),
        st.integers(min_value=0, max_value=10_000),
        st.integers(min_value=0, max_value=255),
    )
    return st.lists(op, min_size=1, max_size=4)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(value=values, mutations=_mutations())
def test_mutated_valid_blobs_only_ever_give_corrupt_entry_or_an_entry(
    value: Any, mutations: list[tuple[str, int, int]]
) -> None:
    codec = Codec(types=TypeRegistry())
    blob = bytearray(codec.encode(KEY, value, created_at=1.0, tags=("t",)))
    for op, position, byte in mutations:
        i = position % (len(blob) + 1)
        if op == "insert":
            blob.insert(i, byte)
        elif i < len(blob):
            if op == "flip":
                blob[i] ^= 1 << (byte % 8)
            elif op == "set":
                blob[i] = byte
            else:
                del blob[i]
    try:
        entry = codec.decode(KEY, bytes(blob))
    except CorruptEntryError:
        return
    assert isinstance(entry, Entry)
    assert type(entry.created_at) is float
    assert all(type(tag) is str for tag in entry.tags)


# -- signing -------------------------------------------------------------------------------

SECRET = b"0123456789abcdef0123456789abcdef"


def test_signed_round_trip() -> None:
    codec = Codec(secret=SECRET, types=TypeRegistry())
    assert codec.signed
    blob = codec.encode(KEY, {"a": (1,)}, created_at=3.0, tags=("x",))
    assert codec.decode(KEY, blob) == Entry({"a": (1,)}, 3.0, None, ("x",), (0,), 0)
    assert codec.decode_value(codec.encode_value([1, 2])) == [1, 2]


def test_any_tampered_byte_is_corrupt() -> None:
    codec = Codec(secret=SECRET, types=TypeRegistry())
    blob = codec.encode(KEY, {"admin": False}, created_at=3.0)
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(CorruptEntryError):
            codec.decode(KEY, bytes(tampered))
    with pytest.raises(CorruptEntryError):
        codec.decode(KEY, blob[:31])
    with pytest.raises(CorruptEntryError):
        codec.decode(KEY, blob + b"\x00")


def test_signature_requires_the_same_secret_and_kind() -> None:
    signed = Codec(secret=SECRET, types=TypeRegistry())
    other = Codec(secret=SECRET[::-1], types=TypeRegistry())
    plain = Codec(types=TypeRegistry())
    blob = signed.encode(KEY, 1, created_at=0.0)
    with pytest.raises(CorruptEntryError, match="signature"):
        other.decode(KEY, blob)
    with pytest.raises(CorruptEntryError):
        plain.decode(KEY, blob)
    with pytest.raises(CorruptEntryError):
        signed.decode(KEY, plain.encode(KEY, 1, created_at=0.0))
    # an entry is not accepted as a bare value and vice versa (distinct derived keys)
    with pytest.raises(CorruptEntryError, match="signature"):
        signed.decode_value(blob)
    with pytest.raises(CorruptEntryError, match="signature"):
        signed.decode(KEY, signed.encode_value([1, KEY, 0.0, None, [], 1]))


def test_signature_counts_towards_max_size() -> None:
    codec = Codec(max_size=100, secret=SECRET, types=TypeRegistry())
    with pytest.raises(ValueTooLargeError):
        codec.encode_value(b"x" * 80)


# -- threads -------------------------------------------------------------------------------


def test_concurrent_use_from_threads(registry: TypeRegistry) -> None:
    codec = Codec(types=registry)
    value = {"t": ((1, 2), frozenset({(3,)})), "p": [Point(1, 2)], "d": dt.date(2024, 1, 1)}
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(300):
                key = f"k{i}"
                assert codec.decode(key, codec.encode(key, value, created_at=1.0)).value == value
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


# -- key rotation ----------------------------------------------------------------------------

NEW_SECRET = b"fedcba9876543210fedcba9876543210"


def test_the_first_secret_signs_and_every_one_verifies() -> None:
    old = Codec(secret=SECRET, types=TypeRegistry())
    rotating = Codec(secret=[NEW_SECRET, SECRET], types=TypeRegistry())
    assert rotating.secrets == (NEW_SECRET, SECRET)
    assert Codec(secrets=(NEW_SECRET, SECRET), types=TypeRegistry()).secrets == rotating.secrets
    assert old.secrets == (SECRET,) and Codec(types=TypeRegistry()).secrets == ()
    old_blob = old.encode(KEY, "old", created_at=1.0)
    new_blob = rotating.encode(KEY, "new", created_at=2.0)
    # entries written before the rotation stay readable; new ones are signed by the first
    assert rotating.decode(KEY, old_blob).value == "old"
    assert rotating.decode(KEY, new_blob).value == "new"
    assert rotating.decode_value(old.encode_value([1])) == [1]
    assert new_blob == Codec(secret=NEW_SECRET, types=TypeRegistry()).encode(
        KEY, "new", created_at=2.0
    )
    with pytest.raises(CorruptEntryError, match="signature"):
        old.decode(KEY, new_blob)  # not yet accepted by an instance that only knows SECRET
    # once the old secret is retired, what it signed is corrupt (a miss), never an error
    retired = Codec(secret=[NEW_SECRET], types=TypeRegistry())
    with pytest.raises(CorruptEntryError, match="no longer listed"):
        retired.decode(KEY, old_blob)
    assert retired.decode(KEY, new_blob).value == "new"


def test_bad_secret_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        Codec(secret=[])
    with pytest.raises(ValueError, match="16 bytes"):
        Codec(secret=[SECRET, b"short"])
    with pytest.raises(TypeError, match="bytes"):
        Codec(secrets=[SECRET, "text"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not both"):
        Codec(secret=SECRET, secrets=[SECRET])
