"""MkDocs hooks: the configuration reference is generated from the code at build time.

``docs/configuration.md`` holds the marker ``<!-- cache-options -->``; the build replaces it
with one table row per parameter of ``AsyncCache.__init__`` (name, type, default, unit and
the description from the class docstring's ``Parameters:`` section). The page can so never
fall behind the code: a parameter without a docstring entry, a docstring entry naming no
parameter, or a ``Cache`` whose parameters differ from ``AsyncCache``'s fails the build
(``mkdocs build --strict`` in ``make test``; ``tests/test_docs.py`` checks the same).

``AsyncCache`` is assembled from mixins, whose members mkdocstrings shows only when they
are listed: the API page's ``AsyncCache`` entry lists them (``members:``), and a public
member missing from that list, or a listed name that is not one, fails the build too.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

MARKER = "<!-- cache-options -->"
API_MARKER = "<!-- api-remaining -->"
CACHE_ENTRY = "::: stratacache.AsyncCache"

# Units of the plain-number options; every option annotated ``Duration`` is in seconds.
UNITS = {
    "l1_maxsize": "entries",
    "jitter": "fraction of the TTL",
    "breaker_threshold": "consecutive failures",
    "outbox_size": "operations (per Redis)",
    "dead_letter_size": "dead letters (per Redis)",
    "audit_maxlen": "stream entries",
    "reclaim_chunk": "keys per step",
}
DURATION_UNIT = "seconds"  # or a timedelta, as the page says


class DocsError(Exception):
    """The configuration reference cannot be generated truthfully."""


def docstring_parameters(doc: str) -> dict[str, str]:
    """``{name: description}`` from a Google-style ``Parameters:`` (or ``Args:``) section."""
    lines = inspect.cleandoc(doc).splitlines()
    params: dict[str, str] = {}
    inside = False
    indent = None
    current = None
    for line in lines:
        if re.match(r"^(Parameters|Args|Arguments):\s*$", line):
            inside = True
            continue
        if not inside:
            continue
        if line.strip() and not line.startswith(" "):
            break  # the next section
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        if indent is None:
            indent = width
        match = re.match(r"^(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line.strip())
        if width == indent and match:
            current = match.group(1)
            params[current] = match.group(2)
        elif current is not None:
            params[current] += " " + line.strip()
    return params


def _signature(cls: type) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]


def _rst_to_md(text: str) -> str:
    """The docstrings' reST inline markup as Markdown (double backticks, :class: roles)."""
    text = re.sub(r":(?:class|meth|func|attr|exc|data|mod):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`").replace("|", "\\|")


def options_table() -> str:
    """The Markdown table of every ``AsyncCache``/``Cache`` option."""
    from stratacache import AsyncCache, Cache

    params = _signature(AsyncCache)
    sync = _signature(Cache)
    a_shape = [(p.name, p.kind, p.default) for p in params]
    s_shape = [(p.name, p.kind, p.default) for p in sync]
    if a_shape != s_shape:
        raise DocsError(f"Cache and AsyncCache take different parameters:\n{a_shape}\n{s_shape}")
    described = docstring_parameters(AsyncCache.__doc__ or "")
    names = [p.name for p in params]
    missing = [n for n in names if n not in described]
    extra = [n for n in described if n not in names]
    if missing or extra:
        raise DocsError(
            "the AsyncCache docstring's Parameters section does not match __init__: "
            f"undocumented {missing}, documented but not a parameter {extra}"
        )
    rows = [
        "| option | type | default | unit | what it does |",
        "|---|---|---|---|---|",
    ]
    for p in params:
        annotation: Any = p.annotation
        type_text = (
            annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
        )
        unit = DURATION_UNIT if "Duration" in type_text else UNITS.get(p.name, "—")
        if p.default is inspect.Parameter.empty:
            default = "required" if p.kind is not p.VAR_KEYWORD else "—"
        else:
            default = f"`{p.default!r}`"
        rows.append(
            f"| `{p.name}` | `{type_text}` | {default} | {unit} | "
            f"{_rst_to_md(described[p.name])} |"
        )
    return "\n".join(rows)


def remaining_api(markdown: str) -> str:
    """``::: stratacache.NAME`` for every public name the page does not document yet."""
    import stratacache

    listed = set(re.findall(r"^::: stratacache\.(\w+)", markdown, flags=re.MULTILINE))
    names = [n for n in stratacache.__all__ if not n.startswith("_") and n not in listed]
    return "\n\n".join(f"::: stratacache.{n}" for n in names) or "(none)"


def public_members(cls: type) -> set[str]:
    """The public attributes of ``cls`` and of the classes it is made of (its mixins)."""
    return {
        name
        for klass in cls.__mro__
        if klass is not object
        for name in vars(klass)
        if not name.startswith("_")
    }


def entry_members(markdown: str, entry: str) -> list[str] | None:
    """The ``members:`` list of the ``::: entry`` block of ``markdown`` (``None``: none)."""
    lines = markdown.splitlines()
    if entry not in lines:
        return None
    members: list[str] | None = None
    for line in lines[lines.index(entry) + 1 :]:
        if line.strip() and not line.startswith(" "):
            break  # the block ends at the next unindented line
        item = line.strip()
        if item == "members:":
            members = []
        elif members is not None and item.startswith("- "):
            members.append(item[2:].strip())
        elif members is not None and item:
            break  # the next option
    return members


def check_cache_members(markdown: str) -> None:
    """Fail unless the ``AsyncCache`` entry lists every public member, inherited or not."""
    from stratacache import AsyncCache

    listed = entry_members(markdown, CACHE_ENTRY)
    block = markdown.split(CACHE_ENTRY, 1)[1].split("\n\n", 1)[0]
    if listed is None or "inherited_members: true" not in block:
        raise DocsError(
            f"the API page's `{CACHE_ENTRY}` needs `inherited_members: true` and a "
            "`members:` list: most of its members come from mixins"
        )
    public = public_members(AsyncCache)
    missing = sorted(public - set(listed))
    extra = sorted(set(listed) - public)
    if missing or extra:
        raise DocsError(
            f"the API page's `{CACHE_ENTRY}` members do not match the class: "
            f"not listed {missing}, listed but not a public member {extra}"
        )


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the markers with the generated options table and API entries; check the
    ``AsyncCache`` entry's member list."""
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, options_table())
    if API_MARKER in markdown:
        markdown = markdown.replace(API_MARKER, remaining_api(markdown))
    if CACHE_ENTRY in markdown.splitlines():
        check_cache_members(markdown)
    return markdown


def on_files(files: Any, config: Any) -> Any:
    """The charts of ``benchmarks/results/`` beside the benchmarks page, which includes
    ``report.md`` (its image links are relative to the report's own folder)."""
    from pathlib import Path

    from mkdocs.structure.files import File

    results = Path(config["docs_dir"]).parent / "benchmarks" / "results"
    for chart in sorted(results.glob("*.png")):
        if files.get_file_from_path(chart.name) is None:
            files.append(File.generated(config, chart.name, abs_src_path=str(chart)))
    return files
