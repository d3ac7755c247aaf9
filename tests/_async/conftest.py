"""Fixtures shared by the tests of this folder (the sync twin is generated)."""

from __future__ import annotations

import pytest

from stratacache._primitives import AsyncRedis, AsyncRedisCluster


@pytest.fixture
async def raw(target: tuple[str, bool]):
    """A plain redis-py client on the test's server, to look behind the cache."""
    url, cluster = target
    client = AsyncRedisCluster.from_url(url) if cluster else AsyncRedis.from_url(url)
    yield client
    await client.aclose()
