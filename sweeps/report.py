"""`python -m harness sweep report DIR`: a sweep's results as Markdown, JSON and PNG.

Reads only files the harness wrote (no Ray needed): `DIR/sweep.json` (the preset, points and seeds that
were asked for) and each trial's `summary.json` (final held-out score) and `metrics.jsonl` (validation
rows: the learning curves). Per point: mean ± 95% CI over seeds; per comparison of the preset: the paired
difference (point - baseline) over seeds; the papers' numbers or findings beside them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_pipelines.errors import UserError
from harness.files import atomic_path, write_json, write_text_atomic
from harness.stats import estimate, paired_difference
from sweeps.presets import get_preset
from sweeps.trial import run_name, stopped_early


def collect(experiment_dir: Path) -> dict[str, Any]:
    """{"manifest", "scores": {point: {seed: value}}, "curves": {point: {seed: [(step, value)]}}, "metric",
    "stopped_early": [run]}"""
    manifest_path = experiment_dir / "sweep.json"
    if not manifest_path.is_file():
        raise UserError(f"{experiment_dir} is not a sweep directory (no sweep.json)")
    manifest = json.loads(manifest_path.read_text())
    scores: dict[str, dict[int, float]] = {p: {} for p in manifest["points"]}
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {p: {} for p in manifest["points"]}
    metric, early = None, []
    for point in manifest["points"]:
        for seed in range(manifest["seeds"]):
            run = experiment_dir / run_name(point, seed)
            if (run / "summary.json").is_file():
                summary = json.loads((run / "summary.json").read_text())
                scores[point][seed] = float(summary["value"])
                metric = summary["metric"]
            elif stopped_early(run):
                early.append(run.name)
            if (run / "metrics.jsonl").is_file():
                rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
                by_step = {r["step"]: float(r["value"]) for r in rows if r.get("kind") == "val"}
                curves[point][seed] = sorted(by_step.items())
    return {"manifest": manifest, "scores": scores, "curves": curves, "metric": metric, "stopped_early": early}


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """The report's numbers (what report.json holds)."""
    manifest, scores = data["manifest"], data["scores"]
    preset = get_preset(manifest["preset"])
    points = {p: {"seeds": {str(s): v for s, v in sorted(scores[p].items())},
                  **({"estimate": estimate(list(scores[p].values())).to_json()} if scores[p] else {})}
              for p in manifest["points"]}
    comparisons = []
    for a, b in preset.comparisons:
        diff = paired_difference(scores[a], scores[b])
        comparisons.append({"point": a, "baseline": b, "difference": diff.to_json() if diff else None})
    for point, value in preset.paper_values.items():
        points[point]["paper"] = value
    for c in comparisons:
        if c["point"] in preset.paper_values and c["baseline"] in preset.paper_values:
            c["paper"] = round(preset.paper_values[c["point"]] - preset.paper_values[c["baseline"]], 6)
    return {"preset": preset.name, "description": preset.description, "metric": data["metric"],
            "overrides": manifest["overrides"], "seeds": manifest["seeds"], "points": points,
            "comparisons": comparisons, "paper": preset.paper, "paper_metric": preset.paper_metric,
            "stopped_early": data["stopped_early"],
            "missing": [run_name(p, s) for p in manifest["points"] for s in range(manifest["seeds"])
                        if s not in scores[p] and run_name(p, s) not in data["stopped_early"]]}


def _fmt(est: dict | None) -> str:
    if est is None:
        return "-"
    if est["ci95"] is None:
        return f"{est['mean']:.2f} (n=1)"
    return f"{est['mean']:.2f} ± {est['ci95']:.2f}"


def markdown(summary: dict[str, Any], png_names: list[str]) -> str:
    metric = summary["metric"] or "score"
    paper_head = f" paper ({summary['paper_metric']}) |" if summary["paper_metric"] else ""
    paper_rule = "---|" if paper_head else ""
    lines = [f"# Sweep `{summary['preset']}`", "", summary["description"], "",
             f"Metric: held-out {metric} (%), final step of each run; mean ± 95% CI over seeds "
             f"(Student t, n-1 degrees of freedom). Seeds asked for: {summary['seeds']}. "
             f"User overrides: {' '.join(summary['overrides']) or 'none'}.", "",
             "| point | mean ± 95% CI | per seed |" + paper_head, "|---|---|---|" + paper_rule]
    for point, entry in summary["points"].items():
        per_seed = ", ".join(f"{v:.2f}" for v in entry["seeds"].values()) or "-"
        paper = f" {entry['paper']:.1f} |" if "paper" in entry else " - |"
        lines.append(f"| `{point}` | {_fmt(entry.get('estimate'))} | {per_seed} |" + (paper if paper_head else ""))
    if summary["comparisons"]:
        lines += ["", "Paired differences (point - baseline, same seeds):", "",
                  "| point | baseline | difference ± 95% CI |" + paper_head, "|---|---|---|" + paper_rule]
        for c in summary["comparisons"]:
            paper = f" {c['paper']:+.1f} |" if "paper" in c else " - |"
            lines.append(f"| `{c['point']}` | `{c['baseline']}` | {_fmt(c['difference'])} |"
                         + (paper if paper_head else ""))
    if summary["paper"]:
        lines += ["", f"Papers: {summary['paper']}"]
    if summary["stopped_early"]:
        lines += ["", f"Stopped early by ASHA (no final result): {', '.join(summary['stopped_early'])}"]
    if summary["missing"]:
        lines += ["", f"Runs without a result (unfinished or failed): {', '.join(summary['missing'])}"]
    lines += [""] + [f"![{name}]({name})" for name in png_names]
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], summary: dict[str, Any], path: Path) -> None:
    """Per-point means with CIs, metric vs the preset's axis (if any), and the learning curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    preset = get_preset(summary["preset"])
    panels = 3 if preset.axis else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2))
    names = [p for p in summary["points"] if "estimate" in summary["points"][p]]
    means = [summary["points"][p]["estimate"]["mean"] for p in names]
    cis = [summary["points"][p]["estimate"]["ci95"] or 0.0 for p in names]
    ax = axes[0]
    ax.errorbar(range(len(names)), means, yerr=cis, fmt="o", capsize=4)
    for i, p in enumerate(names):
        ax.scatter([i] * len(summary["points"][p]["seeds"]), list(summary["points"][p]["seeds"].values()),
                   s=10, color="grey", zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"{summary['metric'] or 'score'} (%)")
    ax.set_title("mean ± 95% CI (grey: seeds)")
    if preset.axis:
        ax = axes[1]
        series: dict[str, list[tuple[float, float, float]]] = {}
        for p in names:
            label = preset.axis.series.get(p, summary["preset"])
            series.setdefault(label, []).append((preset.axis.x[p], means[names.index(p)], cis[names.index(p)]))
        for label, pts in series.items():
            pts.sort()
            ax.errorbar([x for x, _, _ in pts], [m for _, m, _ in pts], yerr=[c for _, _, c in pts], marker="o",
                        capsize=4, label=label)
        ax.set_xscale("log", base=2 if preset.axis.label == "stacks" else 10)
        ax.set_xlabel(preset.axis.label)
        ax.set_title(f"{summary['metric'] or 'score'} vs {preset.axis.label}")
        ax.legend(fontsize=8)
    ax = axes[-1]
    for i, (point, by_seed) in enumerate(data["curves"].items()):
        for j, curve in enumerate(by_seed.values()):
            if curve:
                ax.plot([s for s, _ in curve], [v for _, v in curve], color=f"C{i % 10}", alpha=0.8,
                        label=point if j == 0 else None)
    ax.set_xlabel("step")
    ax.set_title("validation during training (each seed)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_report(experiment_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write report.md, report.json and report.png for the sweep in `experiment_dir` (into `out_dir`,
    default the same folder); returns their paths."""
    experiment_dir = Path(experiment_dir)
    out = Path(out_dir) if out_dir else experiment_dir
    out.mkdir(parents=True, exist_ok=True)
    data = collect(experiment_dir)
    summary = summarize(data)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "png": out / "report.png"}
    write_json(paths["json"], summary)
    plot(data, summary, paths["png"])
    write_text_atomic(paths["markdown"], markdown(summary, [paths["png"].name]))
    return paths
