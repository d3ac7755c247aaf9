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
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not callable(member):
                    continue
                if not (inspect.getdoc(member) or "").strip():
                    undocumented.append(f"{name}.{attr}")
    assert undocumented == []


def test_sync_and_async_caches_have_the_same_methods() -> None:
    def methods(cls: type) -> set[str]:
        return {n for n, m in vars(cls).items() if not n.startswith("_") and callable(m)}

    assert methods(stratacache.Cache) == methods(stratacache.AsyncCache)


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
