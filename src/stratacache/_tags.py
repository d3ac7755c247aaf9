"""Tag hierarchy and the per-instance table of tag versions (no I/O).

Design notes
------------
Invalidating a tag is O(1) whatever the number of keys carrying it: the tag's *version*
(a Redis integer, ``KeySpace.tag_key``) is raised, and every entry records the version of
each of its tags when it was written (``Entry.stamps``). An entry read from L2 is valid
only if every stamp still equals its tag's current version, and its ``epoch`` the
namespace's epoch. Physical deletion of the invalidated keys follows in the background.

Versions are compared for *equality*: an entry stamped with a version older (the writer
had not heard of an invalidation yet) or newer (this instance has not) than the one known
here is a miss, never a stale hit. Versions are raised to at least the Redis server's
clock in microseconds, so a version key lost to eviction never comes back to a value an
old entry was stamped with.

Each instance keeps the versions it has seen in a :class:`TagVersions` table, so that an
L2 hit costs no extra round trip. The table is *trusted* only while the invalidation bus
is healthy: a bus message drops the tags it names (the next use reads them again from
Redis), every bus flush clears the table, and a table that is not trusted is not used at
all (each L2 read with tags fetches the versions it needs). A fetch that overlapped a
drop is used once but not remembered (:attr:`TagVersions.generation`), so a version read
before an invalidation can never be stored after the bus has announced it.

A writer stamps a new entry with the versions *it* knows. A write made on one instance
while another invalidates the tag, before the bus message arrives (about a millisecond),
is therefore stamped with the old version and read as a miss: the race costs a reload,
never a stale read.

Hierarchy: a tag ``a:b:c`` also carries ``a`` and ``a:b`` (:func:`expand_tags`), so
invalidating ``product`` reaches entries tagged ``product:42``. Tag names are literal:
glob characters in a tag are just characters.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Optional

from ._codec import Entry

__all__ = ["EPOCH", "TAG_SEPARATOR", "TagVersions", "expand_tags"]

TAG_SEPARATOR = ":"
"""Separates the levels of a hierarchical tag."""

EPOCH = None
"""The table's name for the namespace epoch (``None``: no tag can be it)."""

_MAX_KNOWN = 100_000  # versions remembered; the table is cleared (and refetched) past it


def expand_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """``tags`` and every ancestor of each (``a:b:c`` -> ``a``, ``a:b``, ``a:b:c``), in a
    stable order without duplicates."""
    out: dict[str, None] = {}
    for tag in tags:
        start = 0
        while True:
            cut = tag.find(TAG_SEPARATOR, start)
            if cut == -1:
                break
            if cut:
                out[tag[:cut]] = None
            start = cut + 1
        out[tag] = None
    return tuple(out)


def check_versions(known: dict[Optional[str], int], entry: Entry) -> Optional[bool]:
    """Whether ``entry``'s epoch and tag stamps match the versions in ``known`` (tag ->
    version, the epoch under :data:`EPOCH`); ``None`` if one it needs is not there."""
    epoch = known.get(EPOCH)
    if epoch is None:
        return None
    if entry.epoch != epoch:
        return False
    for tag, stamp in zip(entry.tags, entry.stamps):
        version = known.get(tag)
        if version is None:
            return None
        if version != stamp:
            return False
    return True


class TagVersions:
    """The tag versions (and epoch) this instance has seen; see the module notes."""

    __slots__ = ("_known", "_lock", "generation")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[Optional[str], int] = {}
        self.generation = 0
        """Raised by every drop and clear; a fetch stores its result only if unchanged."""

    def check(self, entry: Entry) -> Optional[bool]:
        """Whether ``entry`` is still valid; ``None`` if a version it needs is unknown."""
        return check_versions(self._known, entry)

    def table(self) -> dict[Optional[str], int]:
        """The live table (tag -> version, the epoch under :data:`EPOCH`), for checking a
        whole ``get_many`` batch without a call per entry. Read without the lock, as
        :meth:`check` reads it, with the same races: a concurrent drop makes a version
        unknown (the entry is then checked against Redis), a raise makes it newer (the
        entry a miss)."""
        return self._known

    def stamps(self, tags: Sequence[str]) -> Optional[tuple[tuple[int, ...], int]]:
        """The versions of ``tags`` and the epoch, or ``None`` if one is unknown."""
        known = self._known
        epoch = known.get(EPOCH)
        if epoch is None:
            return None
        out = []
        for tag in tags:
            version = known.get(tag)
            if version is None:
                return None
            out.append(version)
        return tuple(out), epoch

    def store(self, generation: int, versions: dict[Optional[str], int]) -> bool:
        """Remember fetched ``versions`` if nothing was dropped since ``generation`` was
        read (else they may predate an invalidation the bus announced); True if stored."""
        with self._lock:
            if generation != self.generation:
                return False
            if len(self._known) + len(versions) > _MAX_KNOWN:
                self._known.clear()
            self._known.update(versions)
            return True

    def raise_to(self, versions: dict[Optional[str], int]) -> None:
        """This instance invalidated these tags (or bumped the epoch): their new versions."""
        with self._lock:
            self.generation += 1
            for tag, version in versions.items():
                if version > self._known.get(tag, -1):
                    self._known[tag] = version

    def drop(self, tags: Iterable[str]) -> None:
        """Forget ``tags`` (another instance invalidated them): read them again."""
        with self._lock:
            self.generation += 1
            for tag in tags:
                self._known.pop(tag, None)

    def clear(self) -> None:
        """Forget everything (a bus flush: messages may have been missed)."""
        with self._lock:
            self.generation += 1
            self._known.clear()

    def reset_after_fork(self) -> None:
        """Forget everything in a forked child, taking no lock: the parent's listener
        thread may have held the old one at the fork, and it is never released there.
        The lock and the table are replaced (the child has one thread until it starts
        more, so nothing can race with this)."""
        self._lock = threading.Lock()
        self._known = {}
        self.generation += 1
