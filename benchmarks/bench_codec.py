"""Codec and key building beside their baselines (raw msgpack; functools.lru_cache).

pytest-benchmark: ``pytest benchmarks/bench_codec.py``; or ``python benchmarks/bench_codec.py``
for a one-table report. Never a pass/fail timing test.
"""

from __future__ import annotations

import functools
import timeit
from typing import Any, Callable

import msgpack
import pytest

from stratacache._codec import Codec, TypeRegistry
from stratacache._keys import KeyMaker, KeySpace

N = 10_000
KEY = "user:12345"
VALUE = {  # ~200 bytes of msgpack, a typical small record
    "id": 12345,
    "name": "Alice Example",
    "email": "alice@example.com",
    "active": True,
    "score": 12.5,
    "tags": ["a", "b", "c"],
    "created": "2024-01-01T00:00:00Z",
    "roles": ["admin", "user"],
    "meta": {"k": "v", "n": 3},
    "bio": "x" * 40,
}


def _get_user(user_id: int, region: str = "eu") -> None: ...


@functools.cache
def _lru_user(user_id: int, region: str = "eu") -> int:
    return user_id


def cases(n: int) -> dict[str, Callable[[], Any]]:
    """Each case does ``n`` operations."""
    codec = Codec(types=TypeRegistry())
    signed = Codec(secret=b"s" * 32, types=TypeRegistry())
    raw = msgpack.packb(VALUE)
    blob = codec.encode(KEY, VALUE, created_at=1.7e9, expires_at=1.7e9 + 300)
    signed_blob = signed.encode(KEY, VALUE, created_at=1.7e9, expires_at=1.7e9 + 300)
    maker = KeyMaker(_get_user)
    template = KeyMaker(_get_user, "user:{user_id}:{region}")
    space = KeySpace("app")
    unpackb, packb, decode, encode = msgpack.unpackb, msgpack.packb, codec.decode, codec.encode
    rng = range(n)
    _lru_user(1)

    def raw_unpack() -> None:
        for _ in rng:
            unpackb(raw)

    def codec_decode() -> None:
        for _ in rng:
            decode(KEY, blob)

    def signed_decode() -> None:
        for _ in rng:
            signed.decode(KEY, signed_blob)

    def raw_pack() -> None:
        for _ in rng:
            packb(VALUE)

    def codec_encode() -> None:
        for _ in rng:
            encode(KEY, VALUE, created_at=1.7e9, expires_at=1.7e9 + 300)

    def lru_hit() -> None:
        for _ in rng:
            _lru_user(1)

    def default_key() -> None:
        args: tuple[Any, ...] = (1,)
        kwargs: dict[str, Any] = {}
        for _ in rng:
            maker(args, kwargs)

    def default_key_kwargs() -> None:
        args: tuple[Any, ...] = (1,)
        kwargs = {"region": "us"}
        for _ in rng:
            maker(args, kwargs)

    def template_key() -> None:
        args: tuple[Any, ...] = (1,)
        kwargs: dict[str, Any] = {}
        for _ in rng:
            template(args, kwargs)

    def data_key() -> None:
        for _ in rng:
            space.data_key(KEY)

    return {
        "decode: msgpack.unpackb (baseline)": raw_unpack,
        "decode: Codec.decode": codec_decode,
        "decode: Codec.decode, signed": signed_decode,
        "encode: msgpack.packb (baseline)": raw_pack,
        "encode: Codec.encode": codec_encode,
        "key: lru_cache hit (baseline)": lru_hit,
        "key: KeyMaker default, positional": default_key,
        "key: KeyMaker default, keyword": default_key_kwargs,
        "key: KeyMaker template": template_key,
        "key: KeySpace.data_key": data_key,
    }


@pytest.mark.benchmark(group="codec and keys (x10k)")
@pytest.mark.parametrize("name", list(cases(1)))
def test_codec_and_keys(benchmark: Any, name: str) -> None:
    benchmark(cases(N)[name])


def main() -> None:
    for name, case in cases(N).items():
        best = min(timeit.repeat(case, number=1, repeat=20)) / N
        print(f"{name:40s} {best * 1e9:8.0f} ns/op")


if __name__ == "__main__":
    main()
