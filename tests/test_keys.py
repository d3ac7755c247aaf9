"""Keys: validation, the Redis layout (injective, Cluster-slot aware), globs, decorator keys."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import functools
import itertools
import re
import uuid
import zoneinfo
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from stratacache._errors import InvalidKeyError, StratacacheError
from stratacache._keys import (
    HASH_THRESHOLD,
    MAX_KEY_LENGTH,
    KeyMaker,
    KeySpace,
    glob_match,
    make_key,
    validate_key,
    validate_lock_name,
    validate_tag,
)

keys = st.text(min_size=1, max_size=300)
tricky_keys = st.text(alphabet="%{}7BD25:ab*?[]\\^-é\x00", min_size=1, max_size=12)
any_keys = keys | tricky_keys


def slot(redis_key: str) -> int:
    return int(key_slot(redis_key.encode("utf-8")))


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("validate", [validate_key, validate_tag, validate_lock_name])
def test_valid_keys_are_returned(validate: Any) -> None:
    for key in ("a", "user:{42}", "%", "x" * MAX_KEY_LENGTH, "é\x00\n\t", "🔑", " "):
        assert validate(key) == key


@pytest.mark.parametrize("validate", [validate_key, validate_tag, validate_lock_name])
@pytest.mark.parametrize("bad", [b"key", 1, None, ("a",), 1.5])
def test_non_str_keys_are_a_type_error(validate: Any, bad: Any) -> None:
    with pytest.raises(TypeError, match="must be a str"):
        validate(bad)


@pytest.mark.parametrize("validate", [validate_key, validate_tag, validate_lock_name])
@pytest.mark.parametrize(
    ("bad", "message"),
    [("", "empty"), ("x" * (MAX_KEY_LENGTH + 1), "limit"), ("a\ud800b", "surrogate")],
)
def test_unusable_keys_are_invalid(validate: Any, bad: str, message: str) -> None:
    with pytest.raises(InvalidKeyError, match=message) as info:
        validate(bad)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, StratacacheError)


def test_str_subclasses_become_plain_str() -> None:
    class Loud(str):
        def __str__(self) -> str:
            return "LOUD"

    key = validate_key(Loud("quiet"))
    assert type(key) is str
    assert key == "quiet"


# -- layout --------------------------------------------------------------------------------


def test_layout() -> None:
    space = KeySpace("app")
    assert space.namespace == "app"
    assert space.data_key("user:1") == "app:v1:d:{user:1}"
    assert space.lease_key("user:1") == "app:v1:l:{user:1}"
    assert space.tag_key("team:7") == "app:v1:t:{team:7}"
    assert space.meta_key("epoch") == "app:v1:m:{app}:epoch"
    assert space.fence_key("user:1") == "app:v1:f:{user:1}"
    assert space.lock_key("job:7") == "app:v1:k:{job:7}"
    assert space.fence_counter_key("job:7") == "app:v1:c:{job:7}"
    assert space.channel() == "app:v1:bus"
    assert repr(space) == "KeySpace('app')"


def test_braces_and_percent_are_escaped() -> None:
    space = KeySpace("app")
    assert space.data_key("a{b}c%") == "app:v1:d:{a%7Bb%7Dc%25}"
    assert space.data_key("%7B") == "app:v1:d:{%257B}"
    assert space.data_key("{") != space.data_key("%7B")
    assert space.tag_key("}") == "app:v1:t:{%7D}"


def test_data_keys_is_data_key_of_each() -> None:
    space = KeySpace("app")
    keys = ["user:1", "a{b}c%", "%7B", "x" * HASH_THRESHOLD, "x" * (HASH_THRESHOLD + 1), "é"]
    keys.append("%" * (HASH_THRESHOLD // 2 + 1))  # short, but too long once escaped
    assert space.data_keys(keys) == [space.data_key(key) for key in keys]


@pytest.mark.parametrize(
    "namespace", ["", "a:b", "a{b", "b}", "a b", "a*", "ns\n", "é", "x" * 65, "a?", "[a]"]
)
def test_bad_namespaces_are_rejected(namespace: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        KeySpace(namespace)


def test_namespace_must_be_a_str() -> None:
    with pytest.raises(TypeError):
        KeySpace(b"app")  # type: ignore[arg-type]


def test_meta_names_are_restricted() -> None:
    space = KeySpace("app")
    for bad in ("", "a:b", "{x}", "a*"):
        with pytest.raises(ValueError):
            space.meta_key(bad)


def test_layout_is_injective_on_small_keys_exhaustively() -> None:
    alphabet = "%{}7BD25:a"
    seen: dict[str, tuple[str, str]] = {}
    for namespace in ("a", "a.b", "b"):
        space = KeySpace(namespace)
        for size in range(1, 4):
            for chars in itertools.product(alphabet, repeat=size):
                key = "".join(chars)
                for kind, redis_key in (
                    ("d", space.data_key(key)),
                    ("l", space.lease_key(key)),
                    ("f", space.fence_key(key)),
                    ("t", space.tag_key(key)),
                    ("k", space.lock_key(key)),
                    ("c", space.fence_counter_key(key)),
                ):
                    assert redis_key not in seen, (redis_key, seen.get(redis_key))
                    seen[redis_key] = (namespace, kind + key)


@given(a=st.tuples(st.sampled_from(["a", "a.b", "b", "a-b"]), any_keys), b=any_keys)
def test_distinct_namespace_and_key_give_distinct_data_keys(a: tuple[str, str], b: str) -> None:
    namespace, key = a
    for other_namespace in ("a", "a.b", "b", "a-b"):
        if (namespace, key) != (other_namespace, b):
            assert KeySpace(namespace).data_key(key) != KeySpace(other_namespace).data_key(b)


def test_colon_in_key_cannot_imitate_a_namespace() -> None:
    # namespaces cannot hold ':' so "a:b" + "c" is not even expressible; a key with
    # colons stays inside the hash tag of its own namespace
    assert KeySpace("a").data_key("b:c") == "a:v1:d:{b:c}"
    assert KeySpace("a").data_key("b:c") != KeySpace("ab").data_key("c")


@given(key=any_keys)
def test_data_and_lease_keys_share_a_cluster_slot(key: str) -> None:
    space = KeySpace("app")
    assert slot(space.data_key(key)) == slot(space.lease_key(key))


def test_data_and_lease_keys_share_a_slot_for_hashed_and_braced_keys() -> None:
    space = KeySpace("app")
    for key in ("{x}", "}{", "{}", "a{b}", "x" * 1000, "{" * 300):
        assert slot(space.data_key(key)) == slot(space.lease_key(key))
    # the slot is decided by the user key, not by the namespace
    assert slot(space.data_key("k")) == slot("k")
    assert slot(KeySpace("other").data_key("k")) == slot("k")


@given(key=any_keys)
def test_fence_and_lock_keys_share_a_slot_with_their_partners(key: str) -> None:
    space = KeySpace("app")
    # a fenced write touches data, lease and fence key; an acquisition lock and counter
    assert slot(space.fence_key(key)) == slot(space.data_key(key))
    assert slot(space.lock_key(key)) == slot(space.fence_counter_key(key))


def test_fence_and_lock_keys_share_a_slot_for_hashed_and_braced_names() -> None:
    space = KeySpace("app")
    for key in ("{x}", "}{", "{}", "a{b}", "x" * 1000, "{" * 300):
        assert slot(space.fence_key(key)) == slot(space.data_key(key)) == slot(space.lease_key(key))
        assert slot(space.lock_key(key)) == slot(space.fence_counter_key(key))
    assert space.lock_key("x" * 1000) != space.lock_key("x" * 1001)
    assert re.fullmatch(r"app:v1:k:\{%h[0-9a-f]{64}\}", space.lock_key("x" * 1000))


@given(a=any_keys, b=any_keys)
def test_new_key_kinds_are_injective_and_distinct_from_the_others(a: str, b: str) -> None:
    space = KeySpace("app")

    def kinds(key: str) -> dict[str, str]:
        return {
            "d": space.data_key(key),
            "l": space.lease_key(key),
            "f": space.fence_key(key),
            "t": space.tag_key(key),
            "k": space.lock_key(key),
            "c": space.fence_counter_key(key),
        }

    left, right = kinds(a), kinds(b)
    assert len(set(left.values())) == len(left)  # one name, six distinct Redis keys
    for kind in ("f", "k", "c"):
        for other, redis_key in right.items():
            same = kind == other and a == b
            assert (left[kind] == redis_key) == same, (kind, other, a, b)
    # none of them is mistaken for a data key (pattern invalidation reads data keys only)
    assert space.user_key(left["f"]) is None
    assert space.user_key(left["k"]) is None
    assert space.user_key(left["c"]) is None


def test_long_keys_are_hashed() -> None:
    space = KeySpace("app")
    at_limit = "x" * HASH_THRESHOLD
    assert space.data_key(at_limit) == "app:v1:d:{" + at_limit + "}"
    long_key = "x" * (HASH_THRESHOLD + 1)
    hashed = space.data_key(long_key)
    assert re.fullmatch(r"app:v1:d:\{%h[0-9a-f]{64}\}", hashed)
    assert space.lease_key(long_key).endswith(hashed[len("app:v1:d:") :])
    # escaping can push a key over the threshold
    assert "%h" in space.data_key("{" * (HASH_THRESHOLD // 3 + 1))
    assert space.data_key(long_key) != space.data_key(long_key + "y")
    assert len(space.data_key("é" * MAX_KEY_LENGTH)) < 100


def test_a_hashed_form_never_equals_a_plain_key() -> None:
    space = KeySpace("app")
    long_key = "x" * (HASH_THRESHOLD + 1)
    body = space.data_key(long_key)[len("app:v1:d:{") : -1]
    assert space.data_key(body) != space.data_key(long_key)  # '%' of '%h' gets escaped


@given(key=any_keys)
def test_user_key_inverts_data_key(key: str) -> None:
    space = KeySpace("app")
    data_key = space.data_key(key)
    recovered = space.user_key(data_key)
    if data_key.startswith("app:v1:d:{%h"):
        assert recovered is None
    else:
        assert recovered == key
        assert space.user_key(data_key.encode()) == key


def test_user_key_of_foreign_keys_is_none() -> None:
    space = KeySpace("app")
    for foreign in (
        "other:v1:d:{a}",
        "app:v1:l:{a}",
        "app:v2:d:{a}",
        "app:v1:d:{a%7}",
        "app:v1:d:{a%}",
        "app:v1:d:{}",
        "app:v1:d:{a{b}",
        b"app:v1:d:{\xff}",
    ):
        assert space.user_key(foreign) is None


# -- globs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("glob", "key", "expected"),
    [
        ("user:*", "user:1", True),
        ("user:*", "users", False),
        ("h?llo", "hello", True),
        ("h?llo", "hllo", False),
        ("h[ae]llo", "hallo", True),
        ("h[ae]llo", "hillo", False),
        ("h[^e]llo", "hallo", True),
        ("h[^e]llo", "hello", False),
        ("h[a-b]llo", "hbllo", True),
        ("h[b-a]llo", "hbllo", True),
        ("a\\*b", "a*b", True),
        ("a\\*b", "axb", False),
        ("{*}", "{x}", True),
        ("?", "é", True),
        ("a[\\]]b", "a]b", True),
        ("*", "", True),
        ("a[]b", "ab", False),
    ],
)
def test_glob_match(glob: str, key: str, expected: bool) -> None:
    assert glob_match(glob, key) is expected


@pytest.mark.parametrize("bad", ["a\\", "a[bc", "[^"])
def test_malformed_globs_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        glob_match(bad, "a")
    with pytest.raises(ValueError):
        KeySpace("app").pattern(bad)


def test_patterns() -> None:
    space = KeySpace("app")
    assert space.pattern("user:*") == "app:v1:d:{user:*}"
    assert space.pattern("a{b}*") == "app:v1:d:{a%7Bb%7D*}"
    assert space.pattern("a?b") == "app:v1:d:{a*b}"  # '?' may be an escape or multibyte
    assert space.pattern("a[bc]d") == "app:v1:d:{a[bc]d}"
    assert space.pattern("a[^b]d") == "app:v1:d:{a*d}"
    assert space.pattern("a[!-~]d") == "app:v1:d:{a*d}"  # the range holds '%', '{', '}'
    assert space.pattern("a**?*b") == "app:v1:d:{a*b}"
    assert space.pattern("a\\*b") == "app:v1:d:{a\\*b}"
    assert space.pattern("exact") == space.data_key("exact")


def _redis_pattern_regex(pattern: str) -> re.Pattern[bytes]:
    """Redis glob semantics, for the subset of syntax that ``KeySpace.pattern`` emits."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(re.escape(pattern[i + 1].encode()))
            i += 2
        elif c == "*":
            out.append(b".*")
            i += 1
        elif c == "[":
            end = pattern.index("]", i)
            out.append(b"[" + pattern[i + 1 : end].encode() + b"]")
            i = end + 1
        else:
            out.append(re.escape(c.encode()))
            i += 1
    return re.compile(b"".join(out), re.DOTALL)


globs = st.lists(
    st.sampled_from(["*", "?", "[ab]", "[^a]", "[%-}]", "a", "b", "{", "}", "%", "7B", "é", "\\*"]),
    max_size=6,
).map("".join)


@settings(max_examples=500)
@given(glob=globs, key=tricky_keys)
def test_pattern_matches_every_data_key_whose_user_key_matches(glob: str, key: str) -> None:
    space = KeySpace("app")
    if glob_match(glob, key) and "%h" not in space.data_key(key):
        regex = _redis_pattern_regex(space.pattern(glob))
        assert regex.fullmatch(space.data_key(key).encode())


def test_pattern_with_a_real_redis_scan(redis_url: str) -> None:
    space, other = KeySpace("app"), KeySpace("app2")
    user_keys = ["user:1", "user:2", "user:{3}", "user:%", "usr:1", "user:é", "x" * 300]
    client = redis.Redis.from_url(redis_url)
    try:
        for key in user_keys:
            client.set(space.data_key(key), b"1")
            client.set(other.data_key(key), b"1")
        for glob in ("user:*", "user:?", "user:{*", "*"):
            found = {space.user_key(k) for k in client.scan_iter(match=space.pattern(glob))}
            found.discard(None)  # hashed keys cannot be recovered
            expected = {k for k in user_keys if glob_match(glob, k) and len(k) <= HASH_THRESHOLD}
            assert {k for k in found if k is not None and glob_match(glob, k)} == expected
    finally:
        client.close()


# -- decorator keys ------------------------------------------------------------------------


def f(a: Any, b: Any = 2) -> None: ...


def many(*args: Any, **kwargs: Any) -> None: ...


def test_default_key_shape() -> None:
    maker = KeyMaker(f)
    assert maker((1, "x"), {}) == f"{__name__}.f:(1, 'x')"
    assert KeyMaker(f, prefix="users")((1,), {}) == "users:(1, 2)"


def test_binding_normalises_the_call() -> None:
    maker = KeyMaker(f)
    key = maker((1, 2), {})
    assert maker((1,), {}) == key
    assert maker((1,), {"b": 2}) == key
    assert maker((), {"a": 1, "b": 2}) == key
    assert maker((), {"b": 2, "a": 1}) == key
    assert maker((1, 3), {}) != key


def test_var_args_and_keyword_only() -> None:
    maker = KeyMaker(many)
    assert maker((1, 2), {"y": 1, "x": 2}) == maker((1, 2), {"x": 2, "y": 1})
    assert maker((1, 2), {}) != maker((1,), {"x": 2})

    def kw_only(a: Any, *, b: Any = 5) -> None: ...

    assert KeyMaker(kw_only)((1,), {}) == KeyMaker(kw_only)((1,), {"b": 5})


def test_arguments_that_do_not_fit_are_a_type_error() -> None:
    maker = KeyMaker(f)
    with pytest.raises(TypeError):
        maker((), {})
    with pytest.raises(TypeError):
        maker((1, 2, 3), {})
    with pytest.raises(TypeError):
        maker((1,), {"c": 1})


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("a:b", "c"), ("a", "b:c")),
        ((1, 2), ("1", 2)),
        ((1, 2), (1.0, 2)),
        ((1, 2), (True, 2)),
        ((None, 2), ("None", 2)),
        (((1,), 2), ([1], 2)),
        (({}, 2), (set(), 2)),
        (({1}, 2), (frozenset({1}), 2)),
        ((b"a", 2), ("a", 2)),
        (("a, 'b'", 2), ("a", "b")),
        ((0.0, 2), (-0.0, 2)),
        (({"a": 1}, 2), ((("a", 1),), 2)),
    ],
)
def test_distinct_arguments_give_distinct_keys(
    left: tuple[Any, ...], right: tuple[Any, ...]
) -> None:
    maker = KeyMaker(f)
    assert maker(left, {}) != maker(right, {})


def test_dicts_and_sets_are_keyed_independently_of_order() -> None:
    maker = KeyMaker(f)
    assert maker(({"a": 1, "b": 2},), {}) == maker(({"b": 2, "a": 1},), {})
    assert maker(({"x", "y", "z"},), {}) == maker(({"z", "y", "x"},), {})


def canon(value: Any) -> Any:
    """A canonical, type-aware form: equal iff the values must share a key."""
    cls = type(value)
    if cls is float:
        return ("float", repr(value))
    if cls in (tuple, list):
        return (cls.__name__, tuple(canon(item) for item in value))
    if cls is dict:
        return ("dict", tuple(sorted(((canon(k), canon(v)) for k, v in value.items()), key=repr)))
    if cls in (set, frozenset):
        return (cls.__name__, tuple(sorted((canon(item) for item in value), key=repr)))
    return (cls.__name__, value)


arg_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("',()[]{}:# \\")),
    st.binary(max_size=8),
)
arg_hashables = st.recursive(
    arg_scalars, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=6
)
arg_values = st.recursive(
    arg_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(arg_hashables, inner, max_size=3),
        st.frozensets(arg_hashables, max_size=3),
        st.sets(arg_hashables, max_size=3),
    ),
    max_leaves=10,
)
arg_tuples = st.lists(arg_values, max_size=3).map(tuple)


@settings(max_examples=500)
@given(left=arg_tuples, right=arg_tuples)
def test_keys_are_injective(left: tuple[Any, ...], right: tuple[Any, ...]) -> None:
    maker = KeyMaker(many)
    same_key = maker(left, {}) == maker(right, {})
    assert same_key == (canon(left) == canon(right))


@settings(max_examples=300)
@given(a=arg_values, b=arg_values)
def test_fast_and_bound_paths_agree(a: Any, b: Any) -> None:
    maker = KeyMaker(f)
    key = maker((a, b), {})
    assert maker((), {"a": a, "b": b}) == key
    assert maker((a,), {"b": b}) == key
    assert len(key) <= MAX_KEY_LENGTH


def test_more_argument_types() -> None:
    class Color(enum.Enum):
        RED = 1

    class Size(enum.IntEnum):
        S = 1

    maker = KeyMaker(f)
    paris = dt.datetime(2024, 7, 1, 12, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    fixed = paris.replace(tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert maker((paris,), {}) == maker((fixed,), {})
    assert maker((paris,), {}) != maker((paris.replace(tzinfo=None),), {})
    assert maker((Color.RED,), {}) != maker((1,), {})
    assert maker((Size.S,), {}) != maker((1,), {})
    assert "Color.RED" in maker((Color.RED,), {})
    ident = uuid.UUID(int=5)
    assert maker((ident,), {}) == maker((uuid.UUID(int=5),), {})
    assert maker((decimal.Decimal("1.0"),), {}) != maker((decimal.Decimal("1.00"),), {})
    for value in (dt.date(2024, 1, 1), dt.time(1, 2), dt.timedelta(3), 10**5000):
        assert maker((value,), {}) == maker((value,), {})


def test_str_and_int_subclasses_are_keyed_as_their_base() -> None:
    class Name(str):
        def __repr__(self) -> str:
            return "no"

    class Number(int):
        pass

    maker = KeyMaker(f)
    assert maker((Name("x"),), {}) == maker(("x",), {})
    assert maker((Number(3),), {}) == maker((3,), {})


def test_unsupported_arguments_ask_for_key() -> None:
    maker = KeyMaker(f)
    with pytest.raises(TypeError, match=r"argument 'a' of type .*object.*key="):
        maker((object(),), {})
    with pytest.raises(TypeError, match="argument 'b'"):
        maker((1, [1, {"x": object()}]), {})


def test_methods_taking_self_need_a_key() -> None:
    class Repo:
        def __init__(self, region: str) -> None:
            self.region = region

        def load(self, item_id: int) -> None: ...

    with pytest.raises(TypeError, match=r"Repo\.load takes self.*key="):
        KeyMaker(Repo.load)
    with pytest.raises(TypeError, match="key="):
        make_key(Repo.load, (Repo("us"), 1), {})
    maker = KeyMaker(Repo.load, "repo:{self.region}:{item_id}")
    assert maker((Repo("us"), 1), {}) == "repo:us:1"
    assert maker((Repo("eu"), 1), {}) == "repo:eu:1"
    by_callable = KeyMaker(Repo.load, lambda self, item_id: f"{self.region}/{item_id}")
    assert by_callable((Repo("eu"), 1), {}) == "eu/1"


def test_classes_defined_in_functions_have_no_default_key() -> None:
    class Base:
        @classmethod
        def build(cls, n: int) -> None: ...

        @staticmethod
        def parse(text: str) -> None: ...

    class Sub(Base):
        pass

    maker = KeyMaker(Base.__dict__["build"].__func__)
    # classes made inside a function share a qualified name: no identity, no key
    assert "<locals>" in Sub.__qualname__
    with pytest.raises(TypeError, match="defined inside a function"):
        maker((Sub, 2), {})
    assert KeyMaker(Base.parse)(("x",), {}).endswith(".parse:('x',)")


class _Shape:
    """Module-level classes have a stable qualified name."""

    @classmethod
    def unit(cls, n: int) -> None: ...


class _Square(_Shape):
    pass


def test_module_level_classes_get_stable_keys() -> None:
    maker = KeyMaker(_Shape.__dict__["unit"].__func__)
    assert maker((_Shape, 1), {}) == f"{__name__}._Shape.unit:(<class {__name__}._Shape>, 1)"
    assert maker((_Square, 1), {}) == f"{__name__}._Shape.unit:(<class {__name__}._Square>, 1)"
    assert maker((_Square, 1), {}) != maker((_Shape, 1), {})  # subclasses may answer apart
    assert maker.skip == 0


def test_callables_without_a_name_of_their_own_need_a_key() -> None:
    class Loader:
        def __init__(self, region: str) -> None:
            self.region = region

        def __call__(self, item_id: int) -> None: ...

        def load(self, item_id: int) -> None: ...

    for func in (Loader("us"), Loader("us").load, functools.partial(f, 1), _Shape.unit):
        with pytest.raises(TypeError, match="key="):
            KeyMaker(func)
    # the prefix is what tells this partial apart: its bound arguments are not in the key
    assert KeyMaker(functools.partial(f, 1), prefix="p")((3,), {}) == "p:(3,)"
    assert KeyMaker(Loader("us").load, "l:{item_id}")((3,), {}) == "l:3"
    assert KeyMaker(dict.fromkeys)((1,), {})  # a builtin bound to a class names itself


def test_long_argument_lists_are_hashed() -> None:
    maker = KeyMaker(f)
    key = maker(("x" * 5000,), {})
    assert len(key) <= MAX_KEY_LENGTH
    assert re.fullmatch(rf"{re.escape(__name__)}\.f:#[0-9a-f]{{64}}", key)
    assert maker(("x" * 5000,), {}) == key
    assert maker(("x" * 5001,), {}) != key


def test_templates() -> None:
    def load(user_id: int, org: str = "acme") -> None: ...

    assert KeyMaker(load, "user:{user_id}")((42,), {}) == "user:42"
    assert KeyMaker(load, "{org}/{user_id}")((), {"user_id": 1}) == "acme/1"

    class Account:
        id = 7

        def get(self, day: str) -> None: ...

    assert KeyMaker(Account.get, "acct:{self.id}:{day}")((Account(), "mon"), {}) == "acct:7:mon"

    def flexible(**kwargs: Any) -> None: ...

    assert KeyMaker(flexible, "k:{x}")((), {"x": 1}) == "k:1"
    with pytest.raises(InvalidKeyError, match="failed"):
        KeyMaker(flexible, "k:{x}")((), {})


def test_bad_templates_fail_when_the_maker_is_built() -> None:
    def load(user_id: int) -> None: ...

    with pytest.raises(ValueError, match="not parameters"):
        KeyMaker(load, "user:{uid}")
    with pytest.raises(ValueError, match="parameter names"):
        KeyMaker(load, "user:{}")
    with pytest.raises(ValueError, match="parameter names"):
        KeyMaker(load, "user:{0}")
    with pytest.raises(ValueError, match="prefix"):
        KeyMaker(load, "user:{user_id}", prefix="p")
    with pytest.raises(TypeError):
        KeyMaker(load, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        KeyMaker("not callable")  # type: ignore[arg-type]


def test_template_results_are_validated() -> None:
    def load(name: str) -> None: ...

    maker = KeyMaker(load, "{name}")
    with pytest.raises(InvalidKeyError, match="empty"):
        maker(("",), {})
    with pytest.raises(InvalidKeyError):
        maker(("x" * (MAX_KEY_LENGTH + 1),), {})


def test_callable_keys() -> None:
    def load(a: int, b: int = 1) -> None: ...

    assert KeyMaker(load, lambda a, b=1: f"sum:{a + b}")((1,), {"b": 2}) == "sum:3"
    with pytest.raises(TypeError, match="not str"):
        KeyMaker(load, lambda a, b=1: a)((1,), {})
    with pytest.raises(InvalidKeyError):
        KeyMaker(load, lambda a, b=1: "")((1,), {})


def test_make_key_caches_its_makers() -> None:
    assert make_key(f, (1,), {}) == KeyMaker(f)((1,), {})
    assert make_key(f, (1,), {}, prefix="p") == "p:(1, 2)"
    assert make_key(f, (1,), {}, template="t:{a}") == "t:1"


def test_builtins_without_a_signature_still_get_keys() -> None:
    maker = KeyMaker(dict.fromkeys)
    assert maker((1,), {}) != maker((2,), {})


def test_memo_never_confuses_equal_values_of_different_types() -> None:
    maker = KeyMaker(f)
    keys = [maker((value,), {}) for value in (1, True, 1.0, 1, "1", -0.0, 0, 0.0, False)]
    assert len(set(keys)) == 8  # 1 is repeated
    assert maker._memo is not None
    assert 1 in maker._memo  # a single argument is its own memo key
    assert all(type(arg) in (int, str) for arg in maker._memo)


def test_memo_is_bounded_and_skips_self_when_the_template_does_not_name_it() -> None:
    class Service:
        def get(self, n: int) -> None: ...

    maker = KeyMaker(Service.get, "n:{n}")
    assert maker.skip == 1
    for n in range(5000):
        assert maker((Service(), n), {}) == f"n:{n}"
    assert maker._memo is not None
    assert 0 < len(maker._memo) <= 4096
    assert all(type(arg) is int for arg in maker._memo)  # n alone, not (self, n)
    assert KeyMaker(Service.get, "{self}:{n}").skip == 0


def test_no_memo_when_the_key_may_change_for_the_same_arguments() -> None:
    def with_list_default(a: int, opts: list[int] = []) -> None:  # noqa: B006
        ...

    assert KeyMaker(with_list_default)._memo is None
    assert KeyMaker(f, lambda a, b=2: str(a))._memo is None

    class Account:
        def get(self, day: str) -> None: ...

    # the instance is part of the key: the memo stays (it only takes str/int tuples, and
    # the instance is neither) but is never used for these calls
    maker = KeyMaker(Account.get, "{self.day}:{day}")
    assert maker.skip == 0
    account = Account()
    account.day = "x"  # type: ignore[attr-defined]
    assert maker((account, "mon"), {}) == "x:mon"
    account.day = "y"  # type: ignore[attr-defined]
    assert maker((account, "mon"), {}) == "y:mon"
    assert not maker._memo
