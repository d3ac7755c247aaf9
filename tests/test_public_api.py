"""The public surface is exactly what ``__all__`` pins, and every public name is documented."""

from __future__ import annotations

import inspect

import stratacache

EXPECTED = {
    "MISSING",
    "AsyncBloomFilter",
    "AdaptiveTTL",
    "AsyncCache",
    "AsyncDistributedLock",
    "BloomFilter",
    "BloomFilterMismatch",
    "BloomParams",
    "BloomRebuildConflict",
    "BloomStats",
    "InvalidBloomParameters",
    "AuditRecord",
    "DeadLetter",
    "DistributedLock",
    "FencingTokenRejected",
    "Health",
    "Histogram",
    "InstanceInfo",
    "InvalidationRule",
    "InvalidationStats",
    "LockError",
    "LockLost",
    "LockTimeout",
    "BreakerState",
    "Cache",
    "CacheStats",
    "CircuitBreaker",
    "Codec",
    "CorruptEntryError",
    "Entry",
    "InvalidKeyError",
    "KeySpace",
    "L1",
    "LatencySummary",
    "LoaderTimeout",
    "LoaderUnavailable",
    "RedisCommandError",
    "RedisPermissionError",
    "RedisUnavailableError",
    "ScheduleInfo",
    "WarmReport",
    "SerializationError",
    "StratacacheError",
    "TypeRegistry",
    "ValueTooLargeError",
    "__version__",
    "ainstances",
    "acl_rules",
    "instances",
    "make_key",
    "register_dataclass",
    "register_type",
}


def test_exported_names_are_pinned() -> None:
    assert set(stratacache.__all__) == EXPECTED
    public = {n for n in dir(stratacache) if not n.startswith("_")}
    # submodules imported by other tests are attributes too, not exports
    assert public - {"annotations", "testing", "prometheus", "contrib"} <= EXPECTED


def test_every_public_name_and_method_has_a_docstring() -> None:
    undocumented = []
    for name in stratacache.__all__:
        obj = getattr(stratacache, name)
        if name in {"MISSING", "__version__"}:
            continue
        if not (inspect.getdoc(obj) or "").strip():
            undocumented.append(name)
        if inspect.isclass(obj):
            for attr, member in _members(obj).items():
                if attr.startswith("_") or not callable(member):
                    continue
                if not (inspect.getdoc(member) or "").strip():
                    undocumented.append(f"{name}.{attr}")
    assert undocumented == []


def _members(cls: type) -> dict[str, object]:
    """The attributes of ``cls`` and of the stratacache classes it inherits (``AsyncCache``
    is assembled from mixins)."""
    members: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.startswith("stratacache"):
            members.update(vars(klass))
    return members


def test_sync_and_async_caches_have_the_same_methods() -> None:
    def methods(cls: type) -> set[str]:
        return {n for n, m in _members(cls).items() if not n.startswith("_") and callable(m)}

    assert methods(stratacache.Cache) == methods(stratacache.AsyncCache)


def test_the_cache_members_are_pinned() -> None:
    # AsyncCache is assembled from mixins (docs/development.md): moving a method between
    # them must not add, drop or rename a public member
    public = {n for n in _members(stratacache.AsyncCache) if not n.startswith("_")}
    assert public == CACHE_MEMBERS
    assert {n for n in _members(stratacache.Cache) if not n.startswith("_")} == CACHE_MEMBERS


CACHE_MEMBERS = {
    "add",
    "add_dependency",
    "add_rule",
    "audit_log",
    "bloom",
    "cached",
    "check_permissions",
    "close",
    "dead_letters",
    "delete",
    "get",
    "get_many",
    "get_or_set",
    "health",
    "incr",
    "invalidate",
    "invalidate_all",
    "invalidate_pattern",
    "invalidate_related",
    "invalidate_tag",
    "invalidate_tags",
    "keys_for_tag",
    "l1",
    "lock",
    "redis",
    "remove_dependency",
    "replay_dead_letters",
    "run_schedules",
    "schedule_invalidation",
    "set",
    "set_many",
    "stats",
    "touch",
    "unschedule",
    "warm",
}

CONTRIB_EXPECTED = {
    "django": {
        "FOREVER",
        "StrataCache",
        "ashutdown",
        "invalidate_on_change",
        "model_tag",
        "shutdown",
    },
    "fastapi": {"CacheDep", "StrataCache", "get_cache"},
    "flask": {"StrataCache"},
}


def test_contrib_surfaces_are_pinned_and_documented() -> None:
    import importlib

    undocumented = []
    for module_name, expected in CONTRIB_EXPECTED.items():
        module = importlib.import_module(f"stratacache.contrib.{module_name}")
        assert set(module.__all__) == expected, module_name
        for name in module.__all__:
            obj = getattr(module, name)
            if not inspect.isclass(obj) and not inspect.isfunction(obj):
                continue  # constants and type aliases: documented in the module
            if not (inspect.getdoc(obj) or "").strip():
                undocumented.append(f"{module_name}.{name}")
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or not callable(member):
                        continue
                    if not (inspect.getdoc(member) or "").strip():
                        undocumented.append(f"{module_name}.{name}.{attr}")
    assert undocumented == []
