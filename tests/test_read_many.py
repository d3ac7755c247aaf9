"""``read_many``, the per-key loop of ``get_many`` after its ``MGET``: the same cases run
against the compiled implementation and the pure spec (ids ``c`` / ``py``), each with the
matching L1. No Redis: blobs are encoded by a real ``Codec``."""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Optional

import msgpack
import pytest

from stratacache._codec import FORMAT_VERSION, Codec, Entry
from stratacache._compat import NO_EXTENSIONS
from stratacache._errors import InvalidKeyError
from stratacache._read_many_py import BatchOutcome, BatchRules

from l1_impls import IMPL_IDS, FakeClock, load_l1

NOW = 1_000_000.0
MAX_TTL = 300.0
TRUSTED: dict[Optional[str], int] = {None: 7, "t": 3, "u": 5}
OPEN = BatchRules(TRUSTED, -math.inf, None)


def load_read_many(impl_id: str) -> Callable[..., Any]:
    if impl_id == "py":
        return importlib.import_module("stratacache._read_many_py").read_many  # type: ignore[no-any-return]
    if NO_EXTENSIONS:
        module = pytest.importorskip(
            "stratacache._read_many_c", reason="pure run: STRATACACHE_NO_EXTENSIONS=1"
        )
        return module.read_many  # type: ignore[no-any-return]
    return importlib.import_module("stratacache._read_many_c").read_many  # type: ignore[no-any-return]


class Batch:
    """One L1 (with a fake clock), a codec and the implementation under test."""

    def __init__(self, impl_id: str, codec: Codec) -> None:
        self.read_many = load_read_many(impl_id)
        self.clock = FakeClock()
        self.l1 = load_l1(impl_id)(100, timer=self.clock)
        self.stale = load_l1(impl_id)(100, timer=self.clock)
        self.codec = codec

    def blob(self, key: str, value: Any, **fields: Any) -> bytes:
        fields.setdefault("created_at", NOW - 10)
        fields.setdefault("epoch", 7)
        return self.codec.encode(key, value, **fields)

    def run(
        self,
        keys: list[str],
        blobs: list[Optional[bytes]],
        rules: BatchRules = OPEN,
        *,
        l1_open: bool = True,
        stale: bool = False,
        found: Optional[dict[str, Any]] = None,
    ) -> tuple[BatchOutcome, dict[str, Any]]:
        found = {} if found is None else found
        tickets = [self.l1.ticket(key) for key in keys]
        hits, errors, refused, unsure = self.read_many(
            keys,
            blobs,
            tickets,
            self.codec,
            rules,
            self.l1,
            l1_open,
            NOW,
            MAX_TTL,
            self.stale if stale else None,
            60.0 if stale else 0.0,
            found,
        )
        # every decided ticket is back: a fresh ticket + release of each key succeeds,
        # and the unsure ones are still out (released here, exactly once)
        for i, _ in unsure:
            self.l1.release(tickets[i], keys[i])
        self.assert_no_ticket_out(keys)
        return BatchOutcome(hits, errors, refused, unsure), found

    def assert_no_ticket_out(self, keys: list[str]) -> None:
        for key in keys:
            with pytest.raises(ValueError):
                self.l1.release(0, key)


@pytest.fixture(params=IMPL_IDS)
def impl_id(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=["unsigned", "signed"])
def batch(request: pytest.FixtureRequest, impl_id: str) -> Batch:
    codec = Codec() if request.param == "unsigned" else Codec(secret=b"s" * 32)
    return Batch(impl_id, codec)


def test_untagged_and_tagged_entries_are_hits_installed_in_l1(batch: Batch) -> None:
    value = {"a": [1, 2]}
    blobs = [
        batch.blob("plain", value),
        batch.blob("tagged", "v", tags=("t", "u"), stamps=(3, 5)),
        batch.blob("loaded", 1.5, load_time=0.25),
    ]
    outcome, found = batch.run(["plain", "tagged", "loaded"], blobs)
    assert outcome == (3, 0, 0, [])
    assert found == {"plain": value, "tagged": "v", "loaded": 1.5}
    assert batch.l1.peek("plain") == value
    assert batch.l1.tags_of("tagged") == ("t", "u")
    assert batch.l1.peek("loaded") == 1.5


def test_the_l1_life_is_what_remains_of_the_entry_at_most_max_ttl(batch: Batch) -> None:
    blobs = [
        batch.blob("soon", 1, expires_at=NOW + 5),
        batch.blob("late", 2, expires_at=NOW + 10 * MAX_TTL),
        batch.blob("never", 3),
    ]
    batch.run(["soon", "late", "never"], blobs)
    batch.clock.advance(6)
    assert batch.l1.peek("soon", None) is None
    assert batch.l1.peek("late") == 2
    batch.clock.advance(MAX_TTL)
    assert batch.l1.peek("late", None) is None
    assert batch.l1.peek("never", None) is None


def test_none_replies_and_expired_entries_are_misses(batch: Batch) -> None:
    blobs = [None, batch.blob("old", 1, expires_at=NOW), batch.blob("ok", 2)]
    outcome, found = batch.run(["absent", "old", "ok"], blobs)
    assert outcome == (1, 0, 0, [])
    assert found == {"ok": 2}
    assert "old" not in batch.l1


def test_stale_tag_versions_and_epochs_are_misses(batch: Batch) -> None:
    blobs = [
        batch.blob("older-tag", 1, tags=("t",), stamps=(2,)),
        batch.blob("newer-tag", 1, tags=("t",), stamps=(4,)),
        batch.blob("second-tag", 1, tags=("t", "u"), stamps=(3, 4)),
        batch.blob("old-epoch", 1, epoch=6),
    ]
    keys = ["older-tag", "newer-tag", "second-tag", "old-epoch"]
    outcome, found = batch.run(keys, blobs)
    assert outcome == (0, 0, 0, [])
    assert found == {}
    assert len(batch.l1) == 0


def test_unknown_versions_leave_the_entry_unsure_with_its_ticket_out(batch: Batch) -> None:
    blobs = [
        batch.blob("unknown-tag", "x", tags=("t", "new"), stamps=(3, 1), load_time=0.5),
        batch.blob("known", "y"),
        batch.blob("expired", "z", tags=("new",), stamps=(1,), expires_at=NOW - 1),
    ]
    outcome, found = batch.run(["unknown-tag", "known", "expired"], blobs)
    assert outcome.hits == 1 and found == {"known": "y"}
    [(index, entry)] = outcome.unsure
    assert index == 0
    assert entry == Entry("x", NOW - 10, None, ("t", "new"), (3, 1), 7, 0.5)
    assert type(entry) is Entry


def test_an_untrusted_table_makes_every_entry_unsure(batch: Batch) -> None:
    rules = BatchRules(None, -math.inf, None)
    outcome, found = batch.run(["a", "b"], [batch.blob("a", 1), None], rules)
    assert [i for i, _ in outcome.unsure] == [0]
    assert found == {}
    rules = BatchRules({"t": 3}, -math.inf, None)  # no epoch known
    outcome, _ = batch.run(["a"], [batch.blob("a", 1)], rules)
    assert [i for i, _ in outcome.unsure] == [0]


def test_corrupt_bytes_are_counted_misses_not_errors(batch: Batch) -> None:
    good = batch.blob("k", 1)
    bad = [
        b"",
        b"\xc1",  # never used in msgpack
        good[:-1],
        batch.blob("other-key", 1),  # written under another key
        msgpack.packb([FORMAT_VERSION + 1, "k", 1.0, None, [], [], 7, 1]),
        msgpack.packb([FORMAT_VERSION, "k", float("nan"), None, [], [], 7, 1]),
        msgpack.packb([FORMAT_VERSION, "k", 1.0, float("nan"), [], [], 7, 1]),
        msgpack.packb([FORMAT_VERSION, "k", 1, None, [], [], 7, 1]),  # int created_at
        msgpack.packb([FORMAT_VERSION, "k", 1.0, None, ["t"], [], 7, 1]),
        msgpack.packb([FORMAT_VERSION, "k", 1.0, None, [1], [3], 7, 1]),
        msgpack.packb([FORMAT_VERSION, "k", 1.0, None, ["t"], [3.0], 7, 1]),
        msgpack.packb([FORMAT_VERSION, "k", 1.0, None, [], [], 7.0, 1]),
        msgpack.packb([FORMAT_VERSION, "k", 1.0, None, [], [], True, 1]),
        msgpack.packb([FORMAT_VERSION, "k", 1.0, None, [], [], 7, 1, -1]),  # bad load_us
        msgpack.packb([FORMAT_VERSION, "k", 1.0, None, [], [], 7]),  # 7 items
        msgpack.packb({"not": "a list"}),
        msgpack.packb(2**64 - 1),
        b"x" * (batch.codec.max_size + 1),
    ]
    keys = ["k"] * len(bad)  # one ticket each (tickets nest)
    outcome, found = batch.run(keys, bad)  # type: ignore[arg-type]
    assert outcome == (0, len(bad), 0, [])
    assert found == {}


def test_an_undecodable_ext_type_is_a_miss(impl_id: str) -> None:
    batch = Batch(impl_id, Codec())
    packed = msgpack.packb([FORMAT_VERSION, "k", 1.0, None, [], [], 7, msgpack.ExtType(99, b"")])
    outcome, _ = batch.run(["k"], [packed])
    assert outcome.decode_errors == 1


def test_withheld_entries_are_misses(batch: Batch) -> None:
    blobs = [batch.blob("early", 1, created_at=NOW - 100), batch.blob("late", 2, created_at=NOW)]
    rules = BatchRules(TRUSTED, NOW - 50, None)
    _, found = batch.run(["early", "late"], blobs, rules)
    assert found == {"late": 2}

    seen: list[tuple[str, tuple[str, ...]]] = []

    def blocks(key: str, tags: tuple[str, ...]) -> bool:
        seen.append((key, tags))
        return key == "pending"

    blobs = [batch.blob("pending", 1, tags=("t",), stamps=(3,)), batch.blob("free", 2)]
    _, found = batch.run(["pending", "free"], blobs, BatchRules(TRUSTED, -math.inf, blocks))
    assert found == {"free": 2}
    assert seen == [("pending", ("t",)), ("free", ())]


def test_a_closed_l1_serves_the_values_without_installing(batch: Batch) -> None:
    outcome, found = batch.run(["k"], [batch.blob("k", 1)], l1_open=False)
    assert outcome.hits == 1 and found == {"k": 1}
    assert "k" not in batch.l1


def test_a_refused_install_is_counted_and_still_served(batch: Batch) -> None:
    tickets = [batch.l1.ticket("k")]
    batch.l1.invalidate("k")  # an invalidation since the ticket: the guard refuses
    found: dict[str, Any] = {}
    outcome = batch.read_many(
        ["k"], [batch.blob("k", 1)], tickets, batch.codec, OPEN, batch.l1, True, NOW,
        MAX_TTL, None, 0.0, found,
    )  # fmt: skip
    assert tuple(outcome) == (1, 0, 1, [])
    assert found == {"k": 1}
    assert "k" not in batch.l1
    batch.assert_no_ticket_out(["k"])


def test_the_fail_safe_store_keeps_installed_entries_longer(batch: Batch) -> None:
    batch.run(
        ["k"], [batch.blob("k", 1, tags=("t",), stamps=(3,), expires_at=NOW + 10)], stale=True
    )
    assert batch.stale.peek("k") == 1
    assert batch.stale.tags_of("k") == ("t",)
    batch.clock.advance(10 + 59)
    assert batch.stale.peek("k") == 1
    batch.clock.advance(2)
    assert batch.stale.peek("k", None) is None


def test_values_are_fresh_objects_per_key(batch: Batch) -> None:
    """What L1 holds is what get_many returns (copy on read is the facade's), and two
    keys never share a decoded object."""
    value = {"list": [1]}
    _, found = batch.run(["a", "b"], [batch.blob("a", value), batch.blob("b", value)])
    assert found["a"] == found["b"] == value
    assert found["a"] is not found["b"] and found["a"]["list"] is not found["b"]["list"]
    assert batch.l1.peek("a") is found["a"]


def test_found_keeps_what_it_had(batch: Batch) -> None:
    _, found = batch.run(["b"], [batch.blob("b", 2)], found={"a": 1})
    assert found == {"a": 1, "b": 2}


def test_an_error_in_an_install_gives_every_ticket_back(impl_id: str) -> None:
    batch = Batch(impl_id, Codec())

    def weigher(key: Any, value: Any) -> int:
        if key == "boom":
            raise RuntimeError("weigher failed")
        return 1

    batch.l1 = load_l1(impl_id)(100, timer=batch.clock, max_weight=1000, weigher=weigher)
    keys = ["unsure", "ok", "boom", "after"]
    blobs = [
        batch.blob("unsure", 0, tags=("new",), stamps=(1,)),
        batch.blob("ok", 1),
        batch.blob("boom", 2),
        batch.blob("after", 3),
    ]
    tickets = [batch.l1.ticket(key) for key in keys]
    with pytest.raises(RuntimeError, match="weigher failed"):
        batch.read_many(
            keys, blobs, tickets, batch.codec, OPEN, batch.l1, True, NOW, MAX_TTL, None,
            0.0, {},
        )  # fmt: skip
    batch.assert_no_ticket_out(keys)
    assert batch.l1.peek("ok") == 1


def test_mismatched_lengths_are_rejected_before_anything(impl_id: str) -> None:
    batch = Batch(impl_id, Codec())
    with pytest.raises(ValueError):
        batch.read_many(
            ["a"], [], [0], batch.codec, OPEN, batch.l1, True, NOW, MAX_TTL, None, 0.0, {}
        )


def _envelope_variants(codec: Codec) -> list[tuple[str, bytes]]:
    """(key, blob) pairs around the envelope header the compiled loop reads in C (see
    ``_decode_common`` in ``cython_ext/_read_many_c.pyx``): the shapes it reads, the
    encodings it leaves to the generic decode, and damaged ones."""
    fields: dict[str, Any] = {"created_at": NOW - 10, "epoch": 7}
    good = codec.encode("k", {"a": [1, "x"]}, **fields)
    loaded = codec.encode("k", 1.5, load_time=0.25, **fields)

    def raw(*items: Any, **options: Any) -> bytes:
        return msgpack.packb(list(items), **options)  # type: ignore[no-any-return]

    v = FORMAT_VERSION
    variants = [
        ("k", good),
        ("k", loaded),
        ("k", good + b"\x00"),  # bytes after the envelope
        ("k", loaded + b"\x00"),
        ("k", good[:-1] + b"\x00\x00"),
        ("k", codec.encode("k", 1, expires_at=NOW + 5, **fields)),
        ("k", codec.encode("k", 1, tags=("t",), stamps=(3,), **fields)),
        ("k" * 40, codec.encode("k" * 40, 1, **fields)),  # str 8 key
        ("k" * 300, codec.encode("k" * 300, 1, **fields)),  # str 16 key
        ("clé ✓", codec.encode("clé ✓", 1, **fields)),
        ("k", codec.encode("k", 1, created_at=NOW - 10, epoch=200)),  # uint 8 epoch
        ("k", codec.encode("k", 1, created_at=NOW - 10, epoch=70_000)),  # uint 32
        ("k", codec.encode("k", 1, created_at=NOW - 10, epoch=2**40)),  # uint 64
        ("k", raw(v, "k", NOW - 10, None, [], [], -1, 1)),  # negative fixint epoch
        ("k", raw(v, "k", NOW - 10, None, [], [], 7, 1, 5)),
        ("k", raw(v, "k", NOW - 10, None, [], [], 7, 1, -5)),
        ("k", raw(v, "k", NOW - 10, None, [], [], 7, 1, 2**64 - 1)),
        ("k", raw(v, "k", NOW - 10, NOW + 5, [], [], 7, 1, use_single_float=True)),
        ("k", raw(v, "k", NOW - 10, float("nan"), [], [], 7, 1)),
        ("k", raw(v, "k", float("nan"), None, [], [], 7, 1)),
        ("k", raw(v, "K", NOW - 10, None, [], [], 7, 1)),
        ("k", raw(v, "kk", NOW - 10, None, [], [], 7, 1)),
        ("k", raw(v, b"k", NOW - 10, None, [], [], 7, 1)),
        ("k", raw(v, "k", NOW - 10, None, [], [], 7)),  # no payload
        ("k", raw(v, "k", NOW - 10, None, [], [], 7, msgpack.ExtType(99, b"")))
    ]
    # tags and stamps: what _read_tags reads, what it leaves to the generic decode
    tagged = [
        (("t",), (3,)),
        (("t", "u"), (3, 5)),
        (("t", "u"), (3, 4)),  # a stale stamp
        (("t", "new"), (3, 0)),  # a tag of unknown version: unsure
        (("t" * 31, "t" * 32, "t" * 255, "é✓"), (0, 127, 128, 2**16)),
        (tuple(f"t{i}" for i in range(15)), tuple(range(15))),
        (tuple(f"t{i}" for i in range(16)), tuple(range(16))),  # array 16: not read in C
        (("t",), (2**32,)),
        (("t",), (2**64 - 1,)),
        (("",), (0,)),
    ]
    for tags, stamps in tagged:
        variants.append(("k", codec.encode("k", [1], tags=tags, stamps=stamps, **fields)))
        variants.append(("k", codec.encode("k", 1, tags=tags, stamps=stamps, load_time=0.5,
                                           expires_at=NOW + 5, **fields)))  # fmt: skip
    variants += [
        ("k", raw(v, "k", NOW - 10, None, ["t"], [-3], 7, 1)),  # a negative stamp
        ("k", raw(v, "k", NOW - 10, None, ["t", "u"], [3], 7, 1)),  # fewer stamps
        ("k", raw(v, "k", NOW - 10, None, ["t"], [3, 5], 7, 1)),  # more stamps
        ("k", raw(v, "k", NOW - 10, None, ["t"], [], 7, 1)),
        ("k", raw(v, "k", NOW - 10, None, [], [3], 7, 1)),
        ("k", raw(v, "k", NOW - 10, None, [b"t"], [3], 7, 1)),  # a bytes tag
        ("k", raw(v, "k", NOW - 10, None, [3], [3], 7, 1)),
        ("k", raw(v, "k", NOW - 10, None, ["t"], ["3"], 7, 1)),
        ("k", raw(v, "k", NOW - 10, None, ["t"], [3.0], 7, 1)),
        ("k", raw(v, "k", NOW - 10, None, ["t"], [None], 7, 1)),
        ("k", raw(v, "k", NOW - 10, None, ["t" * 300], [3], 7, 1)),  # str 16 tag
        ("k", raw(v, "k", NOW - 10, None, ["t"], [3], 7)),  # no payload
    ]
    # a tag that is not UTF-8, and every truncation and damaged byte of a tagged header
    two_tags = codec.encode("k", {"a": 1}, tags=("t", "uu"), stamps=(3, 300), **fields)
    at = two_tags.index(b"uu")
    variants.append(("k", two_tags[:at] + b"\xff\xfe" + two_tags[at + 2 :]))
    tagged_header = len(two_tags) - len(msgpack.packb({"a": 1}))
    variants += [("k", two_tags[:size]) for size in range(len(two_tags))]
    for i in range(tagged_header):
        for byte in (0x00, 0x90, 0x92, 0xA1, 0xC0, 0xCC, 0xCF, 0xD9, 0xFF, two_tags[i] ^ 1):
            variants.append(("k", two_tags[:i] + bytes([byte]) + two_tags[i + 1 :]))
    # the version, written as uint 8 rather than a fixint
    variants.append(("k", good[:1] + b"\xcc" + good[1:]))
    # nesting around msgpack's depth limit: the payload sits one level down
    for depth in (1021, 1022, 1023, 1024):
        nested = b"\x91" * depth + b"\xc0"
        variants.append(("k", good[: -len(msgpack.packb({"a": [1, "x"]}))] + nested))
    # every truncation, and every byte of the header set to a few values
    variants += [("k", good[:size]) for size in range(len(good))]
    header = len(good) - len(msgpack.packb({"a": [1, "x"]}))
    for i in range(header):
        for byte in (0x00, 0x90, 0xC0, 0xCB, 0xFF, good[i] ^ 1):
            variants.append(("k", good[:i] + bytes([byte]) + good[i + 1 :]))
    return variants


def _unnested(value: Any) -> tuple[int, Any]:
    """``value`` without its single-item list wrappers, and how many there were: the
    deeply nested values below are compared without recursing."""
    depth = 0
    while type(value) is list and len(value) == 1:
        value = value[0]
        depth += 1
    return depth, value


def test_the_compiled_loop_and_the_spec_agree_on_every_envelope_shape() -> None:
    """What the compiled loop reads from the envelope's header in C it decides exactly as
    the spec's ``Codec.decode`` of the whole blob: hit (same value, life and version
    verdict), miss or decode error."""
    if NO_EXTENSIONS:
        pytest.importorskip("stratacache._read_many_c", reason="pure run")
    codec = Codec()
    for key, blob in _envelope_variants(codec):
        outcomes = []
        for impl_id in IMPL_IDS:
            batch = Batch(impl_id, codec)
            outcome, found = batch.run([key], [blob])
            in_l1 = key in batch.l1
            outcomes.append(
                (outcome.hits, outcome.decode_errors, [e for _, e in outcome.unsure],
                 {k: _unnested(v) for k, v in found.items()},
                 _unnested(batch.l1.peek(key)), batch.l1.tags_of(key) if in_l1 else None)
            )  # fmt: skip
        assert outcomes[0] == outcomes[1], blob


def load_l1_pass(impl_id: str) -> Callable[..., Any]:
    return importlib.import_module(load_read_many(impl_id).__module__).l1_pass  # type: ignore[no-any-return]


def test_l1_pass_serves_what_l1_has_and_lists_the_rest_validated(impl_id: str) -> None:
    batch = Batch(impl_id, Codec())
    l1_pass = load_l1_pass(impl_id)
    batch.l1.set("hit", 1)
    found: dict[str, Any] = {"kept": 0}
    keys = ["hit", "miss", "clé", "miss", "hit", "x" * 1024]
    assert l1_pass(batch.l1, iter(keys), found) == ["miss", "clé", "miss", "x" * 1024]
    assert found == {"kept": 0, "hit": 1}


@pytest.mark.parametrize(
    ("key", "error"),
    [
        ("", InvalidKeyError),
        ("x" * 1025, InvalidKeyError),
        ("\ud800", InvalidKeyError),  # a lone surrogate
        (b"bytes", TypeError),
        (7, TypeError),
        ([], TypeError),  # unhashable: L1 refuses it first
    ],
)
def test_l1_pass_refuses_what_validate_key_refuses(impl_id: str, key: Any, error: type) -> None:
    batch = Batch(impl_id, Codec())
    with pytest.raises(error):
        load_l1_pass(impl_id)(batch.l1, ["ok", key], {})


def test_l1_pass_passes_a_str_subclass_on_as_a_plain_str(impl_id: str) -> None:
    class Key(str):
        pass

    [key] = load_l1_pass(impl_id)(Batch(impl_id, Codec()).l1, [Key("k")], {})
    assert type(key) is str and key == "k"
