"""The least-privilege Redis ACL of a cache: which commands it sends, on which keys and
channels, as a ready ``ACL SETUSER`` line (:func:`acl_rules`), and the probe that
:meth:`Cache.check_permissions` runs with it.

Every Redis key of namespace ``ns`` starts with ``ns:`` (``KeySpace``; namespaces cannot
hold ``:`` or glob characters, so ``~ns:*`` never matches another namespace's keys) and
its one channel is ``ns:v1:bus``. Commands called from the Lua scripts are checked by
Redis too (with the same key patterns), so they are in the list: a script calling one the
user lacks fails at that call, after the script's earlier writes.
"""

from __future__ import annotations

import hashlib
import re

from ._keys import KeySpace

__all__ = [
    "CACHE_COMMANDS",
    "CLUSTER_COMMANDS",
    "PROBE_SCRIPT",
    "SCRIPT_COMMANDS",
    "acl_rules",
    "nopermission",
]

SCRIPT_COMMANDS: tuple[str, ...] = (
    "del",
    "exists",
    "get",
    "getbit",
    "incr",
    "mget",
    "pexpire",
    "pexpireat",
    "pttl",
    "rename",
    "set",
    "setbit",
    "time",
    "unlink",
    "zadd",
    "zcount",
    "zmscore",
    "zrange",
    "zrem",
    "zremrangebyrank",
)
"""The commands the Lua scripts (``_scripts.py``, ``_lock_scripts.py``, ``_bloom.py``)
call."""

CACHE_COMMANDS: tuple[str, ...] = (
    # connection: HELLO (redis-py with protocol=3), the bus's prober and health checks.
    # Not CLIENT SETINFO (Redis >= 7.2), which redis-py sends on connect but whose
    # refusal it ignores: the line must load on Redis 7.0.
    "ping",
    "hello",
    # entries, leases, heartbeat records, dependents (the scripts do the rest)
    "get",
    "mget",
    "set",
    "del",
    "unlink",
    "exists",
    "pttl",
    "pexpire",
    "zadd",
    "zrem",
    "zrange",
    "zrangebyscore",
    "zremrangebyscore",
    # invalidate_pattern walks the namespace with SCAN MATCH ns:...
    "scan",
    # scripts: EVAL in pipelines, EVALSHA + SCRIPT LOAD for the registered ones
    "eval",
    "evalsha",
    "script|load",
    "script|exists",
    # the audit stream (XREAD: `stratacache audit --follow`)
    "xadd",
    "xrevrange",
    "xread",
    # the invalidation bus
    "publish",
    "subscribe",
    "unsubscribe",
)
"""The commands a cache (and its lock and instance records) sends, without a cluster."""

CLUSTER_COMMANDS: tuple[str, ...] = (
    # redis-py's cluster client: the slot map, its command table (keys of each command),
    # redirections
    "cluster|slots",
    "cluster|shards",
    "command",
    "asking",
    "readonly",
    # sharded pub/sub: the bus of a cluster
    "spublish",
    "ssubscribe",
    "sunsubscribe",
)
"""The further commands a cache sends to a Redis Cluster."""

# what redis-cli (sdssplitargs) takes bare: anything else is written as a SHA-256
_BARE_RE = re.compile(r"[\x21-\x7e]+\Z")
_QUOTES = ('"', "'", "\\")
_USER_RE = re.compile(r"[A-Za-z0-9_.@+-]+\Z")


def acl_rules(namespace: str, *, user: str, password: str, cluster: bool = False) -> str:
    """The ``ACL SETUSER`` line that lets ``user`` run a cache of ``namespace`` and
    nothing else: the commands it sends (an allow-list after ``-@all``), the keys under
    ``namespace:`` and the namespace's bus channel.

    Run the line in ``redis-cli`` (on every node of a cluster, or put it in each node's
    ACL file). ``cluster=True`` adds what a Redis Cluster client needs (the slot map,
    sharded pub/sub). A password that ``redis-cli`` could not take bare (spaces, quotes,
    backslashes, non-ASCII) is written as its SHA-256 (``#<hex>``), which Redis accepts
    in its place. ``reset`` first: running the line again replaces the user's rules.

    ``SCAN`` (for ``invalidate_pattern``) cannot be limited to keys: it lets the user
    list the *names* of other namespaces' keys, never read them. ``SELECT`` is not
    granted: use database 0.
    """
    keys = KeySpace(namespace)
    if not isinstance(user, str) or not _USER_RE.match(user):
        raise ValueError(f"user {user!r} must be characters from A-Z a-z 0-9 _ . @ + -")
    if not isinstance(password, str) or not password:
        raise ValueError("password must be a non-empty str")
    bare = not any(c in password for c in _QUOTES) and not password.startswith(("#", "<", ">"))
    if bare and _BARE_RE.match(password):
        secret = ">" + password
    else:
        secret = "#" + hashlib.sha256(password.encode("utf-8")).hexdigest()
    commands = dict.fromkeys(CACHE_COMMANDS + SCRIPT_COMMANDS)
    if cluster:
        commands.update(dict.fromkeys(CLUSTER_COMMANDS))
    allowed = " ".join(f"+{name}" for name in commands)
    return f"ACL SETUSER {user} reset on {secret} ~{namespace}:* &{keys.channel()} -@all {allowed}"


PROBE_SCRIPT = """
local missing = {}
local function try(name, ...)
  local reply = redis.pcall(name, ...)
  -- Redis 7.0 words it "ERR The user executing the script can't run this command"
  if type(reply) == 'table' and reply.err and (string.find(reply.err, 'NOPERM', 1, true)
      or string.find(reply.err, 'user executing the script', 1, true)) then
    table.insert(missing, name .. ' in a script: ' .. reply.err)
  end
end
try('SET', KEYS[1], '1', 'PX', 10000)
try('GET', KEYS[1])
try('MGET', KEYS[1], KEYS[2])
try('EXISTS', KEYS[1])
try('PTTL', KEYS[1])
try('PEXPIRE', KEYS[1], 10000)
try('PEXPIREAT', KEYS[1], 4102444800000)
try('INCR', KEYS[1])
try('RENAME', KEYS[1], KEYS[2])
try('SETBIT', KEYS[2], 7, 1)
try('GETBIT', KEYS[2], 7)
try('UNLINK', KEYS[2])
try('DEL', KEYS[1], KEYS[2])
try('ZADD', KEYS[3], 1, 'probe')
try('ZCOUNT', KEYS[3], '-inf', '+inf')
try('ZMSCORE', KEYS[3], 'probe')
try('ZRANGE', KEYS[3], 0, -1)
try('ZREM', KEYS[3], 'probe')
try('ZREMRANGEBYRANK', KEYS[3], 0, -1)
try('DEL', KEYS[3])
try('TIME')
return missing
"""
"""Calls every command the scripts use (``SCRIPT_COMMANDS``) on the probe keys
(``KEYS``: two strings and a sorted set in the namespace's meta slot, gone when it
returns); returns the refused ones."""


def nopermission(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing a command for the user's ACL."""
    return "NOPERM" in str(exc) or type(exc).__name__ == "NoPermissionError"
