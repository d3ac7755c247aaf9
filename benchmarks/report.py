"""Run every benchmark report and write one report with charts: benchmarks/results/.

    python benchmarks/report.py [--quick] [--only l1,cache,bus,scaling]

Each part runs as its own process pinned to one CPU (``taskset -c 1``, as ``make bench``
does; the redis-server each part starts inherits the pinning) and writes its numbers as
JSON; this script then writes ``results/report.md`` and one PNG chart per table
(matplotlib, from the dev extra). Every figure in a table is a ratio to the baseline
measured in the same run: absolute times on this kind of machine move by tens of percent
between runs, ratios by a few.

Parts: ``l1`` (l1_report.py: stratacache's L1 beside dict, lru_cache, cachetools, cachebox
and theine), ``l1-hit-ratio`` (LRU and W-TinyLFU beside theine and Belady's optimum),
``l1-scaling`` (get and set cost from 1k to 1M entries, 10M in full mode), ``cache``
(cache_report.py: L1 hit, decorated hit, L2 hit, get_many and the miss path beside raw
redis-py, dogpile.cache, cashews and aiocache), ``bus`` (bus_report.py), ``scaling``
(scaling_report.py: L2 hit under client threads, bus propagation against subscribers, tag
invalidation against tag size). Under each scaling curve the report says where it bends
and why. ``--quick`` keeps the whole run under 3 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PARTS = {
    "l1": ["l1_report.py"],
    "l1-hit-ratio": ["l1_report.py", "--hit-ratio"],
    "l1-scaling": ["l1_report.py", "--scaling"],
    "cache": ["cache_report.py"],
    "bus": ["bus_report.py"],
    "scaling": ["scaling_report.py"],
}


def run_part(name: str, quick: bool) -> dict[str, Any]:
    """Run one report script pinned to one CPU; its JSON numbers."""
    out = RESULTS / f"{name}.json"
    script, *options = PARTS[name]
    cmd = [sys.executable, str(HERE / script), *options, "--json", str(out)]
    if quick:
        cmd.append("--quick")
    elif name == "l1-scaling":
        cmd.append("--full")  # the curve to 10M entries: minutes, so only in the full report
    if shutil.which("taskset") and len(os.sched_getaffinity(0)) > 1:
        cmd = ["taskset", "-c", str(max(os.sched_getaffinity(0))), *cmd]
    print(f"=== {name}: {' '.join(cmd)}", flush=True)
    started = time.monotonic()
    subprocess.run(cmd, check=True)
    print(f"=== {name}: {time.monotonic() - started:.0f} s", flush=True)
    return json.loads(out.read_text())


# -- where a curve bends ----------------------------------------------------------------------


def bend(xs: list[int], ys: list[float], factor: float = 1.5) -> tuple[int, int] | None:
    """The first step (x before, x after) where the cost passes ``factor`` times its first
    value; None when the curve stays under that: a 50 % rise is well past the run-to-run
    noise of this kind of machine, smaller steps are not read as bends."""
    for i in range(1, len(xs)):
        if ys[i] > factor * ys[0]:
            return xs[i - 1], xs[i]
    return None


def cpu_cache_bytes(level: int) -> int | None:
    """This machine's data or unified cache of ``level`` (per core for L2), from sysfs."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            if int((index / "level").read_text()) != level:
                continue
            if (index / "type").read_text().strip() == "Instruction":
                continue
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        units = {"K": 1024, "M": 1024**2, "G": 1024**3}
        return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    return None


def _mib(n: int) -> str:
    return f"{n / 1024**2:.0f} MiB" if n >= 1024**2 else f"{n / 1024:.0f} KiB"


# -- rendering --------------------------------------------------------------------------------


def _fmt_seconds(s: float) -> str:
    if s < 1e-6:
        return f"{s * 1e9:.0f} ns"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    return f"{s * 1e3:.2f} ms"


def _slug(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-").replace("--", "-")


def bar_chart(title: str, labels: list[str], ratios: list[float], path: Path) -> None:
    """Horizontal bars of ratios to the baseline (1.0 drawn as a line); stratacache in blue,
    baselines in grey, peers in orange."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = [
        "#1f77b4" if "stratacache" in label else "#999999" if "baseline" in label else "#ff7f0e"
        for label in labels
    ]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.2))
    ax.barh(range(len(labels)), ratios, color=colors)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    if max(ratios) / max(min(ratios), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("x baseline of the same run (lower is better)")
    ax.set_title(title, fontsize=10)
    for i, r in enumerate(ratios):
        ax.text(r, i, f" {r:.2f}x", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def line_chart(
    title: str,
    x: list[float],
    series: dict[str, list[float]],
    xlabel: str,
    ylabel: str,
    path: Path,
    logx: bool = True,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, ys in series.items():
        style = "-o" if "stratacache" in name else "--s"
        ax.plot(x, ys, style, label=name, markersize=4)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_tables(tables: list[dict[str, Any]], lines: list[str]) -> None:
    """Tables in the shared format: ``{"title", "rows": [{"name", "seconds", "ratio"}]}``,
    ``ratio`` to the group's baseline row (None before the first baseline)."""
    for table in tables:
        title = table["title"]
        png = f"{_slug(title)}.png"
        lines += [f"### {title}", ""]
        if table.get("note"):
            lines += [table["note"], ""]
        lines += ["| case | per op | x baseline |", "|---|---:|---:|"]
        labels, ratios = [], []
        for row in table["rows"]:
            ratio = row.get("ratio")
            cell = f"{ratio:.2f}" if ratio is not None else "-"
            lines.append(f"| {row['name']} | {_fmt_seconds(row['seconds'])} | {cell} |")
            if ratio is not None:
                labels.append(row["name"])
                ratios.append(ratio)
        if ratios:
            bar_chart(title, labels, ratios, RESULTS / png)
            lines += ["", f"![{title}]({png})"]
        lines.append("")


L1_COLUMNS = [
    "get hit",
    "x dict.get",
    "get miss",
    "set+evict",
    "invalidate_tag 10k (us)",
    "mem B/entry (RSS)",
]


def render_l1(data: dict[str, Any], lines: list[str]) -> None:
    """l1_report.py's rows (ns per call, bytes per entry) and its ratios."""
    rows = {name: row for name, row in data.items() if name != "ratios"}
    lines += [
        "## L1 (in-process)",
        "",
        "ns per call (every figure includes the benchmark loop), bytes per entry.",
        "",
        "| implementation | " + " | ".join(L1_COLUMNS) + " | notes |",
        "|---|" + "---:|" * len(L1_COLUMNS) + "---|",
    ]
    labels, ratios = [], []
    for name, row in rows.items():
        cells = []
        for col in L1_COLUMNS:
            value = row.get(col)
            if value is None:
                cells.append("-")
            else:
                cells.append(f"{value:.2f}" if col.startswith("x ") else f"{value:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row.get('note', '')} |")
        if row.get("x dict.get") is not None and "pure" not in name:
            labels.append(name if name != "dict" else "dict (baseline)")
            ratios.append(row["x dict.get"])
    lines.append("")
    if ratios:
        bar_chart("L1 get hit, x dict.get", labels, ratios, RESULTS / "l1-get-hit.png")
        lines += ["![L1 get hit](l1-get-hit.png)", ""]
    for label, ratio in data.get("ratios", {}).items():
        lines.append(f"- {label}: **{ratio:.2f}**")
    lines.append("")


def render_l1_hit_ratio(data: dict[str, Any], lines: list[str]) -> None:
    """Hit ratio per trace and policy (higher is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(data)
    policies = list(data[traces[0]])
    lines += [
        "### L1 hit ratio by eviction policy (capacity 10,000)",
        "",
        "| trace | " + " | ".join(policies) + " |",
        "|---|" + "---:|" * len(policies),
    ]
    for trace in traces:
        cells = " | ".join(f"{data[trace][p] * 100:.1f} %" for p in policies)
        lines.append(f"| {trace} | {cells} |")
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(policies)
    for i, policy in enumerate(policies):
        xs = [t + i * width for t in range(len(traces))]
        ax.bar(xs, [data[t][policy] * 100 for t in traces], width, label=policy)
    ax.set_xticks([t + 0.4 - width / 2 for t in range(len(traces))], traces)
    ax.set_ylabel("hit ratio, % (higher is better)")
    ax.set_title("L1 hit ratio by eviction policy", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "l1-hit-ratio.png", dpi=110)
    plt.close(fig)
    lines += ["", "![L1 hit ratio](l1-hit-ratio.png)", ""]


def render_l1_scaling(
    data: dict[str, Any], lines: list[str], bytes_per_entry: float | None = None
) -> None:
    """ns per get hit and per set against the number of entries, and where it bends."""
    sizes = sorted(data, key=int)
    names = [n for n in data[sizes[0]] if not n.endswith(" set")]
    lines += [
        "### L1 cost against entries",
        "",
        "| entries | " + " | ".join(f"{n} get / set (ns)" for n in names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for size in sizes:
        cells = " | ".join(f"{data[size][n]:.0f} / {data[size][n + ' set']:.0f}" for n in names)
        lines.append(f"| {int(size):,} | {cells} |")
    xs = [int(size) for size in sizes]
    series = {f"{n} get": [data[size][n] for size in sizes] for n in names}
    series.update({f"{n} set": [data[size][n + " set"] for size in sizes] for n in names})
    line_chart(
        "L1 cost against entries",
        xs,
        series,
        "entries",
        "ns per call",
        RESULTS / "l1-scaling.png",
    )
    lines += ["", "![L1 scaling](l1-scaling.png)", ""]
    lines += [*l1_scaling_notes(xs, series, bytes_per_entry), ""]


def steepest(xs: list[int], ys: list[float]) -> int:
    """The index i of the step xs[i - 1] -> xs[i] where the cost rises by the largest factor."""
    return max(range(1, len(xs)), key=lambda i: ys[i] / ys[i - 1])


def l1_scaling_notes(
    xs: list[int], series: dict[str, list[float]], bytes_per_entry: float | None
) -> list[str]:
    """Where the L1's get curve bends, beside dict's, and the memory hierarchy behind it."""
    ours, theirs = series.get("L1 compiled lru get"), series.get("dict get")
    if ours is None or theirs is None or len(xs) < 2:
        return []
    i, j = steepest(xs, ours), steepest(xs, theirs)
    text = (
        f"**Where it bends.** The compiled L1's get rises most steeply between {xs[i - 1]:,} "
        f"and {xs[i]:,} entries ({ours[i - 1]:.0f} -> {ours[i]:.0f} ns, "
        f"x{ours[i] / ours[i - 1]:.1f}); `dict.get` "
        + ("at the same step" if i == j else f"between {xs[j - 1]:,} and {xs[j]:,}")
        + f" ({theirs[j - 1]:.0f} -> {theirs[j]:.0f} ns, x{theirs[j] / theirs[j - 1]:.1f}). "
        "The benchmark reads up to 10,000 sampled keys in random order"
    )
    l2, l3 = cpu_cache_bytes(2), cpu_cache_bytes(3)
    if l2 and bytes_per_entry:
        text += (
            f"; at about {bytes_per_entry:.0f} B per entry this CPU's {_mib(l2)} L2 cache "
            f"holds about {l2 / bytes_per_entry:,.0f} entries"
            + (f" and its {_mib(l3)} L3 about {l3 / bytes_per_entry:,.0f}" if l3 else "")
        )
    text += (
        ". Once the table outgrows a cache level, each get takes misses for the hash slot, "
        "the node and the key's bytes; a plain dict takes the same misses, so the bend is "
        "the memory hierarchy, not the LRU. Set with eviction follows (the evicted tail "
        "node is as cold as the looked-up one)."
    )
    return [text]


def l2_threads_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Why wall time per read falls with client threads and where it stops falling."""
    threads = [r["threads"] for r in rows]
    ours = [r["strata_us"] for r in rows]
    raw = [r["raw_us"] for r in rows]
    # flat: the first step that gains less than 15 %, well inside this machine's noise
    flat = next((i for i in range(1, len(ours)) if ours[i] > 0.85 * ours[i - 1]), None)
    text = (
        f"**Where it bends.** Wall time per read goes from {ours[0]:.0f} µs with "
        f"{threads[0]} thread to {ours[-1]:.0f} µs with {threads[-1]} (raw redis-py: "
        f"{raw[0]:.0f} -> {raw[-1]:.0f} µs). Round trips overlap because a thread waiting "
        "on its socket releases the GIL, and each thread borrows its own pooled connection. "
    )
    if flat is not None:
        text += (
            f"The curve flattens from {threads[flat - 1]} threads on: the client threads and "
            "redis-server share one CPU (the run is pinned), and once it is busy all the "
            "time more threads only queue. "
        )
    text += (
        "Where the ratio is under 1, a stratacache read holds the GIL for less Python work "
        "per round trip than `r.get` does (direct.py: one borrowed connection, no "
        "per-command dispatch)."
    )
    return [text]


def bus_readers_notes(rows: list[dict[str, Any]]) -> list[str]:
    readers = [r["readers"] for r in rows]
    step = bend(readers, [r["bus_p99_ms"] for r in rows])
    raw_step = bend(readers, [r["raw_p99_ms"] for r in rows])
    cpus = os.cpu_count() or 1
    text = "**Where it bends.** "
    if step is None:
        text += (
            f"The bus p99 stays within 1.5x of its 1-reader value up to {readers[-1]} "
            "subscribing processes. "
        )
    else:
        text += (
            f"The bus p99 bends between {step[0]} and {step[1]} subscribing processes"
            + (
                f" (raw PUBLISH between {raw_step[0]} and {raw_step[1]})"
                if raw_step
                else " while raw PUBLISH has not bent yet"
            )
            + ". "
        )
    text += (
        "Redis writes a message to each subscriber's socket in turn, so the raw curve grows "
        f"with readers; and every reader wakes at the same moment, so with more readers than "
        f"the machine's {cpus} CPUs the last to run waits for the others' work: the p99 then "
        "measures the scheduler. A stratacache reader does more per "
        "message than a raw subscriber (verify the signature, check the sequence, drop L1 "
        "entries, then, in this benchmark, read the new value from Redis), so it feels the "
        "queueing first."
    )
    return [text]


def tag_size_notes(rows: list[dict[str, Any]]) -> list[str]:
    calls = [r["call_ms"] for r in rows]
    return [
        f"**Flat, by design.** From {rows[0]['size']:,} to {rows[-1]['size']:,} entries "
        f"under the tag, `invalidate_tag` returns in {min(calls):.2f}-{max(calls):.2f} ms "
        f"(x{max(calls) / min(calls):.1f} over a x{rows[-1]['size'] // rows[0]['size']:,} "
        "size range): it bumps one tag version and publishes one message; the members are "
        "reclaimed later in the background, in chunks. Another instance stops serving the "
        "tagged entries after that one message, whatever the tag's size."
    ]


def render_scaling(data: dict[str, Any], lines: list[str]) -> None:
    lines += ["## Scaling", ""]
    rows = data["l2_hit_threads"]
    threads = [r["threads"] for r in rows]
    line_chart(
        "L2 hit against client threads (wall µs per read)",
        threads,
        {
            "raw redis-py GET + unpackb (baseline)": [r["raw_us"] for r in rows],
            "stratacache Cache.get": [r["strata_us"] for r in rows],
        },
        "client threads",
        "µs per read",
        RESULTS / "scaling-l2-threads.png",
    )
    lines += [
        "### L2 hit against client threads",
        "",
        "| threads | r.get + unpackb | Cache.get | x |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['threads']} | {r['raw_us']:.1f} µs | {r['strata_us']:.1f} µs | "
        f"{r['strata_us'] / r['raw_us']:.2f} |"
        for r in rows
    ]
    lines += ["", "![L2 hit against threads](scaling-l2-threads.png)", ""]
    lines += [*l2_threads_notes(rows), ""]

    rows = data["bus_readers"]
    readers = [r["readers"] for r in rows]
    line_chart(
        "Bus propagation p99 against subscribing processes",
        readers,
        {
            "raw PUBLISH -> receive p99 (baseline)": [r["raw_p99_ms"] for r in rows],
            "stratacache write -> served p99": [r["bus_p99_ms"] for r in rows],
        },
        "subscribing processes",
        "ms",
        RESULTS / "scaling-bus-readers.png",
    )
    lines += [
        "### Bus propagation against subscribing processes",
        "",
        "| readers | raw p50 | raw p99 | bus p50 | bus p99 | p99 x |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['readers']} | {r['raw_p50_ms']:.2f} ms | {r['raw_p99_ms']:.2f} ms | "
        f"{r['bus_p50_ms']:.2f} ms | {r['bus_p99_ms']:.2f} ms | "
        f"{r['bus_p99_ms'] / r['raw_p99_ms']:.2f} |"
        for r in rows
    ]
    lines += ["", "![Bus against readers](scaling-bus-readers.png)", ""]
    lines += [*bus_readers_notes(rows), ""]

    rows = data["tag_sizes"]
    sizes = [r["size"] for r in rows]
    line_chart(
        "Tag invalidation against tag size",
        sizes,
        {
            "stratacache invalidate_tag returns": [r["call_ms"] for r in rows],
            "stratacache another instance stops serving": [r["unserved_ms"] for r in rows],
        },
        "entries under the tag",
        "ms",
        RESULTS / "scaling-tag-size.png",
    )
    lines += [
        "### Tag invalidation against tag size",
        "",
        "| entries | invalidate_tag returns | another instance stops serving |",
        "|---:|---:|---:|",
    ]
    lines += [
        f"| {r['size']:,} | {r['call_ms']:.2f} ms | {r['unserved_ms']:.2f} ms |" for r in rows
    ]
    lines += ["", "![Tag invalidation against size](scaling-tag-size.png)", ""]
    lines += [*tag_size_notes(rows), ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (< 3 minutes)")
    parser.add_argument("--only", help="comma-separated parts to run (default: all)")
    parser.add_argument(
        "--render-only", action="store_true", help="re-render from the JSON files already there"
    )
    args = parser.parse_args(argv)
    parts = args.only.split(",") if args.only else list(PARTS)
    RESULTS.mkdir(exist_ok=True)
    started = time.monotonic()
    data = {}
    for name in parts:
        data[name] = (
            json.loads((RESULTS / f"{name}.json").read_text())
            if args.render_only
            else run_part(name, args.quick)
        )
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# stratacache benchmark report",
        "",
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{'quick' if args.quick else 'full'} mode, {stamp}. "
        "Each part ran pinned to one CPU with its own redis-server on the same CPU. Every "
        "ratio is to a baseline measured in the same run; compare ratios, not absolute times.",
        "",
    ]
    if "l1" in data:
        render_l1(data["l1"], lines)
    if "l1-hit-ratio" in data:
        render_l1_hit_ratio(data["l1-hit-ratio"], lines)
    if "l1-scaling" in data:
        compiled = data.get("l1", {}).get("stratacache.L1 (compiled)", {})
        render_l1_scaling(data["l1-scaling"], lines, compiled.get("mem B/entry (RSS)"))
    if "cache" in data:
        lines += ["## Tiered cache", ""]
        render_tables(data["cache"]["tables"], lines)
    if "bus" in data:
        lines += ["## Invalidation bus", ""]
        render_tables(data["bus"]["tables"], lines)
    if "scaling" in data:
        render_scaling(data["scaling"], lines)
    notes = HERE / "report_notes.md"
    if notes.exists():
        lines += [notes.read_text()]
    (RESULTS / "report.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'report.md'} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
