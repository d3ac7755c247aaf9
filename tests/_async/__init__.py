"""Tests written async; ``tests/_sync/`` is generated from them."""
