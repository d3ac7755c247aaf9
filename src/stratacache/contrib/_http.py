"""HTTP response caching shared by the FastAPI and Flask integrations (no framework here).

What a cached view does, in both frameworks:

* Only ``GET`` and ``HEAD`` are cached; the key is the method-independent path plus the
  sorted query string (and the values of the ``vary`` request headers), so ``?a=1&b=2``
  and ``?b=2&a=1`` share an entry.
* The request's ``Cache-Control``: ``no-store`` bypasses the cache (not read, not
  written); ``no-cache`` or ``max-age=0`` skips the read and stores the fresh response
  (a forced refresh).
* A stored response carries a strong ``ETag`` (a hash of its body) and
  ``Cache-Control: max-age=<seconds left>``; a request whose ``If-None-Match`` names that
  ETag gets ``304 Not Modified`` with no body.
* Only ``200`` responses without ``Set-Cookie`` and without ``no-store``/``private`` in
  their own ``Cache-Control`` are stored; anything else is passed through as it is.
* ``X-Cache: HIT``, ``MISS`` or ``BYPASS`` says what happened.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union
from urllib.parse import urlencode

__all__ = [
    "CACHEABLE_METHODS",
    "StoredResponse",
    "TagsSpec",
    "etag_matches",
    "request_directives",
    "response_key",
    "storable",
]

CACHEABLE_METHODS = frozenset({"GET", "HEAD"})

# headers not replayed from a stored response (the framework recomputes them, or they
# belong to one response only)
_DROPPED_HEADERS = frozenset(
    {"content-length", "etag", "cache-control", "x-cache", "set-cookie", "date", "vary"}
)

TagsSpec = Union[Iterable[str], Callable[[Any], Iterable[str]]]
"""Tags of a cached response: a fixed list, or a function of the framework's request."""


def request_directives(header: Optional[str]) -> frozenset[str]:
    """The directives of a ``Cache-Control`` header, lower-cased (``max-age=0`` kept
    whole)."""
    if not header:
        return frozenset()
    return frozenset(part.strip().lower().replace(" ", "") for part in header.split(","))


def skips_read(directives: frozenset[str]) -> bool:
    """Whether the client asked for a fresh response (``no-cache`` / ``max-age=0``)."""
    return "no-cache" in directives or "max-age=0" in directives


def response_key(
    prefix: str, path: str, query: Iterable[tuple[str, str]], vary: Sequence[str] = ()
) -> str:
    """The cache key of a response: path, sorted query, and the ``vary`` header values."""
    key = f"{prefix}:{path}"
    items = sorted(query)
    if items:
        key += "?" + urlencode(items)
    if vary:
        key += "#" + urlencode([(str(i), v) for i, v in enumerate(vary)])
    return key


def make_etag(body: bytes) -> str:
    """A strong ETag of ``body``."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def etag_matches(if_none_match: Optional[str], etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weak comparison, as RFC 9110 asks)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in if_none_match.split(","))


def storable(status: int, headers: Iterable[tuple[str, str]]) -> bool:
    """Whether a response may be stored (see the module notes)."""
    if status != 200:
        return False
    for name, value in headers:
        lname = name.lower()
        if lname == "set-cookie":
            return False
        if lname == "cache-control":
            directives = request_directives(value)
            if "no-store" in directives or "private" in directives:
                return False
    return True


@dataclass(frozen=True)
class StoredResponse:
    """A response as kept in the cache (msgpack-friendly through :meth:`to_record`)."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    etag: str
    expires_at: float
    """Wall-clock time (``time.time()``) at which the entry expires."""

    @classmethod
    def build(
        cls, status: int, body: bytes, headers: Iterable[tuple[str, str]], expires_at: float
    ) -> StoredResponse:
        """A response to store: the headers to replay, and the ETag of ``body``."""
        kept = tuple((k, v) for k, v in headers if k.lower() not in _DROPPED_HEADERS)
        return cls(status, body, kept, make_etag(body), expires_at)

    def to_record(self) -> list[Any]:
        """The value stored in the cache."""
        return [self.status, self.body, [list(h) for h in self.headers], self.etag, self.expires_at]

    @classmethod
    def from_record(cls, record: Any) -> Optional[StoredResponse]:
        """The response of a stored value; None if it is not one (a miss)."""
        try:
            status, body, headers, etag, expires_at = record
            return cls(
                int(status),
                bytes(body),
                tuple((str(k), str(v)) for k, v in headers),
                str(etag),
                float(expires_at),
            )
        except (TypeError, ValueError):
            return None

    def max_age(self, now: float) -> int:
        """Seconds the response stays fresh from ``now`` (for ``Cache-Control``)."""
        return max(0, int(self.expires_at - now))

    def cache_headers(self, now: float, outcome: str) -> list[tuple[str, str]]:
        """``ETag``, ``Cache-Control`` and ``X-Cache`` of a served response."""
        return [
            ("ETag", self.etag),
            ("Cache-Control", f"max-age={self.max_age(now)}"),
            ("X-Cache", outcome),
        ]


class Uncacheable(Exception):
    """Raised by a loader whose response must not be stored; carries that response."""

    def __init__(self, response: Any) -> None:
        super().__init__("response not cacheable")
        self.response = response


def tags_for(spec: TagsSpec, request: Any) -> list[str]:
    """The tags of a response to ``request``."""
    if callable(spec):
        return list(spec(request))
    return list(spec)
