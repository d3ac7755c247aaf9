"""``_resp.pack_command`` sends what redis-py's own packer sends, for every argument type
the direct path passes and for those it hands to the connection's encoder."""

from __future__ import annotations

import pytest
import redis.asyncio.connection
import redis.connection
from redis.exceptions import DataError

from stratacache._resp import pack_command, packs_as_redis_py

COMMANDS = [
    ("GET", "k"),
    ("MGET", "a", "b", "{c}"),
    ("EVALSHA", "a" * 40, 2, "ns:d:{k}", "ns:l:{k}", b"\x00token\xff", 60_000),
    ("EVALSHA", "a" * 40, 1, "ns:d:{é}", bytearray(b"ab"), memoryview(b"cd"), 1.5, -3),
    ("SET", "k", b"z" * 10_000, "PX", 5),  # a large argument: a chunk of its own
    ("EVAL", "x" * 7_000, 0),
]


def _connections() -> list[object]:
    return [redis.connection.Connection(), redis.asyncio.connection.Connection()]


@pytest.mark.parametrize("args", COMMANDS)
def test_same_bytes_as_redis_py(args: tuple[object, ...]) -> None:
    for conn in _connections():
        assert packs_as_redis_py(conn)
        ours = pack_command(conn, args)
        assert b"".join(ours) == b"".join(conn.pack_command(*args))  # type: ignore[attr-defined]


def test_the_connections_encoding_is_used() -> None:
    conn = redis.connection.Connection(encoding="latin-1")
    args = ("GET", "café")
    assert b"".join(pack_command(conn, args)) == b"".join(conn.pack_command(*args))


def test_refused_types_are_refused_as_redis_py_does() -> None:
    for conn in _connections():
        with pytest.raises(DataError):
            pack_command(conn, ("GET", True))
        with pytest.raises(DataError):
            pack_command(conn, ("GET", object()))


def test_a_connection_with_its_own_packing_keeps_it() -> None:
    class Traced(redis.connection.Connection):
        def pack_command(self, *args: object) -> list[bytes]:
            return [b"traced"]

    conn = Traced()
    assert not packs_as_redis_py(conn)
    assert pack_command(conn, ("GET", "k")) == [b"traced"]
    assert not packs_as_redis_py(
        redis.connection.Connection(command_packer=redis.connection.HiredisRespSerializer())
    )
