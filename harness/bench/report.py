"""Reports: one JSON (schema harness.bench.SCHEMA), a Markdown page, a PNG and a terminal table per run, named
`<date>_<suite>_<device>[_<label>]`; an index line in the output folder's README.md when it has the marker;
and `bench compare`.

Every row of every suite has `key` (unique in its report), `value` (its headline number, the median over
repeats), `metric` and `higher_is_better`; compare matches rows by key and reads only those.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from data_pipelines.errors import UserError
from harness.bench import SCHEMA

INDEX_MARKER = "<!-- bench index: `python -m harness bench` appends a line below for each report it writes -->"


def _f(v, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _lat(row) -> str:
    p = row.get("latency_ms")
    return "-" if not p else f"{p['p50']:.1f} / {p['p90']:.1f} / {p['p99']:.1f}"


def _spread(row, key: str = "images_per_s") -> str:
    s = row.get(key)
    return "-" if not s else f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"


def _est(e, unit: str = "") -> str:
    """A harness.stats estimate: mean +- 95% half width (n)."""
    if not e:
        return "-"
    if e["ci95"] is None:
        return f"{e['mean']:.2f}{unit} (n=1)"
    return f"{e['mean']:.2f} ± {e['ci95']:.2f}{unit} (n={e['n']})"


def _gb(row, key: str = "bytes_per_image") -> str:
    return _f(row.get(key) and row[key] / 1e9, "{:.4g}")


ROOFLINE: list[tuple[str, Callable[[dict], str]]] = [
    ("GB/img", _gb), ("TB/s/dev", lambda r: _f(r.get("achieved_tbs_per_device"), "{:.3f}")),
    ("of BW", lambda r: _f(r.get("bandwidth_share"), "{:.1%}"))]
Column = tuple[str, Callable[[dict], str]]
COLUMNS: dict[str, list[Column]] = {
    "train": [("variant", lambda r: r["variant"] + (f" ({r['note']})" if r.get("note") else "")),
              ("img/s (min-max)", _spread), ("img/s/dev", lambda r: _f(r.get("images_per_s_per_device"))),
              ("compute img/s", lambda r: _spread(r, "compute_images_per_s")),
              ("x first", lambda r: _f(r.get("ratio"), "{:.2f}")),
              ("step ms p50/p90/p99", _lat), ("data wait", lambda r: _f(r.get("data_wait_share"), "{:.0%}")),
              ("GFLOP/img", lambda r: _f(r.get("flops_per_image") and r["flops_per_image"] / 1e9)),
              ("TFLOP/s/dev", lambda r: _f(r.get("achieved_tflops_per_device"), "{:.3f}")),
              ("MFU", lambda r: _f(r.get("mfu"), "{:.1%}")), *ROOFLINE,
              ("peak MiB", lambda r: _f(r.get("peak_memory_mb"), "{:.0f}")),
              ("warm-up s", lambda r: _f(r.get("warmup_s")))],
    "infer": [("variant", lambda r: r["variant"]), ("batch", lambda r: str(r["batch_size"])),
              ("flip", lambda r: "yes" if r["flip"] else "no"), ("img/s (min-max)", _spread),
              ("x first", lambda r: _f(r.get("ratio"), "{:.2f}")), ("batch ms p50/p90/p99", _lat),
              ("GFLOP/img", lambda r: _f(r.get("flops_per_image") and r["flops_per_image"] / 1e9)),
              ("MFU", lambda r: _f(r.get("mfu"), "{:.1%}")), *ROOFLINE,
              ("warm-up s", lambda r: _f(r.get("warmup_s")))],
    "data": [("variant", lambda r: r["key"]), ("samples per CPU-second", lambda r: _f(r["value"])),
             ("samples/s (wall)", lambda r: _f(r.get("wall_per_s"))),
             ("% of decode+warp per core", lambda r: _f(r.get("of_ceiling"), "{:.0%}"))],
    "kernels": [("op", lambda r: r["op"]), ("backend", lambda r: r["backend"]),
                ("ms", lambda r: _f(r["value"], "{:.4f}") if r.get("timed") else "not timed"),
                ("GB/s", lambda r: _f(r.get("gbs"))), ("x floor", lambda r: _f(r.get("x_floor"), "{:.2f}")),
                ("matches torch", lambda r: {True: "yes", False: "NO", None: "-"}[r.get("correct")]),
                ("max rel. error", lambda r: _f(r.get("rel_error"), "{:.1e}"))],
    "compile": [("variant", lambda r: r["variant"]), ("scope", lambda r: r["scope"]),
                ("backend", lambda r: r["backend"]), ("cache", lambda r: r["cache"]),
                ("compile s (min-max)", lambda r: _spread(r, "compile_s") if r.get("compile_s") else
                 "failed: " + "; ".join(r["errors"])),
                ("graphs", lambda r: str(r.get("graphs", "-"))),
                ("steady step ms", lambda r: _spread(r, "steady_step_ms"))],
    "scaling": [("world size", lambda r: str(r["world_size"])), ("img/s", lambda r: _f(r["value"])),
                ("img/s per device", lambda r: _f(r.get("images_per_s_per_device"))),
                ("speed-up", lambda r: _f(r.get("speedup"), "{:.2f}")),
                ("efficiency vs linear", lambda r: _f(r.get("efficiency"), "{:.0%}")), ("step ms p50/p90/p99", _lat)],
    "accuracy": [("variant", lambda r: r["variant"]),
                 ("final (flip test)", lambda r: _est(r.get("final")) if r.get("flip_test")
                  else ("-" if r.get("baseline") else "(flip off)")),
                 ("final, no flip", lambda r: _f(r["value"], "{:.2f}") if r.get("baseline")
                  else _est(r.get("final_no_flip"))),
                 ("- first (paired)", lambda r: _est(r.get("paired_vs_first"))),
                 ("- baseline", lambda r: _f(r.get("over_baseline"), "{:+.2f}")),
                 ("target reached", lambda r: f"{r['target_reached']} of seeds" if r.get("target") is not None
                  else "-"),
                 ("train min to target", lambda r: _est(r.get("time_to_target_min"))),
                 ("images", lambda r: _f(r.get("images"), "{:.0f}")),
                 ("train min", lambda r: _f(r.get("train_min"), "{:.2f}")),
                 ("train img/s", lambda r: _f(r.get("images_per_s")))],
}


def _accuracy_sections(report: dict) -> list[str]:
    """bench accuracy: the curves (mean over seeds and each seed) under the rows table."""
    lines = []
    for row in report["rows"]:
        if row.get("baseline"):
            continue
        runs = [r for r in report["runs"] if r["variant"] == row["variant"]]
        lines += ["", f"### {row['variant']}: {row['metric']} over training", "",
                  "| step | images | train min (mean) | mean ± 95% CI | "
                  + " | ".join(f"seed {r['seed']}" for r in runs) + " |", "|" + "---|" * (4 + len(runs))]
        for p in row["curve"]:
            per_seed = [next((q["value"] for q in r["curve"] if q["step"] == p["step"]), None) for r in runs]
            lines.append(f"| {p['step']} | {p['images']} | {p['train_min']:.2f} | {_est(p['value'])} | "
                         + " | ".join(_f(v, "{:.2f}") for v in per_seed) + " |")
    return lines


SECTIONS: dict[str, Callable[[dict], list[str]]] = {"accuracy": _accuracy_sections}


def stem(report: dict) -> str:
    label = f"_{report['label']}" if report.get("label") else ""
    return f"{report['created'][:10]}_{report['suite']}_{report['device_slug']}{label}"


def markdown(report: dict) -> str:
    m, cols = report["machine"], COLUMNS[report["suite"]]
    gpu = f"{m['gpu']} (driver {m['driver']}, CUDA {m['cuda']}, cuDNN {m['cudnn']})" if m["gpu"] else "none"
    lines = [f"# bench {report['suite']}: {report.get('label') or ''} on {report['device_slug']}", "",
             f"`{report['command']}`", "",
             f"- created {report['created']} UTC, schema `{report['schema']}`, commit `{m['git_commit']}`"
             + (" (uncommitted changes)" if m.get("git_dirty") else ""),
             f"- CPU {m['cpu']} ({m.get('cpu_capability') or 'ISA not recorded'}), {m['cores']} cores "
             f"({m['torch_threads']} torch threads), load average {m['load_avg_1m']:.1f} when the report was "
             f"written; GPU {gpu}",
             f"- torch {m['torch']}, triton {m['triton']}, DALI {m['dali']}, Python {m['python']}",
             f"- settings: {json.dumps(report['settings'])}"]
    if report.get("peak"):
        p = report["peak"]
        lines.append(f"- peak ({p['dtype']}): {_f(p['tflops'], '{:.3f}')} TFLOP/s, {_f(p['tbs'], '{:.3f}')} TB/s "
                     f"({p['source']})")
    lines += ["", "| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fn(r) for _, fn in cols) + " |" for r in report["rows"]]
    lines += SECTIONS.get(report["suite"], lambda _: [])(report)
    lines += [""] + [f"- {n}" for n in report.get("notes", [])]
    lines += kinds_tables(report["rows"])
    return "\n".join(lines) + "\n"


def kinds_tables(rows: list[dict]) -> list[str]:
    """Markdown: each profiled row's time by op kind (share of the profiled time, ms per call) and its bytes per
    image by op kind (harness.bench.traffic)."""
    from harness.bench.traffic import KINDS

    lines = []
    timed = [r for r in rows if r.get("time_by_kind")]
    if timed:
        lines += ["", "## Time by op kind (torch.profiler, untimed calls after the repeats)", "",
                  "| row | clock | ms/call | " + " | ".join(KINDS) + " | top ops (ms) |",
                  "|" + "---|" * (len(KINDS) + 4)]
        for r in timed:
            t = r["time_by_kind"]
            top = ", ".join(f"{n} {ms:.2f}" for n, ms, _ in t["top_ops"][:4])
            lines.append(f"| {r['key']} | {t['clock'].split(' ')[0]} | {t['ms_per_call']:.2f} | "
                         + " | ".join(f"{t['by_kind'][k]['share']:.0%}" for k in KINDS) + f" | {top} |")
    counted = [r for r in rows if r.get("bytes_by_kind")]
    sizes = [r["batch_size"] for r in counted if isinstance(r.get("batch_size"), int)]
    counted = [r for r in counted if not sizes or r.get("batch_size") == max(sizes)]  # infer: the largest batch
    if counted:
        lines += ["", "## Bytes per image by op kind (GB, eager-kernel traffic model)", "",
                  "| row | total | " + " | ".join(KINDS) + " |", "|" + "---|" * (len(KINDS) + 2)]
        lines += [f"| {r['key']} | {r['bytes_per_image'] / 1e9:.4g} | "
                  + " | ".join(f"{r['bytes_by_kind'][k] / 1e9:.4g}" for k in KINDS) + " |" for r in counted]
    return lines


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bench {report['suite']} on {report['device_slug']}")
    for header, _ in COLUMNS[report["suite"]]:
        table.add_column(header, justify="right")
    for r in report["rows"]:
        table.add_row(*(fn(r) for _, fn in COLUMNS[report["suite"]]))
    console = Console(width=200)
    console.print(table)
    for n in report.get("notes", []):
        console.print(f"- {n}", highlight=False)


def write(report: dict, out_dir: Path, formats: tuple[str, ...] = ("json", "md", "png")) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / stem(report)
    paths = []
    if "json" in formats:
        paths.append(base.with_suffix(".json"))
        paths[-1].write_text(json.dumps(report, indent=1) + "\n")
    if "md" in formats:
        paths.append(base.with_suffix(".md"))
        paths[-1].write_text(markdown(report))
    if "png" in formats:
        from harness.bench.plots import plot

        paths.append(base.with_suffix(".png"))
        plot(report, paths[-1])
    readme = out_dir / "README.md"
    if "md" in formats and readme.is_file() and INDEX_MARKER in readme.read_text():
        links = " · ".join(f"[{p.suffix[1:]}]({p.name})" for p in paths)
        rows = [r for r in report["rows"] if r.get("value")]
        head = (max if rows and rows[0].get("higher_is_better", True) else min)(rows, key=lambda r: r["value"],
                                                                               default=None)
        best = f"{head['key']}: {head['value']:.4g} {head.get('metric', '')}" if head else "-"
        with readme.open("a") as f:
            f.write(f"| {report['created'][:10]} | {report['suite']} | {report['device_slug']} | "
                    f"{report.get('label') or '-'} | {best} | {links} |\n")
    return paths


def load(path: str) -> dict:
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable bench report: {exc}") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise UserError(f"{path}: not a bench report of schema {SCHEMA!r}")
    return report


def compare(a: dict, b: dict, threshold: float) -> tuple[list[str], list[str]]:
    """(lines, regressions): B against A row by row; a regression is a row of B worse than A by more than
    `threshold` (relative)."""
    if a["suite"] != b["suite"]:
        raise UserError(f"cannot compare a {a['suite']} report with a {b['suite']} report")
    rows_b = {r["key"]: r for r in b["rows"]}
    lines = [f"{'row':40s} {'A':>12s} {'B':>12s} {'B/A':>7s}"]
    regressions = []
    for ra in a["rows"]:
        rb = rows_b.get(ra["key"])
        if rb is None or not ra.get("value") or not rb.get("value"):
            lines.append(f"{ra['key']:40s} {'(not in both)':>33s}")
            continue
        ratio = rb["value"] / ra["value"]
        worse = ratio < 1 - threshold if ra.get("higher_is_better", True) else ratio > 1 + threshold
        flag = "  REGRESSION" if worse else ""
        lines.append(f"{ra['key']:40s} {ra['value']:12.4g} {rb['value']:12.4g} {ratio:7.3f}{flag}")
        if worse:
            regressions.append(ra["key"])
    return lines, regressions
