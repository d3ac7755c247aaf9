"""The fuzz smoke and the decoders' limits.

Every fuzz target (``tests/fuzz/targets.py``) runs over its committed corpus
(``tests/fuzz/corpus/<target>/``: seeds from the real encoders, edge cases, and every
input that once crashed, named ``regress-*``) plus seeded random mutations of it, so
``make test`` replays what ``make fuzz`` found without needing atheris. Then the limits:
declared lengths are capped by the blob (no large allocation), oversized or too-deep
blobs are typed errors, and hostile bytes planted in Redis are counted misses.
"""

from __future__ import annotations

import math
import random
import struct
import time
from pathlib import Path

import msgpack
import pytest
from redis import Redis, RedisCluster

from fuzz.targets import TARGETS
from stratacache import MISSING, Cache, Codec, CorruptEntryError, ValueTooLargeError, instances
from stratacache._bus_messages import (
    _MAX_ARGS,
    MAX_MESSAGE_BYTES,
    Action,
    BusMessage,
    decode_message,
    encode_message,
)
from stratacache._instances import MAX_RECORD_BYTES, decode_record
from stratacache._keys import KeySpace

CORPUS = Path(__file__).resolve().parent / "fuzz" / "corpus"
RANDOM_INPUTS = 2000  # mutations per target in the smoke (well under a second each)
NS = "fz"

# msgpack headers declaring 4 GiB - 1 of something, with nothing behind them
HUGE = {
    "str32": b"\xdb\xff\xff\xff\xff",
    "bin32": b"\xc6\xff\xff\xff\xff",
    "array32": b"\xdd\xff\xff\xff\xff",
    "map32": b"\xdf\xff\xff\xff\xff",
    "ext32": b"\xc9\xff\xff\xff\xff\x01",
}


def _corpus(target: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((CORPUS / target).iterdir()) if p.is_file()]


def _mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randint(0, len(data))
        if op == 0 and data:
            data[min(pos, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[pos:pos] = bytes([rng.choice((0x00, 0x7F, 0x80, 0xC0, 0xD9, 0xDD, 0xFF))])
        elif op == 2:
            del data[pos : pos + rng.randint(1, 8)]
        elif op == 3:
            data = data[:pos]
        elif op == 4:
            other = rng.choice(seeds)
            start = rng.randint(0, len(other))
            data[pos:pos] = other[start : start + rng.randint(1, 32)]
        else:
            data[pos:pos] = struct.pack(">I", rng.choice((0, 1, 2**31, 2**32 - 1)))
    return bytes(data)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_corpus_and_random_inputs(target: str) -> None:
    run = TARGETS[target]
    seeds = _corpus(target)
    assert len(seeds) >= 5, f"the corpus of {target} is missing"
    for data in seeds:
        run(data)
    rng = random.Random(target)  # seeded: a failure reproduces
    for _ in range(RANDOM_INPUTS):
        data = _mutate(rng, seeds)
        try:
            run(data)
        except Exception as exc:
            raise AssertionError(f"{target} failed on {data!r}") from exc


# -- declared lengths never allocate ---------------------------------------------------


@pytest.mark.parametrize("kind", sorted(HUGE))
def test_msgpack_caps_declared_lengths_by_the_buffer(kind: str) -> None:
    """The codec relies on ``unpackb``'s default caps (see ``_codec``'s notes), pinned here
    in case msgpack changes them: an array or map header announcing more items than the
    buffer has bytes fails on the limit, before its list or dict is preallocated; a str,
    bin or ext is only built once all its bytes are in the buffer."""
    expected = "exceeds max_" if kind in ("array32", "map32", "ext32") else "incomplete input"
    with pytest.raises(ValueError, match=expected):
        msgpack.unpackb(HUGE[kind] + b"\x00" * 64)


@pytest.mark.parametrize("kind", sorted(HUGE))
@pytest.mark.parametrize("signed", [False, True], ids=["plain", "signed"])
def test_huge_declared_lengths_are_corrupt(kind: str, signed: bool) -> None:
    import hmac

    secret = b"s" * 32
    codec = Codec(secret=secret if signed else None)
    blob = HUGE[kind]
    if signed:  # a writer holding the secret still cannot make the reader allocate
        blob = (
            hmac.digest(hmac.digest(secret, b"stratacache/entry", "sha256"), blob, "sha256") + blob
        )
    with pytest.raises(CorruptEntryError):
        codec.decode("k", blob)
    entry = b"\x98\x02\xa1k\xcb" + struct.pack(">d", 1.0) + b"\xc0\x90\x90\x00" + HUGE[kind]
    with pytest.raises(CorruptEntryError):  # the same header as the value of an envelope
        Codec().decode("k", entry)


def test_a_blob_over_max_size_is_corrupt_before_unpacking() -> None:
    codec = Codec(max_size=1024)
    blob = Codec().encode("k", "x" * 2000, created_at=1.0)
    with pytest.raises(CorruptEntryError, match="larger than max_size"):
        codec.decode("k", blob)


def _nested_tuple(depth: int) -> tuple[object, ...]:
    value: tuple[object, ...] = ()
    for _ in range(depth - 1):
        value = (value,)
    return value


def test_too_deep_blobs_are_corrupt() -> None:
    codec = Codec(max_depth=4)
    lax = Codec(max_depth=16)  # a writer with laxer limits than the reader
    deep = lax.encode("k", _nested_tuple(10), created_at=1.0)  # ext in ext: tuples
    assert lax.decode("k", deep).value == _nested_tuple(10)
    with pytest.raises(CorruptEntryError):
        codec.decode("k", deep)
    entry = b"\x98\x02\xa1k\xcb" + struct.pack(">d", 1.0) + b"\xc0\x90\x90\x00"
    with pytest.raises(CorruptEntryError):  # plain arrays: msgpack's stack (1024) ends it
        codec.decode("k", entry + b"\x91" * 5000 + b"\xc0")


@pytest.mark.parametrize("field", ["created_at", "expires_at"])
def test_regress_a_nan_time_is_corrupt(field: str) -> None:
    """A NaN ``expires_at`` decoded fine and then made ``get`` raise ``ValueError`` (the L1
    refused a NaN TTL); it is a corrupt entry now (corpus: ``regress-nan-*``)."""
    times = {"created_at": 1.0, "expires_at": 2.0, field: math.nan}
    blob = Codec().encode("k", "v", **times)
    with pytest.raises(CorruptEntryError, match=field):
        Codec().decode("k", blob)


# -- bus messages and instance records ---------------------------------------------------


def test_bus_message_limits() -> None:
    source = bytes(16)
    ok = BusMessage(source, 1, 1.0, Action.INVALIDATE_KEYS, ("a",))
    assert decode_message(encode_message(ok)) == ok
    big = BusMessage(source, 1, 1.0, Action.INVALIDATE_KEYS, ("x" * MAX_MESSAGE_BYTES,))
    assert decode_message(encode_message(big)) is None  # over the size bound
    many = msgpack.packb([1, source, 1, 1.0, 1, ["a"] * (_MAX_ARGS + 1)], use_bin_type=True)
    assert len(many) < MAX_MESSAGE_BYTES and decode_message(many) is None
    for header in HUGE.values():
        assert decode_message(header) is None
        framed = b"\x96\x01\xc4\x10" + source + b"\x01\xcb" + struct.pack(">d", 1.0) + b"\x01"
        assert decode_message(framed + header) is None


@pytest.mark.parametrize("sent_at", [math.inf, -math.inf, math.nan])
def test_regress_a_bus_message_time_must_be_finite(sent_at: float) -> None:
    """A stranger's ``sent_at=-inf`` put an infinite lag into the bus lag p99 (and an
    instance record); such a message is dropped now (corpus: ``regress-inf-sent-at``)."""
    data = msgpack.packb([1, bytes(16), 1, sent_at, int(Action.CLEAR), []], use_bin_type=True)
    assert decode_message(data) is None


def test_regress_the_cli_renders_hostile_times() -> None:
    """Times from Redis (bus messages, records, dead letters) are anyone's: ``bus tail`` and
    ``dead-letters`` crashed on ``1e300`` or a str, ``instances`` on an infinite uptime."""
    import io

    from rich.console import Console

    from stratacache._cli import _duration, _instances_table, _when

    for hostile in (1e300, -1e300, math.inf, math.nan, "soon"):
        assert isinstance(_when(hostile), str)  # type: ignore[arg-type]
    for seconds in (math.inf, math.nan, 1e300):
        assert isinstance(_duration(seconds), str)
    record = msgpack.packb(
        {
            "v": 1, "id": "x/1", "namespace": NS, "instance": "x", "source": "00", "host": "h",
            "pid": 1, "version": "0", "started_at": -1e308, "updated_at": 1e308, "ttl": 1e308,
            "bus_state": "healthy", "bus_lag_p99": math.inf, "hit_ratio": math.nan,
            "outbox_size": 0, "dead_letters": 1, "breaker_state": "closed",
            "recent_dead_letters": [{"first_failed_at": "never", "kind": ["x"]}],
        }
    )  # fmt: skip
    info = decode_record(record)
    assert info is not None
    console = Console(file=io.StringIO(), width=200)
    console.print(_instances_table([info], NS))
    assert "x/1" in console.file.getvalue()  # type: ignore[attr-defined]


def test_regress_the_cli_get_refuses_a_misshapen_entry() -> None:
    """``stratacache get`` shows entries the codec refuses (another secret, unknown ext
    types) as best it can; a misshapen envelope (tags not a list of str...) raised a
    ``TypeError`` traceback and is a clear error now."""
    from stratacache._cli import CliError, _decode_entry

    shown = _decode_entry("k", msgpack.packb([9, "k", 1.0, None, ["t"], [0], 0, "v"]))
    assert shown["decoded"] is False and shown["value"] == "v"
    for tags, created in ((5, 1.0), ([1], 1.0), (["t"], "yesterday")):
        blob = msgpack.packb([9, "k", created, None, tags, [0], 0, "v"])
        with pytest.raises(CliError):
            _decode_entry("k", blob)


def test_instance_record_limits() -> None:
    for header in HUGE.values():
        assert decode_record(header) is None
        assert decode_record(b"\x81\xa1v" + header) is None
    big = msgpack.packb({"v": 1, "pad": "x" * MAX_RECORD_BYTES})
    assert decode_record(big) is None


# -- hostile bytes in Redis ------------------------------------------------------------


def _raw(url: str, cluster: bool) -> Redis | RedisCluster:
    return RedisCluster.from_url(url) if cluster else Redis.from_url(url)


def test_an_oversized_value_is_a_typed_error_on_set(target: tuple[str, bool]) -> None:
    url, cluster = target
    with Cache(url, cluster=cluster, namespace=NS, codec=Codec(max_size=1024)) as cache:
        with pytest.raises(ValueTooLargeError):
            cache.set("big", "x" * 2000)
        assert cache.get("big", MISSING) is MISSING
        raw = _raw(url, cluster)
        try:
            assert raw.exists(KeySpace(NS).data_key("big")) == 0  # nothing was written
        finally:
            raw.close()


def test_hostile_blobs_in_redis_are_counted_misses(target: tuple[str, bool]) -> None:
    url, cluster = target
    keys = KeySpace(NS)
    planted = {f"huge-{kind}": header for kind, header in HUGE.items()}
    planted["oversized"] = Codec().encode("oversized", "x" * 4096, created_at=time.time())
    planted["deep-ext"] = Codec(max_depth=16).encode(
        "deep-ext", _nested_tuple(10), created_at=time.time()
    )
    planted["deep-arrays"] = b"\x91" * 5000 + b"\xc0"
    now = time.time()
    planted["nan-expires"] = Codec().encode("nan-expires", 1, created_at=now, expires_at=math.nan)
    planted["nan-created"] = Codec().encode("nan-created", 1, created_at=math.nan)
    raw = _raw(url, cluster)
    codec = Codec(max_size=1024, max_depth=4)
    try:
        with Cache(url, cluster=cluster, namespace=NS, codec=codec) as cache:
            for name, blob in planted.items():
                raw.set(keys.data_key(name), blob)
            for name in planted:
                assert cache.get(name, MISSING) is MISSING, name
            assert cache.stats().decode_errors == len(planted)
            assert cache.get_or_set("oversized", lambda: "reloaded") == "reloaded"
    finally:
        raw.close()


def test_hostile_instance_records_are_skipped(target: tuple[str, bool]) -> None:
    url, cluster = target
    keys = KeySpace(NS)
    raw = _raw(url, cluster)
    try:
        far = int(time.time() * 1000) + 60_000
        hostile = {
            "huge": HUGE["array32"],
            "big": b"\x00" * (MAX_RECORD_BYTES + 1),
            "junk": b"\xc1",
        }
        for member, blob in hostile.items():
            raw.zadd(keys.instance_index_key(), {member: far})
            raw.set(keys.instance_key(member), blob)
        assert instances(url, NS, cluster=cluster) == []
    finally:
        raw.close()
