"""Reading the heartbeat records of a namespace (see ``stratacache._instances``)."""

from __future__ import annotations

from typing import Any

from .._instances import InstanceInfo, decode_record
from .._keys import KeySpace
from .._primitives import AsyncRedis, AsyncRedisCluster, async_close_client, async_redis_call


async def instances(redis: Any, namespace: str, *, cluster: bool = False) -> list[InstanceInfo]:
    """The live instances of ``namespace``: the heartbeat record each cache with Redis
    publishes about itself (refreshed about once a second, gone when it closes or, if it
    died, when the record's TTL runs out), sorted by id. A cache publishes its record
    once its bus runs, that is from its first call that uses Redis.

    Parameters:
        redis: a URL, or a client — ``redis.asyncio.Redis`` or ``RedisCluster`` for
            :func:`stratacache.ainstances`, ``redis.Redis`` or ``redis.cluster.RedisCluster``
            for :func:`stratacache.instances`. A client built from a URL is closed again.
        namespace: the caches' ``namespace``.
        cluster: build a Redis Cluster client when ``redis`` is a URL.

    Records that cannot be decoded (another format version, foreign bytes) are left out.
    Redis errors are raised as redis-py raises them.
    """
    keys = KeySpace(namespace)
    owned = isinstance(redis, str)
    client = (AsyncRedisCluster if cluster else AsyncRedis).from_url(redis) if owned else redis
    try:
        members = await async_redis_call(client.zrange, keys.instance_index_key(), 0, -1)
        if not members:
            return []
        ids = [m.decode("utf-8", "replace") if isinstance(m, bytes) else str(m) for m in members]
        # one slot (the namespace's hash tag): a single MGET on a cluster too
        blobs = await async_redis_call(client.mget, [keys.instance_key(i) for i in ids])
    finally:
        if owned:
            await async_close_client(client)
    records = [decode_record(blob) for blob in blobs]
    return sorted((r for r in records if r is not None), key=lambda r: r.id)
