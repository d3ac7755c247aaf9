"""The exceptions stratacache raises to its callers.

Every one derives from :class:`StratacacheError`; errors about bad input also derive from
the built-in a user would expect (``TypeError`` / ``ValueError``), so ``except TypeError``
keeps working.
"""

from __future__ import annotations


class StratacacheError(Exception):
    """Base class of every stratacache exception."""


class InvalidKeyError(StratacacheError, ValueError):
    """A cache key is empty, too long for its kind, or otherwise unusable."""


class SerializationError(StratacacheError, TypeError):
    """A value cannot be encoded by the codec (unsupported type, too deep or too large)."""


class ValueTooLargeError(SerializationError):
    """An encoded value is larger than the codec's ``max_size``."""


class CorruptEntryError(StratacacheError):
    """Bytes read from Redis are not a valid entry for that key.

    Raised only inside the library: the cache turns it into a miss plus a
    ``decode_errors`` count, so callers never see it.
    """


class RedisUnavailableError(StratacacheError):
    """Redis did not answer (error, timeout, or circuit breaker open).

    Used inside the library to fall back to L1 and the loader; the cache does not raise
    it to callers of reads. Writes raise it only with ``on_write_error="raise"`` (and
    fenced writes): the write is then queued in the outbox *and* reported.
    """

    transient = True
    """Whether trying again later may succeed (a timeout, a dropped connection, ``LOADING``,
    ``BUSY``, ``TRYAGAIN``, ``CLUSTERDOWN``, a failover): such a write stays pending in
    the outbox until it is applied."""


class RedisCommandError(RedisUnavailableError):
    """Redis answered but refused a command for good (``NOPERM``, ``WRONGTYPE``, a script
    error): trying again cannot help, so the operation becomes a dead letter."""

    transient = False


class LockError(StratacacheError):
    """Base class of the distributed lock's errors."""


class LockTimeout(LockError, TimeoutError):
    """The lock was not acquired within ``blocking_timeout``."""


class LockLost(LockError):
    """The lock's lease ran out or was taken by another holder (an extension failed).

    Raised to the holder: at the next :meth:`check`, when the ``with`` block ends, or by
    a fenced write. Work done under a lost lock may overlap another holder's.
    """


class FencingTokenRejected(StratacacheError):
    """A fenced write carried a token older than one the entry has already seen."""


class RedisPermissionError(StratacacheError):
    """The Redis user lacks a permission the cache needs (its ACL refused a command, a
    key or the bus channel): raised by ``check_permissions()``, which names every
    refusal in :attr:`missing`. ``stratacache acl`` prints the rules that suffice."""

    def __init__(self, message: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing
        """One line per refusal: what was tried and Redis's ``NOPERM`` answer."""


class LoaderTimeout(StratacacheError, TimeoutError):
    """The loader did not answer within ``hard_timeout`` and no fail-safe value was at
    hand (see ``docs/loader.md``).

    An async loader is cancelled; a sync loader (``Cache``) cannot be, so it runs on in
    its worker thread and its result is still cached when it arrives. Callers waiting on
    the same load (single-flight, in the process or through the lease) get it too: none
    waits longer than the hard timeout of the call that started the load.
    """


class LoaderUnavailable(StratacacheError):
    """The loader's circuit breaker is open (it failed too often lately) and no fail-safe
    value was at hand: the loader was not called. Raised at once, so that callers do not
    pile up on a failing database; one probe call per cool-down finds out when it answers
    again (see ``docs/loader.md``)."""
class InvalidBloomParameters(StratacacheError, ValueError):
    """A Bloom filter's capacity, error rate or shard count is unusable (see
    ``Cache.bloom``)."""


class BloomFilterMismatch(StratacacheError, ValueError):
    """The Bloom filter of that name in Redis was built with other parameters (capacity,
    error rate or shards) than this instance's: its bits sit elsewhere, so reading it
    with these parameters would answer "absent" for items it holds. Use the same
    parameters everywhere, or another name."""


class BloomRebuildConflict(StratacacheError):
    """Another ``rebuild()`` of the same Bloom filter began after this one: this one stops
    without switching (the filter keeps its current generation; the newer rebuild will
    switch when it is complete)."""
