"""A run's curves from its `metrics.jsonl`: losses, k_t, learning rates, img/s and the held-out score over steps.

`read_metrics(run_dir)` is the one reader of the rows `harness/sinks/jsonl.py` writes (the sweep report uses it
too); `series(rows)` turns them into {name: (steps, values)}; `write_curves(runs, path)` draws one figure of
six panels (several runs overlay: one colour per run, one line style per series) and writes the PNG atomically.
It returns what each panel's lines hold, read back from the drawn lines, so a test checks the data the
figure shows. Every `harness train` run leaves `<run-dir>/curves.png` (rank 0, at the end of the run);
`python -m harness curves RUN_DIR... [--out FILE]` overlays runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_pipelines.errors import UserError
from harness.files import atomic_path

# panel title -> the "train" row fields drawn in it ("val" rows: the score panel)
PANELS: dict[str, tuple[str, ...]] = {
    "generator loss": ("loss_g", "loss_mse", "loss_adv"),
    "discriminator: L_D, L_real, L_fake": ("loss_d", "l_real", "l_fake"),
    "k_t (sat) / d_fake ratio (cgan)": ("k", "d_fake"),
    "learning rate": ("lr_g", "lr_d"),
    "images/s (logged steps)": ("images_per_s",),
}
SCORE_PANEL = "held-out score (%)"
_STYLES = ("-", "--", ":", "-.")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of `<run_dir>/metrics.jsonl`; a clear error when it is not a run folder or a line is not JSON."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder of `harness train` (no metrics.jsonl)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
    return rows


def series(rows: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """{field: (steps, values)} of the "train" rows' numeric fields, and "score" from the "val" rows (the
    last row of a step wins: a resumed run logs a step again)."""
    by_name: dict[str, dict[int, float]] = {}
    for row in rows:
        if row.get("kind") == "train":
            for key, value in row.items():
                if key not in ("step", "epoch", "time") and isinstance(value, int | float) \
                        and not isinstance(value, bool):
                    by_name.setdefault(key, {})[int(row["step"])] = float(value)
        elif row.get("kind") == "val" and row.get("value") is not None:
            by_name.setdefault("score", {})[int(row["step"])] = float(row["value"])
    return {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in by_name.items()}


def metric_name(rows: list[dict[str, Any]]) -> str | None:
    return next((r["metric"] for r in rows if r.get("kind") == "val" and r.get("metric")), None)


def write_curves(runs: dict[str, str | Path], path: str | Path) -> dict[str, dict[str, tuple[list, list]]]:
    """Draw the runs {label: run_dir} into `path` (PNG, written atomically); returns {panel title: {line label:
    (x, y)}} as read back from the figure's lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        raise UserError("curves: no run folder given")
    data = {label: read_metrics(d) for label, d in runs.items()}
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    titles = [*PANELS, SCORE_PANEL]
    metric = next((m for m in map(metric_name, data.values()) if m), None)
    for i, (label, rows) in enumerate(data.items()):
        s = series(rows)
        prefix = f"{label}: " if len(runs) > 1 else ""
        for ax, title in zip(axes.flat, titles):
            fields = PANELS.get(title, ("score",))
            for j, name in enumerate(f for f in fields if f in s):
                steps, values = s[name]
                ax.plot(steps, values, _STYLES[j % len(_STYLES)], color=f"C{i % 10}", lw=1.2,
                        marker="o" if name == "score" else None, ms=3, label=f"{prefix}{name}")
    for ax, title in zip(axes.flat, titles):
        ax.set_title(f"{metric} (held-out)" if title == SCORE_PANEL and metric else title, fontsize=10)
        ax.set_xlabel("step")
        if ax.get_lines():
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in axes.flat[:2]:  # losses span decades: log scale where every value is positive
        if ax.get_lines() and all(min(line.get_ydata()) > 0 for line in ax.get_lines()):
            ax.set_yscale("log")
    fig.suptitle(" vs ".join(runs) if len(runs) > 1 else f"run {next(iter(runs))}", fontsize=11)
    fig.tight_layout()
    drawn = {title: {line.get_label(): ([float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()])
                     for line in ax.get_lines()} for ax, title in zip(axes.flat, titles)}
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return drawn


def run_labels(run_dirs: list[str | Path]) -> dict[str, Path]:
    """{label: run_dir}: each folder's name, or its path where two runs share a name."""
    paths = [Path(d) for d in run_dirs]
    names = [p.name or str(p) for p in paths]
    return {(n if names.count(n) == 1 else str(p)): p for n, p in zip(names, paths)}
