"""The hot Redis calls of the L2 tier (GET, MGET, the entry scripts) sent past redis-py's
per-command layers, on connections borrowed from the client's own pool.

redis-py's ``execute_command`` spends more instructions around a command than the command
costs on the wire: metrics hooks, the pool's lock and liveness poll on every check-out and
check-in, the retry wrapper, response callbacks. This module keeps what the tier needs of
it, through redis-py's connection API (``get_connection`` / ``release`` of the pool, or
of the cluster node; the connection's packing, done by ``_resp.py`` where it is redis-py's
pure-Python packer; each exchange through
``async_request`` of ``_primitives``: on asyncio connections the stream writer and parser
under one timer, with the public ``send_packed_command`` / ``read_response`` as the
fallback, see the notes there; the connection's own parser, hiredis when installed):

* **Borrowed connections.** A connection is checked out of the client's pool (or its
  cluster node's) once and kept in a short idle list of this tier between calls (at most
  :data:`IDLE_PER_NODE` per node); a call pops one, so no two threads or tasks ever share
  a connection. Only a connection whose exchange completed goes back to the list; one
  that failed or was cancelled is disconnected (redis-py does so as it raises) and given
  back to its pool. :meth:`AsyncDirect.give_back` returns them all (the tier's close).
  After a fork, or once the event loop they were made in is gone, the list is dropped
  (the connections belong to the parent, or to the dead loop; the cache's
  ``forget_connections`` takes care of them).
* **Reconnect.** A connection that sat idle may have been closed by the server (a
  restart, a timeout): if it fails with a connection error, the command is sent once more
  on a fresh connection from the pool (which connects and checks it), as the pool's own
  liveness check would have done. A timeout is never retried (the call keeps its time
  budget); the error goes to the caller, whose breaker counts it.
* **Scripts.** Scripts go as ``EVALSHA``; a ``NOSCRIPT`` reply (a restarted or flushed
  server) is answered with ``EVAL`` of the body on the same connection, which also loads
  it for the next call.
* **Cluster.** A key's command goes to the master redis-py's slot table names. Anything
  the fast path does not handle (``MOVED``/``ASK`` redirects, ``TRYAGAIN``,
  ``CLUSTERDOWN``, a connection error, slots not known yet) is :data:`FALLBACK`: the tier
  then makes the call through the cluster client, which follows redirects and refreshes
  its topology.

The fast path is off (every call through the client) for clients it cannot serve as they
would: a single-connection client, a pool with client-side caching, a cluster client
reading from replicas, a client whose class overrides ``execute_command`` (instrumented).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)

from .._primitives import (
    AsyncRedis,
    AsyncRedisCluster,
    async_borrow_connection,
    async_current_loop,
    async_direct_source,
    async_give_back_connection,
    async_request,
    fork_generation,
)
from .._resp import pack_command

# the execute_command of redis-py's own client classes (standalone, cluster)
_BASE_EXECUTE = {False: AsyncRedis.execute_command, True: AsyncRedisCluster.execute_command}

IDLE_PER_NODE = 4  # borrowed connections a tier keeps between calls, per Redis node

FALLBACK: Any = object()  # "make this call through the client": see the module notes

# cluster replies the client handles (redirects, a resharding or failover in progress)
_REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError)


class Script:
    """A Lua script and its SHA1 (for ``EVALSHA``)."""

    __slots__ = ("body", "sha")

    def __init__(self, body: str) -> None:
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()


class AsyncDirect:
    """Commands on borrowed connections (see the module notes); one per tier."""

    def __init__(self, client: Any, cluster: bool) -> None:
        self._client = client
        self._cluster = cluster
        # a standalone client's pool, read once: isinstance against redis-py's client
        # classes (typing Protocols) costs more per call than the rest of the lookup
        self._pool = None if cluster else async_direct_source(client, None)
        self.enabled = self._pool is not None or cluster
        if type(client).execute_command is not _BASE_EXECUTE[cluster]:
            self.enabled = False  # instrumented by a subclass: every call through it
        if cluster and getattr(client, "read_from_replicas", False):
            self.enabled = False
        if cluster and getattr(client, "load_balancing_strategy", None) is not None:
            self.enabled = False
        # node name ("" standalone) -> (its pool or cluster node, idle connections)
        self._idle: dict[str, tuple[Any, list[Any]]] = {}
        self._owner: tuple[int, Any] = (fork_generation(), async_current_loop())

    def _source(self, key: Any) -> tuple[str, Any] | None:
        """The node name and pool (or cluster node) serving ``key``; None if unknown."""
        if not self._cluster:
            return "", self._pool
        try:
            node = self._client.get_node_from_key(key)
        except Exception:  # slots not known yet, or not covered
            return None
        if node is None:
            return None
        return node.name, async_direct_source(self._client, node)

    def _check_owner(self) -> None:
        owner = (fork_generation(), async_current_loop())
        if owner != self._owner:
            # a forked child, or a new event loop: these connections are not ours to use
            self._idle = {}
            self._owner = owner

    async def execute(self, route_key: Any, *args: Any) -> Any:
        """Send one command (``args``, as for ``execute_command``) to the node of
        ``route_key``; its raw reply, or :data:`FALLBACK`."""
        return await self._run(route_key, args, None)

    async def evalsha(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run ``script`` on the node of ``keys[0]`` (``EVALSHA``, ``EVAL`` after a
        ``NOSCRIPT``); its raw reply, or :data:`FALLBACK`."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        return await self._run(keys[0], command, script)

    async def _run(self, route_key: Any, command: tuple[Any, ...], script: Script | None) -> Any:
        self._check_owner()
        where = self._source(route_key)
        if where is None or where[1] is None:
            return FALLBACK
        name, source = where
        held = self._idle.get(name)
        if held is None or held[0] is not source:
            if held is not None:  # the node was replaced (a topology refresh)
                await self._give_back_list(held)
            held = (source, [])
            self._idle[name] = held
        idle = held[1]
        reused = True
        conn: Any = None
        try:
            conn = idle.pop()
        except IndexError:
            reused = False
            conn = await async_borrow_connection(source)
        try:
            try:
                result = await self._exchange(conn, command, script)
            except RedisConnectionError:
                if self._cluster or not reused:
                    raise
                # an idle connection the server closed: once more on a fresh one (if the
                # pool cannot make one, it has taken it back itself)
                dead, conn = conn, None
                await async_give_back_connection(source, dead)
                conn = await async_borrow_connection(source)
                result = await self._exchange(conn, command, script)
        except RedisConnectionError:
            if conn is not None:
                await async_give_back_connection(source, conn)
            if self._cluster:
                return FALLBACK  # the cluster client reconnects, or learns the topology
            raise
        except _REDIRECTS:
            await self._keep(idle, source, conn)
            return FALLBACK
        except BaseException:
            # a timeout, a cancellation: the connection is disconnected (redis-py does so
            # as it raises) and goes back to its pool
            if conn is not None:
                await async_give_back_connection(source, conn)
            raise
        await self._keep(idle, source, conn)
        return result

    async def _keep(self, idle: list[Any], source: Any, conn: Any) -> None:
        if len(idle) < IDLE_PER_NODE:
            idle.append(conn)
        else:
            await async_give_back_connection(source, conn)

    async def _exchange(self, conn: Any, command: tuple[Any, ...], script: Script | None) -> Any:
        reply = await async_request(conn, pack_command(conn, command))
        if isinstance(reply, ResponseError):
            if not isinstance(reply, NoScriptError) or script is None:
                raise reply  # the connection is clean
            reply = await async_request(
                conn, pack_command(conn, ("EVAL", script.body, *command[2:]))
            )
            if isinstance(reply, ResponseError):
                raise reply
        return reply

    async def _give_back_list(self, held: tuple[Any, list[Any]]) -> None:
        source, idle = held
        while idle:
            await async_give_back_connection(source, idle.pop())

    async def give_back(self) -> None:
        """Return every idle connection to its pool (before the client is closed)."""
        self._check_owner()
        held, self._idle = self._idle, {}
        for entry in held.values():
            await self._give_back_list(entry)
