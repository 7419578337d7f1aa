"""`python -m harness sweep report DIR`: a sweep's results as Markdown, JSON and PNG.

Reads only files the harness wrote (no Ray needed): `DIR/sweep.json` (the preset, points and seeds that
were asked for) and each trial's `summary.json` (final held-out score) and `metrics.jsonl` (validation
rows: the learning curves; "train" rows: SAT's k_t and L_fake / L_real, sweeps/balance.py). Per point: mean ±
95% CI over seeds, and for runs that log k_t the step where it first leaves 0 and L_fake / L_real early, midway
and late; per comparison of the preset: the paired difference (point - baseline) over seeds with the smallest
difference its test could detect (sweeps/stats.py, min_detectable_difference); the papers' numbers or
findings beside them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_pipelines.errors import UserError
from harness.curves import read_metrics, series
from harness.files import atomic_path, write_json, write_text_atomic
from harness.stats import estimate, min_detectable_difference, paired_difference
from sweeps.balance import WINDOWS, run_balance
from sweeps.presets import get_preset
from sweeps.trial import run_name, stopped_early


def collect(experiment_dir: Path) -> dict[str, Any]:
    """{"manifest", "scores": {point: {seed: value}}, "curves": {point: {seed: [(step, value)]}}, "metric",
    "stopped_early": [run], "balance": {point: {seed: sweeps.balance.run_balance}}, "train": {point: {seed:
    {"k": (steps, k_t), "ratio": (steps, L_fake / L_real)}}} (runs that log k_t only)}"""
    manifest_path = experiment_dir / "sweep.json"
    if not manifest_path.is_file():
        raise UserError(f"{experiment_dir} is not a sweep directory (no sweep.json)")
    manifest = json.loads(manifest_path.read_text())
    scores: dict[str, dict[int, float]] = {p: {} for p in manifest["points"]}
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {p: {} for p in manifest["points"]}
    balance: dict[str, dict[int, dict]] = {p: {} for p in manifest["points"]}
    train: dict[str, dict[int, dict]] = {p: {} for p in manifest["points"]}
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
                s = series(read_metrics(run))
                curves[point][seed] = list(zip(*s["score"])) if "score" in s else []
                if (b := run_balance(s)) is not None:
                    balance[point][seed] = b
                    train[point][seed] = {"k": s["k"]}
                    if "l_fake" in s and "l_real" in s:
                        train[point][seed]["ratio"] = (s["l_fake"][0], [f / r if r > 0 else float("nan") for f, r
                                                                        in zip(s["l_fake"][1], s["l_real"][1])])
    return {"manifest": manifest, "scores": scores, "curves": curves, "metric": metric, "stopped_early": early,
            "balance": balance, "train": train}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def point_balance(by_seed: dict[int, dict]) -> dict[str, Any]:
    """A point's k_t and L_fake / L_real over its seeds (report.json's "balance")."""
    ratios = [b.get("l_fake_over_l_real") or dict.fromkeys(WINDOWS) for b in by_seed.values()]
    return {"k_first_positive_step": {str(s): b["k"]["step"] for s, b in sorted(by_seed.items())},
            "k_first_positive_after": {str(s): b["k"]["after"] for s, b in sorted(by_seed.items())},
            "k_final_mean": _mean([b["k"]["final"] for b in by_seed.values()]),
            "log_every": next((b["log_every"] for b in by_seed.values() if b["log_every"]), None),
            "l_fake_over_l_real_mean": {w: _mean([r[w] for r in ratios]) for w in WINDOWS}}


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
    for point in manifest["points"]:
        if data["balance"][point]:
            points[point]["balance"] = point_balance(data["balance"][point])
    for c in comparisons:
        d = c["difference"]
        c["detectable"] = min_detectable_difference(d["std"], d["n"]) if d else None
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


def _balance_lines(summary: dict[str, Any]) -> list[str]:
    """The k_t table: points whose runs log k_t (SAT)."""
    rows = {p: e["balance"] for p, e in summary["points"].items() if "balance" in e}
    if not rows:
        return []
    every = next((b["log_every"] for b in rows.values() if b["log_every"]), None)
    lines = ["", f"SAT's balance per point (each run's metrics.jsonl; k_t logged every {every} steps, so a step s "
             f"below means k_t was 0 at the logged step before s and > 0 at s; \"never\": 0 at every logged step). "
             "L_fake / L_real: mean of the logged ratios over the first, middle and last fifth of the run, then "
             "over seeds.", "",
             "| point | k_t first > 0 at step (per seed) | final k_t (mean) | L_fake / L_real start | middle | end |",
             "|---|---|---|---|---|---|"]

    def num(v, digits=3):
        return "-" if v is None else f"{v:.{digits}g}"

    for point, b in rows.items():
        first = ", ".join("never" if v is None else str(v) for v in b["k_first_positive_step"].values())
        r = b["l_fake_over_l_real_mean"]
        lines.append(f"| `{point}` | {first} | {num(b['k_final_mean'])} | {num(r['start'])} | {num(r['middle'])} | "
                     f"{num(r['end'])} |")
    return lines


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
    lines += _balance_lines(summary)
    if summary["comparisons"]:
        lines += ["", "Paired differences (point - baseline, same seeds), and the smallest difference each "
                  "comparison could detect: MDD = (t(0.975, n-1) + t(0.80, n-1)) * s_d / sqrt(n), s_d the paired "
                  "differences' standard deviation over n seeds (two-sided paired t-test, alpha 0.05, 80% power; "
                  "a true difference smaller than MDD is more likely missed than found):", "",
                  "| point | baseline | difference ± 95% CI | detectable (MDD) |" + paper_head,
                  "|---|---|---|---|" + paper_rule]
        for c in summary["comparisons"]:
            paper = f" {c['paper']:+.1f} |" if "paper" in c else " - |"
            mdd = f"{c['detectable']:.2f}" if c.get("detectable") is not None else "-"
            lines.append(f"| `{c['point']}` | `{c['baseline']}` | {_fmt(c['difference'])} | {mdd} |"
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
    base = 3 if preset.axis else 2
    has_balance = any(data["train"][p] for p in data["train"])
    panels = base + 2 * has_balance
    cols = min(3, panels)
    rows = -(-panels // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    axes = list(grid.flat)
    for extra in axes[panels:]:
        extra.set_visible(False)
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
            if p not in preset.axis.x:  # a baseline off the axis (sat-gamma's `none`): a horizontal line
                ax.axhline(means[names.index(p)], color="grey", ls="--", lw=1, label=p)
                continue
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
    if has_balance:
        _balance_panels(data, axes[base], axes[base + 1])
    ax = axes[base - 1]
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


def _balance_panels(data: dict[str, Any], ax_k, ax_ratio) -> None:
    """k_t and L_fake / L_real over steps, each seed of each point that logs them (colours as the curves')."""
    for i, point in enumerate(data["curves"]):
        for j, run in enumerate(data["train"][point].values()):
            label = point if j == 0 else None
            ax_k.plot(*run["k"], color=f"C{i % 10}", alpha=0.8, lw=1, label=label)
            if "ratio" in run:
                ax_ratio.plot(*run["ratio"], color=f"C{i % 10}", alpha=0.6, lw=0.8, label=label)
    ax_k.set_xlabel("step")
    ax_k.set_title("k_t (each seed)")
    ax_k.legend(fontsize=7)
    ax_ratio.set_xlabel("step")
    ax_ratio.set_title("L_fake / L_real (each seed)")
    ax_ratio.legend(fontsize=7)


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
