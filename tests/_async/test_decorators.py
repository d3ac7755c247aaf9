"""``@cache.cached`` on methods: instances never share entries by accident.

Written once for AsyncCache; Cache runs the generated twin (where hits go through the
L1's memoized callable, compiled or pure, depending on the build under test).
"""

from __future__ import annotations

import pytest

from stratacache import AsyncCache

NS = "t-decorators"


@pytest.fixture
async def cache(target: tuple[str, bool]):
    url, cluster = target
    c = AsyncCache(url, cluster=cluster, namespace=NS, redis_timeout=2.0)
    yield c
    await c.close()


@pytest.fixture
async def l1_cache():
    c = AsyncCache(namespace=NS)
    yield c
    await c.close()


async def test_a_method_without_a_key_is_refused_at_decoration(l1_cache: AsyncCache) -> None:
    with pytest.raises(TypeError, match=r"Repo\.load takes self.*key="):

        class Repo:
            @l1_cache.cached()
            async def load(self, item_id: int):
                return item_id


async def test_a_method_keyed_on_the_instance_keeps_instances_apart(cache: AsyncCache) -> None:
    calls = []

    class Repo:
        def __init__(self, region: str) -> None:
            self.region = region

        @cache.cached(key="repo:{self.region}:{item_id}")
        async def load(self, item_id: int):
            calls.append((self.region, item_id))
            return f"{self.region}:{item_id}"

    us, eu = Repo("us"), Repo("eu")
    assert await us.load(1) == "us:1"
    assert await eu.load(1) == "eu:1"  # the case: was "us:1"
    assert await us.load(1) == "us:1"
    assert await eu.load(item_id=1) == "eu:1"
    assert calls == [("us", 1), ("eu", 1)]
    assert Repo.load.cache_key(eu, 1) == "repo:eu:1"
    assert await Repo.load.invalidate(eu, 1) is True
    assert await eu.load(1) == "eu:1"
    assert await us.load(1) == "us:1"
    assert calls == [("us", 1), ("eu", 1), ("eu", 1)]


async def test_a_method_with_a_key_callable(l1_cache: AsyncCache) -> None:
    class Repo:
        def __init__(self, region: str) -> None:
            self.region = region

        @l1_cache.cached(key=lambda self, item_id: f"{self.region}/{item_id}")
        async def load(self, item_id: int):
            return f"{self.region}:{item_id}"

    assert await Repo("us").load(1) == "us:1"
    assert await Repo("eu").load(1) == "eu:1"
    assert await l1_cache.get("eu/1") == "eu:1"


async def test_a_classmethod_keys_on_its_class(l1_cache: AsyncCache) -> None:
    calls = []

    class Shape:
        sides = 0

        @classmethod
        @l1_cache.cached()
        async def below(cls, n: int):
            calls.append((cls.__name__, n))
            return (cls.sides, n)

        @l1_cache.cached()  # above @classmethod: the same
        @classmethod
        async def above(cls, n: int):
            calls.append((cls.__name__, n))
            return (cls.sides, n)

    # module.qualname of a class defined in a test function is not an identity: the
    # classes below are made module-level by giving them a qualified name of their own
    class Square(Shape):
        sides = 4

    Shape.__qualname__ = "DecoratorShape"
    Square.__qualname__ = "DecoratorSquare"
    for method in ("below", "above"):
        calls.clear()
        assert await getattr(Shape, method)(1) == (0, 1)
        assert await getattr(Square, method)(1) == (4, 1)  # not Shape's entry
        assert await getattr(Square(), method)(1) == (4, 1)
        assert await getattr(Shape, method)(1) == (0, 1)
        assert calls == [("Shape", 1), ("Square", 1)]
    assert Shape.below.cache_key(Square, 1) != Shape.below.cache_key(Shape, 1)


async def test_a_classmethod_of_a_class_made_in_a_function_asks_for_a_key(
    l1_cache: AsyncCache,
) -> None:
    class Local:
        @classmethod
        @l1_cache.cached()
        async def make(cls, n: int):
            return n

    with pytest.raises(TypeError, match=r"defined inside a function.*key="):
        await Local.make(1)


async def test_a_staticmethod_is_keyed_like_a_function(l1_cache: AsyncCache) -> None:
    calls = []

    class Parser:
        @staticmethod
        @l1_cache.cached()
        async def below(text: str):
            calls.append(text)
            return text.upper()

        @l1_cache.cached()
        @staticmethod
        async def above(text: str):
            calls.append(text)
            return text.upper()

    for method in ("below", "above"):
        calls.clear()
        assert await getattr(Parser, method)("a") == "A"
        assert await getattr(Parser(), method)("a") == "A"
        assert calls == ["a"]


async def test_bound_methods_and_partials_ask_for_a_key(l1_cache: AsyncCache) -> None:
    import functools

    class Repo:
        def __init__(self, region: str) -> None:
            self.region = region

        async def load(self, item_id: int):
            return f"{self.region}:{item_id}"

    with pytest.raises(TypeError, match="key="):
        l1_cache.cached()(Repo("us").load)
    with pytest.raises(TypeError, match="key="):
        l1_cache.cached()(functools.partial(Repo.load, Repo("us")))
    load_eu = l1_cache.cached(key="eu:{item_id}")(Repo("eu").load)
    assert await load_eu(1) == "eu:1"
