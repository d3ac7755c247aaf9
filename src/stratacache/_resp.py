"""RESP packing of the direct path's commands (``_async/direct.py``), byte for byte what
redis-py's pure-Python packer sends, in about half its time.

redis-py's packer runs every argument through ``Encoder.encode`` (a chain of isinstance
checks) and rebuilds its buffer with a join per argument; a miss packs two script calls
of up to ten arguments, which made packing one of the larger client-side costs of a
miss. The arguments of the direct path are ``str``, ``bytes`` and ``int`` with a known
command name; anything else goes through the connection's own encoder, as redis-py would.

Only connections that pack as redis-py's own classes do are packed here: a connection
class that overrides ``pack_command``, or a sync connection with another packer (hiredis's,
which is C), keeps its own.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio.connection
import redis.connection

_REDIS_PY_PACK = (
    redis.connection.AbstractConnection.pack_command,
    redis.asyncio.connection.AbstractConnection.pack_command,
)


def packs_as_redis_py(conn: Any) -> bool:
    """Whether ``conn`` packs commands with redis-py's pure-Python packer."""
    if type(conn).pack_command not in _REDIS_PY_PACK:
        return False
    packer = getattr(conn, "_command_packer", None)  # sync connections only
    return packer is None or type(packer) is redis.connection.PythonRespSerializer


def pack_command(conn: Any, args: tuple[Any, ...]) -> list[Any]:
    """``conn.pack_command(*args)``: ``args[0]``, the command name, is one word."""
    if not packs_as_redis_py(conn):
        return conn.pack_command(*args)  # type: ignore[no-any-return]
    encoder = conn.encoder
    encoding, errors = encoder.encoding, encoder.encoding_errors
    cutoff = conn._buffer_cutoff
    out: list[Any] = []
    buff = b"*%d\r\n" % len(args)
    for arg in args:
        kind = type(arg)
        if kind is str:
            arg = arg.encode(encoding, errors)
        elif kind is int:
            arg = b"%d" % arg
        elif kind is not bytes:
            arg = encoder.encode(arg)  # bytearray, memoryview, float; or its error
        size = len(arg)
        # large arguments go as chunks of their own, as redis-py sends them (no copy)
        if size > cutoff or len(buff) > cutoff or isinstance(arg, memoryview):
            out.append(buff + b"$%d\r\n" % size)
            out.append(arg)
            buff = b"\r\n"
        else:
            buff += b"$%d\r\n%s\r\n" % (size, arg)
    out.append(buff)
    return out
