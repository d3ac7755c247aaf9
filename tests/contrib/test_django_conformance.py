"""Django's own backend conformance suite (``BaseCacheTests``) run against StrataCache.

Run exactly the way Django runs it for its Redis backend (``RedisCacheTests``): a
``TestCase`` with ``override_settings(CACHES=caches_setting_for_tests(...))``, every alias
(default, prefix, v2, custom_key, custom_key2) on one Redis, without the ``cull`` and
``zero_cull`` aliases, which Django excludes for Redis too (``redis_excluded_caches``:
Redis evicts by its own policy, and stratacache's L1 is an LRU of its own). Django's
``RedisCacheTests`` overrides nothing else of ``BaseCacheTests`` but the exception of a
non-int ``incr`` (redis-py's ``ResponseError``; here ``TypeError``, Django's default), so
nothing is skipped beyond the two culling tests and ``test_cull_delete_when_store_empty``,
which skip themselves ("Culling isn't implemented.") as they do for Redis.

The suite stores arbitrary objects (functions, classes, model instances), so it runs
with the signed ``pickle`` serializer; a subset that needs no pickle runs with msgpack.
"""

from __future__ import annotations

from typing import Any

from cache.tests import BaseCacheTests, caches_setting_for_tests  # Django's (django_suite)
from django.test import TestCase, override_settings

from django_suite import DJANGO_REDIS_URL

# Django's own exclusion for its Redis backend (tests/cache/tests.py, redis_excluded_caches)
REDIS_EXCLUDED_CACHES = {"cull", "zero_cull"}


def params(serializer: str) -> dict[str, Any]:
    return {
        "BACKEND": "stratacache.contrib.django.StrataCache",
        "LOCATION": DJANGO_REDIS_URL,
        "OPTIONS": {
            "serializer": serializer,
            "namespace": f"conformance-{serializer}",
            "redis_timeout": 2.0,  # a noisy shared machine: behaviour, not speed, is tested
        },
    }


@override_settings(
    CACHES=caches_setting_for_tests(base=params("pickle"), exclude=REDIS_EXCLUDED_CACHES)
)
class StrataCachePickleTests(BaseCacheTests, TestCase):
    """Every test of BaseCacheTests (the signed pickle serializer)."""


# The tests that store only what msgpack supports (no functions, classes, model instances,
# unpicklable objects) and do not sleep (the pickle run covers expiry already).
MSGPACK_SUBSET = {
    "test_simple",
    "test_default_used_when_none_is_set",
    "test_add",
    "test_prefix",
    "test_non_existent",
    "test_get_many",
    "test_delete",
    "test_delete_nonexistent",
    "test_has_key",
    "test_in",
    "test_incr",
    "test_decr",
    "test_close",
    "test_unicode",
    "test_binary_string",
    "test_set_many",
    "test_set_many_returns_empty_list_on_success",
    "test_set_many_empty_data",
    "test_delete_many",
    "test_delete_many_no_keys",
    "test_clear",
    "test_long_timeout",
    "test_zero_timeout",
    "test_float_timeout",
    "test_invalid_key_characters",
    "test_invalid_key_length",
    "test_invalid_with_version_key_length",
    "test_cache_versioning_get_set",
    "test_cache_versioning_add",
    "test_cache_versioning_has_key",
    "test_cache_versioning_delete",
    "test_cache_versioning_incr_decr",
    "test_cache_versioning_get_set_many",
    "test_incr_version",
    "test_decr_version",
    "test_custom_key_func",
    "test_get_or_set",
    "test_get_or_set_callable",
    "test_get_or_set_version",
    "test_get_or_set_racing",
}


@override_settings(
    CACHES=caches_setting_for_tests(base=params("msgpack"), exclude=REDIS_EXCLUDED_CACHES)
)
class StrataCacheMsgpackTests(BaseCacheTests, TestCase):
    """The msgpack-compatible part of BaseCacheTests (the default serializer)."""


for _name in dir(BaseCacheTests):
    if _name.startswith("test") and _name not in MSGPACK_SUBSET:
        setattr(StrataCacheMsgpackTests, _name, None)  # unittest collects callables only
