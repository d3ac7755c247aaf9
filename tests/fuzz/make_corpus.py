"""Write the seed corpus: valid encodings from the real encoders, plus edge cases.

Run from the repository root: ``python tests/fuzz/make_corpus.py`` (it rewrites only the
``seed-*`` files; inputs kept from crashes are named ``regress-*`` and left alone).
"""

from __future__ import annotations

import datetime as dt
import decimal
import hmac
import sys
import uuid
from pathlib import Path

import msgpack  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.targets import _ENTRY_MAC_KEY, KEY, PLAIN, SIGNED, SPACE, Point
from stratacache._bus_messages import Action, BusMessage, encode_message
from stratacache._instances import InstanceRecorder

CORPUS = Path(__file__).resolve().parent / "corpus"

VALUES = {
    "none": None,
    "int": 42,
    "bigint": 2**100,
    "str": "héllo",
    "bytes": b"\x00\xff",
    "list": [1, 2.5, "x", None],
    "dict": {"a": 1, 2: [3], (1, 2): {4}},
    "nested": [[[[{"deep": (1, frozenset({2}))}]]]],
    "times": [dt.datetime(2024, 1, 2, 3, 4, 5, 6, dt.timezone.utc), dt.date(2024, 2, 29)],
    "more": [dt.time(1, 2, 3), dt.timedelta(days=-1, microseconds=5), uuid.UUID(int=7)],
    "decimal": decimal.Decimal("-1.5e-7"),
    "point": Point(1, 2),
}
EDGE = {
    "empty": b"",
    "array32-4g": b"\xdd\xff\xff\xff\xff",
    "map32-4g": b"\xdf\xff\xff\xff\xff",
    "str32-4g": b"\xdb\xff\xff\xff\xff",
    "bin32-4g": b"\xc6\xff\xff\xff\xff",
    "ext32-4g": b"\xc9\xff\xff\xff\xff\x01",
    "deep-arrays": b"\x91" * 2000 + b"\xc0",
    "deep-ext-tuples": b"\xc7\x01\x01\x91" * 3 + b"\xc0",
    "nan": msgpack.packb(float("nan")),
    "timestamp": msgpack.packb(msgpack.Timestamp(1, 2)),
}


def _write(target: str, name: str, data: bytes) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{name}").write_bytes(data)


def main() -> None:
    for folder in CORPUS.glob("*"):
        for old in folder.glob("seed-*"):
            old.unlink()
    for name, value in VALUES.items():
        blob = PLAIN.encode(KEY, value, created_at=1.0, expires_at=2.0, tags=("t",), epoch=3)
        _write("codec", name, blob)
        signed = SIGNED.encode(KEY, value, created_at=1.0, tags=("t", "u"), stamps=(1, 2))
        _write("codec_signed", name, signed)
        _write("codec_signed", f"{name}-body", b"\x01" + signed[32:])
    for name, data in EDGE.items():
        _write("codec", name, data)
        _write("codec_signed", name, b"\x01" + data)
        _write("bus", name, data)
        _write("record", name, data)
    body = msgpack.packb([2, KEY, 1.0, None, [], [], 0, None])
    _write("codec", "other-version", body)
    _write("codec_signed", "forged", hmac.digest(b"x" * 32, body, "sha256") + body)
    assert hmac.digest(_ENTRY_MAC_KEY, b"", "sha256")  # the harness signs with this key

    source = bytes(range(16))
    for action in Action:
        args = () if action in (Action.CLEAR, Action.HEARTBEAT) else ("a", "b*", "{t}")
        message = BusMessage(source, 7, 1700000000.5, action, args)
        _write("bus", action.name.lower(), encode_message(message))
    _write("bus", "wrong-version", msgpack.packb([2, source, 1, 1.0, 4, []]))

    recorder = InstanceRecorder(
        SPACE,
        "worker",
        source,
        10.0,
        lambda: {
            "bus_state": "healthy",
            "bus_lag_p99": 0.01,
            "hit_ratio": 0.5,
            "outbox_size": 0,
            "dead_letters": 1,
            "breaker_state": "closed",
            "l1_hits": 3,
            "recent_dead_letters": [{"kind": "set", "target": "k", "attempts": 3}],
        },
    )
    _write("record", "full", recorder.record()[0])

    for name, text in {
        "plain": "user:1",
        "escapes": "a%b{c}d",
        "long": "x" * 300,
        "unicode": "clé-ключ",
        "glob-class": "user:[a-c]*\nuser:b1",
        "glob-negated": "[^x]?\\*\ny?*",
        "glob-odd-class": "[]-]\n]",
        "data-key": SPACE.data_key("a%b"),
        "lease-key": SPACE.lease_key("x{y}"),
        "hashed": SPACE.data_key("y" * 300),
        "bad-escape": SPACE.data_key("q").replace("q", "%7"),
    }.items():
        _write("keys", name, text.encode("utf-8"))
    _write("keys", "surrogate", b"ab\xff\xfe")


if __name__ == "__main__":
    main()
