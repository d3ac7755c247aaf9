"""The documentation cannot fall behind the code, and the Python claim is what is tested.

``mkdocs build --strict`` (``make docs``, part of ``make test``) catches broken links and
references; these checks run in the suite on every Python, without MkDocs.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest

import stratacache

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _hooks():  # scripts/mkdocs_hooks.py, loaded by path like MkDocs does
    spec = importlib.util.spec_from_file_location(
        "mkdocs_hooks", ROOT / "scripts" / "mkdocs_hooks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_cache_option_is_in_the_generated_configuration_table() -> None:
    table = _hooks().options_table()
    rows = {m.group(1) for m in re.finditer(r"^\| `(\w+)` \|", table, flags=re.MULTILINE)}
    params = [
        p for p in inspect.signature(stratacache.AsyncCache.__init__).parameters if p != "self"
    ]
    assert rows == set(params)
    assert "<!-- cache-options -->" in (DOCS / "configuration.md").read_text()
    # units: every duration says seconds
    assert "| `default_ttl` | `Duration` | `300.0` | seconds" in table


def test_an_undocumented_option_fails_the_generation() -> None:
    hooks = _hooks()

    class Fake:
        """A cache.

        Parameters:
            a: documented.
        """

        def __init__(self, a: int = 1, b: int = 2) -> None: ...

    assert set(hooks.docstring_parameters(Fake.__doc__ or "")) == {"a"}
    described = hooks.docstring_parameters(stratacache.AsyncCache.__doc__ or "")
    assert "bus_secret" in described and "heartbeat" in described["heartbeat_timeout"]


def test_the_api_page_lists_the_public_names() -> None:
    page = (DOCS / "api.md").read_text()
    generated = _hooks().remaining_api(page)
    listed = set(
        re.findall(r"^::: stratacache\.(\w+)", page + "\n" + generated, flags=re.MULTILINE)
    )
    public = {n for n in stratacache.__all__ if not n.startswith("_")}
    assert public <= listed


def test_the_api_page_lists_every_cache_member_even_those_of_mixins() -> None:
    hooks = _hooks()
    page = (DOCS / "api.md").read_text()
    hooks.check_cache_members(page)  # the page as it is passes
    listed = hooks.entry_members(page, hooks.CACHE_ENTRY)
    public = hooks.public_members(stratacache.AsyncCache)
    assert {"get_or_set", "cached", "invalidate_tag", "warm", "stats", "l1"} <= public
    assert set(listed) == public
    # the check can fail: a member left out, or a name that is not one
    with pytest.raises(hooks.DocsError, match="not listed \\['cached'\\]"):
        hooks.check_cache_members(page.replace("        - cached\n", ""))
    with pytest.raises(hooks.DocsError, match="not a public member \\['nothing'\\]"):
        extra = page.replace("        - cached\n", "        - cached\n        - nothing\n")
        hooks.check_cache_members(extra)
    with pytest.raises(hooks.DocsError, match="inherited_members"):
        hooks.check_cache_members(page.replace("      inherited_members: true\n", ""))


def _nav_pages(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for v in node.values() for p in _nav_pages(v)]
    if isinstance(node, list):
        return [p for v in node for p in _nav_pages(v)]
    return []


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = set(_nav_pages(config["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert nav - pages == set(), "nav entries without a page"
    assert pages - nav == set(), "pages missing from the nav (add one line under their section)"


def test_docs_and_readme_never_point_outside_the_repository() -> None:
    for path in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        text = path.read_text()
        assert "../shared" not in text and "shared/DESIGN" not in text, path


def test_readme_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), target


def test_the_python_claim_is_what_nox_tests() -> None:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib")
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    prefix = "Programming Language :: Python :: 3."
    minors = sorted(
        int(c.removeprefix(prefix)) for c in project["classifiers"] if c.startswith(prefix)
    )
    assert minors == list(range(minors[0], minors[-1] + 1)), "a gap in the claimed versions"
    assert project["requires-python"] == f">=3.{minors[0]}"
    assert sys.version_info[:2] >= (3, minors[0])
    noxfile = (ROOT / "noxfile.py").read_text()
    assert "PYTHONS = [" in noxfile and "classifiers" in noxfile  # nox reads the same list
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
    assert tool["mypy"]["python_version"] == f"3.{minors[0]}"
