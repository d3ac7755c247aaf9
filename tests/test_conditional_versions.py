"""Sync only: ``add()``/``incr()`` when the tag versions cannot be read.

The conditional writes are one generated pair (``_async/conditional.py``); this runs the
sync half. The async half of this test made redis-py's asyncio cluster client leave
connections to the paused node unclosed after its timeout: they were collected later, in
whatever test ran then, as a ResourceWarning (a failure there).
"""

from __future__ import annotations

import pytest

from stratacache import Cache, RedisUnavailableError
from stratacache._keys import KeySpace
from stratacache._primitives import RedisCluster
from stratacache.testing import RedisClusterProcesses

NS = "condv"


@pytest.mark.slow
def test_incr_and_add_raise_when_the_tag_versions_cannot_be_read() -> None:
    # a private cluster: the master owning the namespace epoch is paused, the entry's
    # own master answers. Whether the entry is live cannot be told: a typed error, not
    # KeyError (incr) or an overwrite (add).
    keys = KeySpace(NS)
    with RedisClusterProcesses(3) as cluster:
        raw = RedisCluster.from_url(cluster.url)
        try:

            def owner(name: str) -> int:
                return int(raw.get_node_from_key(name).port)

            epoch_port = owner(keys.meta_key("epoch"))
            name = next(
                n for n in (f"n:{i}" for i in range(200)) if owner(keys.data_key(n)) != epoch_port
            )
            writer = Cache(cluster.url, cluster=True, namespace=NS, redis_timeout=2.0)
            try:
                writer.set(name, 1)
            finally:
                writer.close()
            # a fresh instance knows no versions: it must read them from Redis
            cache = Cache(cluster.url, cluster=True, namespace=NS, redis_timeout=0.2)
            [node] = [n for n in cluster.nodes if n.port == epoch_port]
            node.pause()
            try:
                with pytest.raises(RedisUnavailableError):
                    cache.incr(name)
                with pytest.raises(RedisUnavailableError):
                    cache.add(name, 9)
            finally:
                node.resume()
                cache.close()
            assert raw.get(keys.data_key(name)) is not None  # nothing overwrote it
        finally:
            raw.close()
