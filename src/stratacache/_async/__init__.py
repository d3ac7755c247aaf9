"""The I/O half of stratacache: ``_async/`` is written by hand, ``_sync/`` generated from it."""
