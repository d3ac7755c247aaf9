"""Cache keys: validation, the Redis key layout of a namespace, and decorator keys.

Redis layout of namespace ``ns`` (``v1`` is the layout version: a change of layout gets a
new one, so new code never reads bytes laid out differently)::

    ns:v1:d:{K}       entry of user key K         (data_key)
    ns:v1:l:{K}       lease for that entry        (lease_key; same Cluster slot as data_key)
    ns:v1:e:{K}       keys that depend on K       (dependents_key; same slot as data_key)
    ns:v1:f:{K}       highest fencing token       (fence_key; same Cluster slot as data_key)
                      a fenced write to K carried
    ns:v1:t:{T}       version of tag T            (tag_key)
    ns:v1:z:{T}       keys written with tag T, as (tag_members_key; same slot as tag_key)
                      the K of their data keys
    ns:v1:r:{T}:X     members being reclaimed     (tag_reclaim_key; X names the invalidation)
    ns:v1:k:{N}       distributed lock named N    (lock_key)
    ns:v1:c:{N}       fencing-token counter of N  (fence_counter_key; same slot as lock_key)
    ns:v1:m:{ns}:NAME namespace-level value       (meta_key; all of a namespace in one slot)
    ns:v1:i:{ns}      ids of the instances that   (instance_index_key; same slot as meta_key)
                      publish a heartbeat record,
                      scored by expiry (ms)
    ns:v1:i:{ns}:ID   heartbeat record of one     (instance_key; same slot: one MGET reads all)
                      instance (msgpack, PX TTL)
    ns:v1:b:{N/S}:p   state of shard S of Bloom   (bloom_keys; ``_bloom.py``: current and
                      filter N                    building generation, rebuild token,
                                                  parameters)
    ns:v1:b:{N/S}:a   the bit arrays of the two   (bloom_keys; same slot as the state: one
    ns:v1:b:{N/S}:b   generations of that shard   script reads the state and the bits)
    ns:v1:bus         invalidation channel        (channel)

The two indexes (``e``, ``z``) are sorted sets scored by when each member expires; they
were plain sets under ``g`` and ``s`` before, and took new letters rather than a new
layout version, so that data, versions and the bus stay shared with older instances
while no command meets a key of the other type (old ``s`` sets expire by themselves;
old ``g`` sets, which had no expiry, can be deleted by hand).

``K`` / ``T`` / ``N`` is the user key / tag / lock or Bloom filter name with ``%``, ``{`` and ``}``
percent-escaped (``%25``, ``%7B``, ``%7D``), so it can sit inside a Redis Cluster hash tag
and the mapping stays injective. When the escaped form is longer than
:data:`HASH_THRESHOLD` it is replaced by ``%h`` + the SHA-256 hex of the key; ``%h`` never
occurs in an escaped key, so a hashed form never equals a plain one. Namespaces are
restricted to ``[A-Za-z0-9_.-]`` (no ``:``, no braces, no glob characters), which makes
``(namespace, kind, key) -> Redis key`` injective.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import functools
import hashlib
import inspect
import re
import string
import uuid
from collections.abc import Hashable, Iterable
from typing import Any, Callable, Optional, Union

from ._errors import InvalidKeyError

__all__ = [
    "HASH_THRESHOLD",
    "LAYOUT_VERSION",
    "MAX_KEY_LENGTH",
    "MAX_NAMESPACE_LENGTH",
    "KeyMaker",
    "KeySpace",
    "fnmatch_glob",
    "glob_match",
    "make_key",
    "validate_key",
    "validate_lock_name",
    "validate_tag",
]

MAX_KEY_LENGTH = 1024
"""Longest user key or tag, in characters."""
HASH_THRESHOLD = 200
"""Escaped keys longer than this are stored in Redis under their SHA-256."""
MAX_NAMESPACE_LENGTH = 64
LAYOUT_VERSION = "v1"

_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+\Z")
_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})
_UNESCAPE_RE = re.compile(r"%(25|7B|7D)")
_UNESCAPES = {"25": "%", "7B": "{", "7D": "}"}
_HASHED = "%h"


def _validate_str(value: object, what: str) -> str:
    if type(value) is not str:
        if not isinstance(value, str):
            raise TypeError(f"{what} must be a str, not {type(value).__name__}")
        value = str.__str__(value)  # a plain str, whatever the subclass overrides
    size = len(value)
    if not size:
        raise InvalidKeyError(f"{what} must not be empty")
    if size > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"{what} is {size} characters long; the limit is {MAX_KEY_LENGTH}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidKeyError(
                f"{what} {value!r} contains a lone surrogate and cannot be encoded as UTF-8"
            ) from None
    return value


def validate_key(key: object) -> str:
    """``key`` as a plain ``str`` if it is a usable cache key.

    Any non-empty ``str`` of at most :data:`MAX_KEY_LENGTH` characters that can be encoded
    as UTF-8 (so no lone surrogates) is a key; control characters and braces are fine.
    A non-``str`` is a ``TypeError``, anything else wrong an :class:`InvalidKeyError`.
    """
    return _validate_str(key, "cache key")


def validate_tag(tag: object) -> str:
    """``tag`` as a plain ``str`` if it is a usable tag (same rules as keys; tags are literal)."""
    return _validate_str(tag, "tag")


def validate_lock_name(name: object) -> str:
    """``name`` as a plain ``str`` if it is a usable lock name (same rules as keys)."""
    return _validate_str(name, "lock name")


def _hash_tag_body(key: str) -> str:
    """The injective, brace-free form of ``key`` that goes inside ``{...}``."""
    body = key.translate(_ESCAPES) if ("%" in key or "{" in key or "}" in key) else key
    if len(body) > HASH_THRESHOLD:
        return _HASHED + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return body


class KeySpace:
    """The Redis keys and channel of one namespace (see the module notes for the layout).

    Keys and tags passed in must already be validated (:func:`validate_key`); the methods
    do not check again, as they are on the L2 path.
    """

    __slots__ = (
        "_bloom",
        "_channel",
        "_counter",
        "_data",
        "_dependents",
        "_entry_prefix",
        "_fence",
        "_instances",
        "_lease",
        "_lock",
        "_members",
        "_meta",
        "_reclaim",
        "_tag",
        "namespace",
    )

    def __init__(self, namespace: str) -> None:
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
        if not _NAME_RE.match(namespace) or len(namespace) > MAX_NAMESPACE_LENGTH:
            raise ValueError(
                f"namespace {namespace!r} must be 1..{MAX_NAMESPACE_LENGTH} characters "
                "from A-Z a-z 0-9 _ . -"
            )
        self.namespace: str = namespace
        base = f"{namespace}:{LAYOUT_VERSION}:"
        self._data = base + "d:{"
        self._lease = base + "l:{"
        self._tag = base + "t:{"
        self._members = base + "z:{"
        self._reclaim = base + "r:{"
        self._dependents = base + "e:{"
        self._entry_prefix = base  # data and lease keys: base + "d:{" / "l:{"
        self._fence = base + "f:{"
        self._lock = base + "k:{"
        self._counter = base + "c:{"
        self._bloom = base + "b:{"
        self._meta = f"{base}m:{{{namespace}}}:"
        self._instances = f"{base}i:{{{namespace}}}"
        self._channel = base + "bus"

    def __repr__(self) -> str:
        return f"KeySpace({self.namespace!r})"

    def data_key(self, key: str) -> str:
        """The Redis key holding the entry of ``key``."""
        return self._data + _hash_tag_body(key) + "}"

    def data_keys(self, keys: Iterable[str]) -> list[str]:
        """:meth:`data_key` of each of ``keys``, in one call (``get_many``'s ``MGET``):
        a key that needs neither escaping nor hashing, the common case, costs no call."""
        data = self._data
        return [
            data + key + "}"
            if len(key) <= HASH_THRESHOLD and not ("%" in key or "{" in key or "}" in key)
            else data + _hash_tag_body(key) + "}"
            for key in keys
        ]

    def lease_key(self, key: str) -> str:
        """The Redis key of the lease on ``key``; in the same Cluster slot as its data key."""
        return self._lease + _hash_tag_body(key) + "}"

    def fence_key(self, key: str) -> str:
        """The Redis key holding the highest fencing token written to ``key``; in the same
        Cluster slot as its data key (a fenced write checks and sets both in one script)."""
        return self._fence + _hash_tag_body(key) + "}"

    def lock_key(self, name: str) -> str:
        """The Redis key of the distributed lock ``name`` (validated like a cache key)."""
        return self._lock + _hash_tag_body(name) + "}"

    def fence_counter_key(self, name: str) -> str:
        """The Redis key counting acquisitions of lock ``name`` (its fencing tokens); in the
        same Cluster slot as :meth:`lock_key` (acquiring sets one and increments the other
        in one script)."""
        return self._counter + _hash_tag_body(name) + "}"

    def bloom_keys(self, name: str, shard: int) -> tuple[str, str, str]:
        """The state key and the two generation bit arrays of shard ``shard`` of the Bloom
        filter ``name`` (validated like a cache key), all in one Cluster slot; different
        shards hash apart, so a large filter spreads over the masters. The shard number
        follows the last ``/`` inside the braces (it has none), so the layout stays
        injective whatever the name holds."""
        prefix = f"{self._bloom}{_hash_tag_body(name)}/{shard}}}:"
        return prefix + "p", prefix + "a", prefix + "b"

    def tag_key(self, tag: str) -> str:
        """The Redis key holding the state of ``tag``."""
        return self._tag + _hash_tag_body(tag) + "}"

    def tag_members_key(self, tag: str) -> str:
        """The Redis sorted set of keys written with ``tag`` since its last invalidation,
        scored by when their entries expire."""
        return self._members + _hash_tag_body(tag) + "}"

    def tag_member(self, key: str) -> str:
        """What the member set of a tag holds for ``key``: the inside of its data key's
        braces (shorter than the whole data key: members cost memory per write and tag)."""
        return _hash_tag_body(key)

    def member_data_key(self, member: Union[str, bytes]) -> str:
        """The data key of a tag member (see :meth:`tag_member`)."""
        if isinstance(member, bytes):
            member = member.decode("utf-8", "surrogatepass")
        return self._data + member + "}"

    def data_key_prefix(self) -> str:
        """What every data key starts with (``member_data_key`` adds the member and ``}``)."""
        return self._data

    def tag_reclaim_key(self, tag: str, suffix: str) -> str:
        """Where the members of ``tag`` go when an invalidation (named by a unique
        ``suffix``) moves them aside to be deleted in chunks; same slot as
        :meth:`tag_members_key`, so a RENAME moves them in O(1)."""
        return f"{self._reclaim}{_hash_tag_body(tag)}}}:{suffix}"

    def dependents_key(self, key: str) -> str:
        """The Redis sorted set of keys that depend on ``key`` (same slot as its data key),
        scored by when each dependency expires."""
        return self._dependents + _hash_tag_body(key) + "}"

    def entry_pattern(self, glob: str) -> str:
        """Like :meth:`pattern`, but matching the lease keys as well as the data keys (a
        pattern invalidation revokes the leases of loads in flight too)."""
        return self._entry_prefix + "[dl]:" + self.pattern(glob)[len(self._data) - 1 :]

    def entry_owner(self, redis_key: Union[str, bytes]) -> Optional[str]:
        """The user key of a data or lease key (as :meth:`user_key`); ``None`` otherwise."""
        if isinstance(redis_key, bytes):
            try:
                redis_key = redis_key.decode("utf-8")
            except UnicodeDecodeError:
                return None
        if redis_key.startswith(self._lease):
            redis_key = self._data + redis_key[len(self._lease) :]
        return self.user_key(redis_key)

    def meta_key(self, name: str) -> str:
        """A namespace-level key (e.g. ``"epoch"``); ``name`` is from ``[A-Za-z0-9_.-]``."""
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"meta key name {name!r} must be characters from A-Z a-z 0-9 _ . -")
        return self._meta + name

    def instance_index_key(self) -> str:
        """The sorted set of the ids of instances publishing a heartbeat record (scored by
        when their record expires, in ms); in the slot of :meth:`meta_key`."""
        return self._instances

    def instance_key(self, instance_id: str) -> str:
        """The heartbeat record of instance ``instance_id`` (any str: it follows the hash
        tag, so every record shares the slot of :meth:`instance_index_key`)."""
        return f"{self._instances}:{instance_id}"

    def channel(self) -> str:
        """The pub/sub channel of the namespace."""
        return self._channel

    def pattern(self, glob: str) -> str:
        """A ``SCAN MATCH`` pattern for the data keys whose user key matches ``glob``.

        ``glob`` uses Redis glob syntax (``*``, ``?``, ``[...]``, ``[^...]``, ``\\x``) on
        user keys. The pattern matches a *superset*: Redis matches bytes of the escaped
        form, so ``?`` and most classes widen to ``*``. Filter what SCAN returns with
        :meth:`user_key` and :func:`glob_match`. Keys stored hashed (escaped form longer
        than :data:`HASH_THRESHOLD`) match the pattern too but cannot be recovered
        (:meth:`user_key` returns ``None``): pattern invalidation cannot reach them.
        """
        parts: list[str] = []
        for token in _parse_glob(glob):
            kind = token[0]
            if kind == "lit":
                parts.extend(_redis_literal(c) for c in token[1].translate(_ESCAPES))
            elif kind == "class" and _plain_class(token):
                parts.append(_redis_class(token))
            elif not parts or parts[-1] != "*":
                parts.append("*")
        return self._data + "".join(parts) + "}"

    def user_key(self, data_key: Union[str, bytes]) -> Optional[str]:
        """The user key stored under ``data_key``; ``None`` if hashed or not one of ours."""
        if isinstance(data_key, bytes):
            try:
                data_key = data_key.decode("utf-8")
            except UnicodeDecodeError:
                return None
        if not (data_key.startswith(self._data) and data_key.endswith("}")):
            return None
        body = data_key[len(self._data) : -1]
        if not body or body.startswith(_HASHED) or "{" in body or "}" in body:
            return None
        if "%" not in body:
            return body
        if body.count("%") != len(_UNESCAPE_RE.findall(body)):
            return None
        return _UNESCAPE_RE.sub(lambda m: _UNESCAPES[m.group(1)], body)


# -- globs ---------------------------------------------------------------------------------
# Tokens: ("lit", text) | ("any",) | ("one",) | ("class", negated, ((lo, hi), ...))

_GlobToken = tuple[Any, ...]


@functools.lru_cache(maxsize=256)
def _parse_glob(glob: str) -> tuple[_GlobToken, ...]:
    if not isinstance(glob, str):
        raise TypeError(f"glob must be a str, not {type(glob).__name__}")
    tokens: list[_GlobToken] = []
    literal: list[str] = []
    i, n = 0, len(glob)

    def flush() -> None:
        if literal:
            tokens.append(("lit", "".join(literal)))
            literal.clear()

    while i < n:
        c = glob[i]
        if c == "\\":
            if i + 1 == n:
                raise ValueError(f"glob {glob!r} ends with a lone backslash")
            literal.append(glob[i + 1])
            i += 2
        elif c in "*?":
            flush()
            tokens.append(("any",) if c == "*" else ("one",))
            i += 1
        elif c == "[":
            flush()
            i += 1
            negated = i < n and glob[i] == "^"
            if negated:
                i += 1
            ranges: list[tuple[str, str]] = []
            while True:
                if i >= n:
                    raise ValueError(f"glob {glob!r} has an unterminated '['")
                c = glob[i]
                if c == "]":
                    i += 1
                    break
                if c == "\\" and i + 1 < n:
                    c = glob[i + 1]
                    i += 1
                if i + 2 < n and glob[i + 1] == "-" and glob[i + 2] != "]":
                    hi = glob[i + 2]
                    lo, hi = (c, hi) if c <= hi else (hi, c)
                    ranges.append((lo, hi))
                    i += 3
                else:
                    ranges.append((c, c))
                    i += 1
            tokens.append(("class", negated, tuple(ranges)))
        else:
            literal.append(c)
            i += 1
    flush()
    return tuple(tokens)


def _plain_class(token: _GlobToken) -> bool:
    """Whether a class matches only single ASCII characters that are never escaped."""
    if token[1]:
        return False
    for lo, hi in token[2]:
        if not (lo.isascii() and hi.isascii()) or lo in "\\]^-" or hi in "\\]^-":
            return False
        if any(lo <= special <= hi for special in "%{}"):
            return False
    return bool(token[2])


def _redis_class(token: _GlobToken) -> str:
    return "[" + "".join(lo if lo == hi else f"{lo}-{hi}" for lo, hi in token[2]) + "]"


def _redis_literal(c: str) -> str:
    return "\\" + c if c in "*?[]\\^" else c


@functools.lru_cache(maxsize=256)
def _glob_regex(glob: str) -> re.Pattern[str]:
    parts: list[str] = []
    for token in _parse_glob(glob):
        kind = token[0]
        if kind == "lit":
            parts.append(re.escape(token[1]))
        elif kind == "any":
            parts.append(".*")
        elif kind == "one":
            parts.append(".")
        else:
            body = "".join(
                re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}"
                for lo, hi in token[2]
            )
            if body:
                parts.append(f"[{'^' if token[1] else ''}{body}]")
            else:
                parts.append("." if token[1] else "(?!)")
    return re.compile("".join(parts), re.DOTALL)


def glob_match(glob: str, key: str) -> bool:
    """Whether ``key`` matches the Redis-syntax ``glob`` (on characters, not bytes)."""
    return _glob_regex(glob).fullmatch(key) is not None


@functools.lru_cache(maxsize=256)
def fnmatch_glob(glob: str) -> str:
    """An ``fnmatch`` pattern (the L1's ``invalidate_matching`` syntax) matching every key
    the Redis-syntax ``glob`` matches: exact, except that a ``[...]`` class holding a
    character ``fnmatch`` treats specially widens to ``?`` (invalidating more is safe)."""
    out: list[str] = []
    for token in _parse_glob(glob):
        kind = token[0]
        if kind == "lit":
            out.extend(f"[{c}]" if c in "*?[" else c for c in token[1])
        elif kind == "any":
            out.append("*")
        elif kind == "one":
            out.append("?")
        else:
            negated, ranges = token[1], token[2]
            if not ranges or any(c in "]!-\\^[" for pair in ranges for c in pair):
                out.append("?")
            else:
                body = "".join(lo if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)
                out.append(f"[{'!' if negated else ''}{body}]")
    return "".join(out)


# -- decorator keys ------------------------------------------------------------------------

# Exact types whose repr() is an injective, process-independent literal: a tuple of them
# is encoded by one C-level repr() call (the hit path of decorated functions).
_REPR_TYPES = frozenset({str, int, float, bool, type(None), bytes})
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_MAX_PREFIX_LENGTH = 256
_UNSET: Any = object()
_MEMO_SIZE = 4096  # argument tuples remembered per KeyMaker (the memo is cleared when full)
_MEMO_MAX_KEY_LENGTH = 256  # longer keys are rebuilt at every call rather than kept

KeyTemplate = Union[str, Callable[..., str], None]


def _encode_arg(value: Any, name: str) -> str:
    """``value`` as a Python literal of its canonical form (sorted dicts and sets).

    Injective over the supported types: distinct values, or equal values of different
    types (``1``, ``1.0``, ``True``; a tuple and a list), get distinct text.
    """
    cls = type(value)
    if cls in _REPR_TYPES:
        try:
            return repr(value)
        except ValueError:  # an int beyond sys.get_int_max_str_digits()
            return hex(value)
    if cls is tuple:
        items = [_encode_arg(item, name) for item in value]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    if cls is list:
        return f"[{', '.join(_encode_arg(item, name) for item in value)}]"
    if cls is dict:
        pairs = sorted((_encode_arg(k, name), _encode_arg(v, name)) for k, v in value.items())
        return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
    if cls is set or cls is frozenset:
        items = sorted(_encode_arg(item, name) for item in value)
        if cls is set:
            return "{" + ", ".join(items) + "}" if items else "set()"
        return f"frozenset({{{', '.join(items)}}})" if items else "frozenset()"
    if isinstance(value, enum.Enum):
        return f"<{cls.__module__}.{cls.__qualname__}.{value.name}>"
    if isinstance(value, type):
        return _encode_class(value, name)
    if cls is _dt.datetime or cls is _dt.time:
        offset = value.utcoffset()
        if value.tzinfo is not None and offset is not None:
            value = value.replace(tzinfo=_dt.timezone(offset))  # zones: fixed offset, stable repr
        return repr(value)
    if cls in (_dt.date, _dt.timedelta, uuid.UUID, decimal.Decimal):
        return repr(value)
    # subclasses are keyed as their base value (taken without calling their overrides)
    if isinstance(value, str):
        return repr(str.__str__(value))
    if isinstance(value, int):
        return _encode_arg(int.__index__(value), name)
    if isinstance(value, float):
        return repr(float.__float__(value))
    if isinstance(value, bytes):
        return repr(b"" + value)
    raise TypeError(
        f"cannot build a cache key from argument {name!r} of type "
        f"{cls.__module__}.{cls.__qualname__}: default keys support None, bool, int, float, "
        "str, bytes, enums, date/time types, UUID, Decimal and tuples, lists, dicts and sets "
        "of them; pass key= (a template such as 'item:{item_id}' or a callable) instead"
    )


def _encode_class(value: type, name: str) -> str:
    """A class as its qualified name: the same in every process, unlike its ``id``."""
    qualname = getattr(value, "__qualname__", "")
    if not qualname or "<locals>" in qualname:
        # two classes made by one function share a qualified name: not an identity
        raise TypeError(
            f"cannot build a cache key from argument {name!r}: class {qualname or value!r} "
            "is defined inside a function, so its name does not identify it; "
            "pass key= (a template or a callable) instead"
        )
    return f"<class {value.__module__}.{qualname}>"


def _refuse_self(func: Callable[..., Any], first: Optional[str]) -> None:
    """``TypeError`` for a method whose default key could not tell instances apart."""
    name = getattr(func, "__qualname__", None) or repr(func)
    if first == "self":
        raise TypeError(
            f"{name} takes self: a default cache key cannot tell instances apart (their "
            "entries would be served to each other); pass key=, a template naming what "
            "identifies the instance (key='repo:{self.region}:{item_id}') or a callable "
            "taking the method's arguments"
        )


def _names_itself(func: Callable[..., Any]) -> bool:
    """Whether ``module.qualname`` of ``func`` names it alone (not, say, every partial)."""
    if (
        inspect.ismethod(func)  # its __qualname__ is its function's: shared by instances
        or isinstance(func, functools.partial)
        or not hasattr(func, "__qualname__")
    ):
        return False
    owner = getattr(func, "__self__", None)  # builtin methods: bound to a module or class
    return owner is None or inspect.ismodule(owner) or isinstance(owner, type)


def _template_fields(template: str) -> set[str]:
    fields = set()
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        root = re.split(r"[.\[]", field, maxsplit=1)[0]
        if not root or root.isdigit():
            raise ValueError(f"key template {template!r}: use parameter names, not positions")
        fields.add(root)
    return fields


class KeyMaker:
    """Builds the cache key of a call to ``func``: ``maker(args, kwargs) -> str``.

    ``template`` is ``None`` (default key), a ``str.format`` template whose fields are
    parameter names (``"user:{user_id}"``, ``"{self.id}:{day}"``; checked now against the
    signature) or a callable taking the same arguments as ``func`` and returning the key.

    The default key is ``prefix`` (``module.qualname`` of ``func`` unless given) + ``:``
    + the bound arguments, in signature order and with defaults applied, written as the
    Python literal of a tuple (dicts and sets sorted): ``f(1, b=2)``, ``f(1, 2)`` and
    ``f(a=1)`` with ``b=2`` default share a key; ``1``, ``1.0``, ``True`` and ``"1"`` do
    not. A class argument (``cls`` of a classmethod) is written as its qualified name, so
    a subclass gets entries of its own. Default keys are refused (``TypeError``, at
    construction) where they could not tell callers apart: a function whose first
    parameter is ``self`` (instances would share entries: use a template naming what
    identifies the instance, ``"{self.id}:{day}"``, or a callable), a bound method, and
    callables with no name of their own (a ``functools.partial``, a callable object)
    unless ``prefix`` is given. When the key would be longer than
    :data:`MAX_KEY_LENGTH`, the argument part is replaced by ``#`` + its SHA-256.

    Speed (this is on the decorated hit path): calls whose arguments are all exact ``str``
    / ``int`` are answered from a per-maker memo (arguments -> key: a single argument
    itself, several as their tuple; at most 4096 entries, cleared when full); keyword
    arguments are folded into positions without ``inspect`` when every parameter is
    positional-or-keyword. Key functions, mutable defaults and calls with an instance
    or class in the key are never memoized.
    """

    __slots__ = (
        "_defaults",
        "_func",
        "_head",
        "_keyword_index",
        "_memo",
        "_n_params",
        "_n_required",
        "_names",
        "_positional",
        "_signature",
        "_skip",
        "_template",
        "template",
    )

    def __init__(
        self,
        func: Callable[..., Any],
        template: KeyTemplate = None,
        *,
        prefix: Optional[str] = None,
    ) -> None:
        if not callable(func):
            raise TypeError(f"func must be callable, not {type(func).__name__}")
        if template is not None and not (isinstance(template, str) or callable(template)):
            raise TypeError("key template must be a str, a callable or None")
        if template is not None and prefix is not None:
            raise ValueError("prefix only applies to default keys; put it in the template")
        self._func = func
        self.template = template
        self._template: Optional[str] = template if isinstance(template, str) else None
        try:
            signature: Optional[inspect.Signature] = inspect.signature(func)
        except (TypeError, ValueError):  # some builtins: key on (args, kwargs) as given
            signature = None
        self._signature = signature
        params = list(signature.parameters.values()) if signature is not None else []
        self._names = tuple(p.name for p in params)
        first = params[0].name if params and params[0].kind in _POSITIONAL else None
        if template is None:
            _refuse_self(func, first)
        # The memo may leave out the instance only when the key cannot depend on it: a
        # template that does not name it. A default key keeps ``cls`` (as its name).
        self._skip = int(
            first in ("self", "cls")
            and isinstance(template, str)
            and first not in _template_fields(template)
        )
        self._positional = signature is not None and all(p.kind in _POSITIONAL for p in params)
        self._n_params = len(params)
        defaults = [p.default for p in params if p.default is not inspect.Parameter.empty]
        self._n_required = len(params) - len(defaults)
        # defaults are only usable positionally when every parameter after the first
        # defaulted one has a default too (always true for positional parameters)
        self._defaults = tuple(defaults)
        if self._template is not None:
            accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
            unknown = _template_fields(self._template) - set(self._names)
            if unknown and not accepts_any and signature is not None:
                raise ValueError(
                    f"key template {self._template!r} names {sorted(unknown)}, which are not "
                    f"parameters of {getattr(func, '__qualname__', func)!r}"
                )
        if prefix is None:
            if template is None and not _names_itself(func):
                raise TypeError(
                    f"cannot build default cache keys for {func!r}: its name does not tell "
                    "it apart from other callables of its kind (a bound method, a "
                    "partial, a callable object), so they would share entries; decorate "
                    "the function itself, or pass key= (or prefix=)"
                )
            module = getattr(func, "__module__", None) or "?"
            prefix = f"{module}.{getattr(func, '__qualname__', type(func).__qualname__)}"
        elif not isinstance(prefix, str) or not prefix:
            raise ValueError("prefix must be a non-empty str")
        if len(prefix) > _MAX_PREFIX_LENGTH:
            raise ValueError(f"key prefix is longer than {_MAX_PREFIX_LENGTH} characters")
        self._head = prefix + ":"
        # The memo maps argument tuples to keys; it is only sound when the key depends on
        # nothing but the arguments: not for key functions, not with mutable defaults,
        # and (for templates) not when the skipped self/cls could appear in the template.
        memoizable = not callable(template) and all(
            type(value) in _REPR_TYPES for value in defaults
        )
        self._memo: Optional[dict[Hashable, str]] = {} if memoizable else None
        # keyword arguments are folded into positions without inspect when every
        # parameter is positional-or-keyword (and the key is not from a key function,
        # which must see the call as made)
        simple = self._positional and not callable(template)
        self._keyword_index: Optional[dict[str, int]] = (
            {
                p.name: i
                for i, p in enumerate(params)
                if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            }
            if simple
            else None
        )

    def __repr__(self) -> str:
        return f"KeyMaker({self._func!r}, {self.template!r})"

    @property
    def memo(self) -> Optional[dict[Hashable, str]]:
        """The memo (arguments -> key: the argument itself when there is one, else their
        tuple), ``None`` if not memoizable; for reading only."""
        return self._memo

    @property
    def skip(self) -> int:
        """Leading arguments left out of memo tuples: 1 for a ``self``/``cls`` that the
        key template does not name, else 0."""
        return self._skip

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The key of ``func(*args, **kwargs)``; ``TypeError`` if they do not fit ``func``."""
        memo = self._memo
        if memo is not None:
            # Exact str and int arguments only: two such tuples are equal exactly when
            # their keys are (unlike 1 == 1.0 == True), so the tuple can index a memo.
            memo_key: Optional[tuple[Any, ...]] = args[1:] if self._skip else args
            for value in memo_key:  # type: ignore[union-attr]
                cls = type(value)
                if cls is not str and cls is not int:
                    memo_key = None
                    break
            if memo_key is not None and kwargs:
                memo_key = _keyword_memo_key(memo_key, kwargs)
            if memo_key is not None:
                # one argument is its own memo key (no tuple to build, hash and compare
                # on the compiled hit path); a str or int never equals a tuple
                entry: Hashable = memo_key[0] if len(memo_key) == 1 else memo_key
                key = memo.get(entry)
                if key is None:
                    key = self._compute(args, kwargs)
                    if len(key) <= _MEMO_MAX_KEY_LENGTH:
                        if len(memo) >= _MEMO_SIZE:
                            memo.clear()
                        memo[entry] = key
                return key
        return self._compute(args, kwargs)

    def _compute(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if kwargs:
            index = self._keyword_index
            if index is not None:
                normalized = self._normalize(args, kwargs, index)
                if normalized is not None:
                    return self._make(normalized, {})
        return self._make(args, kwargs)

    def _normalize(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], index: dict[str, int]
    ) -> Optional[tuple[Any, ...]]:
        """``args`` + ``kwargs`` as one positional tuple, defaults applied; ``None`` if odd."""
        n_args = len(args)
        if n_args > self._n_params:
            return None
        values = [*args, *(_UNSET,) * (self._n_params - n_args)]
        for name, value in kwargs.items():
            position = index.get(name)
            if position is None or position < n_args:
                return None
            values[position] = value
        n_required = self._n_required
        for position in range(n_args, self._n_params):
            if values[position] is _UNSET:
                if position < n_required:
                    return None
                values[position] = self._defaults[position - n_required]
        return tuple(values)

    def _make(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if not kwargs and self._positional and self._n_required <= len(args) <= self._n_params:
            values = args
            if len(args) < self._n_params:
                values = args + self._defaults[len(args) - self._n_required :]
        else:
            values = self._bind(args, kwargs)
        if self.template is None:
            return self._default_key(values[self._skip :] if self._skip else values)
        return self._templated_key(args, kwargs, values)

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        if self._signature is None:
            return (args, kwargs) if kwargs else args
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return tuple(bound.arguments.values())

    def _default_key(self, values: tuple[Any, ...]) -> str:
        for value in values:
            if type(value) not in _REPR_TYPES:
                break
        else:
            try:
                return self._finish(repr(values))
            except ValueError:  # huge int: _encode_arg writes it in hex
                pass
        names = self._names[self._skip :] or ("*args",) * len(values)
        encoded = [_encode_arg(value, name) for value, name in zip(values, names)]
        if len(encoded) < len(values):  # no signature: more values than names
            encoded += [_encode_arg(value, "*args") for value in values[len(encoded) :]]
        text = f"({encoded[0]},)" if len(encoded) == 1 else f"({', '.join(encoded)})"
        return self._finish(text)

    def _finish(self, text: str) -> str:
        key = self._head + text
        if len(key) > MAX_KEY_LENGTH:
            digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
            key = self._head + "#" + digest
        return key

    def _templated_key(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], values: tuple[Any, ...]
    ) -> str:
        if self._template is None:
            key = self.template(*args, **kwargs)  # type: ignore[misc,operator]
            if not isinstance(key, str):
                raise TypeError(f"key function returned {type(key).__name__}, not str")
            return validate_key(key)
        arguments = dict(zip(self._names, values))
        if self._signature is not None and len(values) == len(self._names):
            # **kwargs parameter: its entries may be used as fields too
            for name, value in zip(self._names, values):
                param = self._signature.parameters[name]
                if param.kind is inspect.Parameter.VAR_KEYWORD:
                    arguments.update(value)
        try:
            key = self._template.format_map(arguments)
        except (KeyError, AttributeError, IndexError, ValueError, TypeError) as exc:
            raise InvalidKeyError(
                f"key template {self._template!r} failed for this call: {exc!r}"
            ) from exc
        return validate_key(key)


def _keyword_memo_key(
    positional: tuple[Any, ...], kwargs: dict[str, Any]
) -> Optional[tuple[Any, ...]]:
    """A memo key for a call with keywords (exact str/int values only), else ``None``."""
    for value in kwargs.values():
        cls = type(value)
        if cls is not str and cls is not int:
            return None
    return (*positional, _UNSET, *kwargs.items())  # _UNSET: never equal to a positional tuple


@functools.lru_cache(maxsize=1024)
def _key_maker(func: Callable[..., Any], template: KeyTemplate, prefix: Optional[str]) -> KeyMaker:
    return KeyMaker(func, template, prefix=prefix)


def make_key(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    template: KeyTemplate = None,
    prefix: Optional[str] = None,
) -> str:
    """The key of ``func(*args, **kwargs)``; see :class:`KeyMaker` (which this caches)."""
    return _key_maker(func, template, prefix)(args, kwargs)
