"""The pure side of the Bloom filters (``stratacache._bloom``): sizing by the standard
formulas, typed errors for bad parameters, a hash that is the same in every process, items
that mean the same id hashing alike, and the waiting queue of adds."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from typing import Any

import pytest

from stratacache import InvalidBloomParameters, StratacacheError
from stratacache._bloom import BloomParams, PendingAdds, bit_is_set, item_bytes
from stratacache._keys import KeySpace


def test_sizing_follows_the_standard_formulas() -> None:
    p = BloomParams.build(20_000, 0.01)
    m = -20_000 * math.log(0.01) / math.log(2) ** 2
    assert p.bits == math.ceil(m)  # one shard: nothing rounded up further
    assert p.hashes == round(p.bits / 20_000 * math.log(2)) == 7
    assert p.shards == 1 and p.shard_bits == p.bits
    # about 9.6 bits per item at 1 %, 14.4 at 0.1 %
    assert 9.5 < p.bits / 20_000 < 9.7
    assert 14.3 < BloomParams.build(1000, 0.001).bits / 1000 < 14.5
    assert abs(p.expected_error_rate(20_000) - 0.01) < 0.0005
    # an explicit shard count splits the bits evenly (rounded up)
    sharded = BloomParams.build(20_000, 0.01, shards=7)
    assert sharded.shards == 7 and sharded.shard_bits == math.ceil(p.bits / 7)
    assert sharded.bits == 7 * sharded.shard_bits >= p.bits
    # large filters get a shard per 2^26 bits
    big = BloomParams.build(100_000_000, 0.01)
    big_m = math.ceil(-100_000_000 * math.log(0.01) / math.log(2) ** 2)
    assert big.shards == math.ceil(big_m / 2**26) == 15
    assert big.shard_bits <= 2**26


@pytest.mark.parametrize(
    ("capacity", "error_rate", "shards"),
    [
        (0, 0.01, None),
        (-5, 0.01, None),
        (1.5, 0.01, None),
        (True, 0.01, None),
        ("100", 0.01, None),
        (100, 0.0, None),
        (100, 1.0, None),
        (100, 1.5, None),
        (100, -0.1, None),
        (100, float("nan"), None),
        (100, "0.01", None),
        (100, True, None),
        (100, 0.01, 0),
        (100, 0.01, 5000),
        (100, 0.01, 2.0),
        (10**12, 1e-9, 1),  # 4.3e13 bits in one shard: more than a Redis string holds
    ],
)
def test_bad_parameters_raise_a_typed_value_error(capacity, error_rate, shards) -> None:
    with pytest.raises(InvalidBloomParameters) as info:
        BloomParams.build(capacity, error_rate, shards)
    assert isinstance(info.value, ValueError) and isinstance(info.value, StratacacheError)


def test_the_hash_is_stable_across_processes() -> None:
    """Not Python's hash(): another interpreter, with another PYTHONHASHSEED, agrees."""
    p = BloomParams.build(20_000, 0.01, shards=4)
    here = [p.locate(item) for item in ("user:1", b"\x00\xff", 42, "ünïcode")]
    code = (
        "from stratacache._bloom import BloomParams\n"
        "p = BloomParams.build(20_000, 0.01, shards=4)\n"
        "print([p.locate(i) for i in ('user:1', b'\\x00\\xff', 42, 'ünïcode')])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == repr(here)
    # and a pinned value: a change of hashing is a change of layout (a new signature)
    assert BloomParams.build(1000, 0.01).locate("user:1") == (0, 7307, 2570)


def test_items_that_mean_the_same_id_hash_alike() -> None:
    p = BloomParams.build(1000, 0.01)
    assert p.locate(42) == p.locate("42") == p.locate(b"42")
    assert item_bytes("é") == "é".encode()
    assert p.locate("a") != p.locate("b")
    for bad in (1.5, None, True, ("a",), object()):
        with pytest.raises(TypeError):
            item_bytes(bad)


def test_positions_are_double_hashing_within_the_shard() -> None:
    p = BloomParams.build(5000, 0.001, shards=3)
    for item in range(200):
        shard, h1, h2 = p.locate(item)
        assert 0 <= shard < 3
        positions = p.positions(h1, h2)
        assert len(positions) == p.hashes
        assert positions == [(h1 + i * h2) % p.shard_bits for i in range(p.hashes)]
        assert all(0 <= x < p.shard_bits for x in positions)
        assert h2 != 0
    # shards are used about evenly
    counts = [0, 0, 0]
    for item in range(3000):
        counts[p.locate(item)[0]] += 1
    assert min(counts) > 850


def test_bit_order_is_redis_setbit_order() -> None:
    assert bit_is_set(b"\x80", 0) and not bit_is_set(b"\x80", 7)
    assert bit_is_set(b"\x00\x01", 15) and not bit_is_set(b"\x00\x01", 16)


def test_bloom_keys_share_a_slot_per_shard_and_stay_injective() -> None:
    ks = KeySpace("ns")
    state, a, b = ks.bloom_keys("users", 3)
    assert (state, a, b) == ("ns:v1:b:{users/3}:p", "ns:v1:b:{users/3}:a", "ns:v1:b:{users/3}:b")
    # a name holding '/', braces or '%' cannot collide with another name's shard
    assert ks.bloom_keys("x/1", 2)[0] != ks.bloom_keys("x", 12)[0]
    assert ks.bloom_keys("x/1", 2)[0] == "ns:v1:b:{x/1/2}:p"
    assert ks.bloom_keys("a{b}", 0)[0] == "ns:v1:b:{a%7Bb%7D/0}:p"


def test_pending_adds_keep_what_fits_and_owe_a_mark_for_the_rest() -> None:
    pending = PendingAdds(maxsize=3, backoff=0.1, backoff_max=0.4)
    assert not pending.active
    assert pending.failed([b"a", b"b"], now=10.0) == 0
    assert pending.due == pytest.approx(10.1)
    assert b"a" in pending and len(pending) == 2 and not pending.lost_owed
    assert pending.failed([b"a", b"c", b"d", b"e"], now=11.0) == 2  # a is there already
    assert pending.lost_owed and pending.dropped == 2 and len(pending) == 3
    assert pending.due == pytest.approx(11.2)  # backoff doubled
    pending.failed([], now=12.0)
    pending.failed([], now=13.0)
    assert pending.due == pytest.approx(13.4)  # capped
    assert pending.take(2) == [b"a", b"b"]
    pending.landed([b"a", b"b"])
    assert pending.applied == 2 and pending.due == 0.0 and len(pending) == 1
    assert pending.active  # c waits, and the mark is owed
    pending.landed([b"c"])
    assert pending.active
    pending.lost_marked()
    assert not pending.active
    pending.failed([b"z"], now=20.0)
    assert pending.give_up() == 1 and not pending.active


def test_rebuild_progress_goes_to_tqdm_on_a_terminal_else_nowhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """(The rebuild tests use the callback; this covers the choice of reporter.)"""
    import io
    import types

    from stratacache._async.bloom import _progress_bar

    made: list[Any] = []

    class FakeBar:
        def __init__(self, total: Any, desc: str, unit: str) -> None:
            self.total, self.desc, self.n, self.closed = total, desc, 0, False
            made.append(self)

        def update(self, n: int) -> None:
            self.n += n

        def close(self) -> None:
            self.closed = True

    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeBar))

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = _progress_bar(None, 2500, "users")
    bar.update(1000)
    bar.update(2500)
    bar.close()
    assert len(made) == 1 and made[0].n == 2500 and made[0].closed
    assert made[0].total == 2500 and "users" in made[0].desc
    _progress_bar(False, 10, "users").update(5)  # off: nothing made
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: nothing either
    _progress_bar(None, 10, "users").update(5)
    assert len(made) == 1
    calls: list[tuple[int, Any]] = []
    callback = _progress_bar(lambda done, total: calls.append((done, total)), None, "u")
    callback.update(3)
    assert calls == [(3, None)]
