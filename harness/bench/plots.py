"""One PNG per report (matplotlib, Agg): throughput per variant with its spread, the step-latency
distribution, infer's img/s over batch sizes, scaling's img/s and efficiency over world sizes, accuracy's score
over images and over training minutes (each seed thin, the mean over seeds thick, the mean-pose baseline and
the target dashed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _bars(ax, rows, label: str) -> None:
    rows = [r for r in rows if r.get("value")]
    names = [r["key"] for r in rows]
    med = [r["value"] for r in rows]
    s = [r.get("images_per_s") or {"min": v, "max": v} for r, v in zip(rows, med)]
    err = [[v - x["min"] for v, x in zip(med, s)], [x["max"] - v for v, x in zip(med, s)]]
    ax.barh(names, med, xerr=err, color="tab:blue", capsize=3)
    ax.set_xlabel(label)
    ax.invert_yaxis()


def _latency(ax, rows, key: str = "latencies_ms") -> None:
    rows = [r for r in rows if r.get(key)]
    if rows:
        ax.boxplot([r[key] for r in rows], orientation="horizontal", whis=(1, 99))
        ax.set_yticks(range(1, len(rows) + 1), [r["key"] for r in rows])
        ax.invert_yaxis()
    ax.set_xlabel("latency, ms (whiskers p1-p99)")


def _accuracy(axes, report: dict) -> None:
    rows = [r for r in report["rows"] if not r.get("baseline")]
    base = next(r for r in report["rows"] if r.get("baseline"))
    target = report.get("budget", {}).get("target")
    for ax, x, label in ((axes[0], "images", "training images"),
                         (axes[1], "train_min", "training minutes (validation excluded)")):
        for i, row in enumerate(rows):
            color = f"C{i}"
            for run in (r for r in report["runs"] if r["variant"] == row["variant"]):
                ax.plot([p[x] for p in run["curve"]], [p["value"] for p in run["curve"]], color=color, lw=0.7,
                        alpha=0.5)
            mean = [p["value"]["mean"] for p in row["curve"]]
            half = [p["value"]["ci95"] or 0.0 for p in row["curve"]]
            xs = [p[x] for p in row["curve"]]
            ax.plot(xs, mean, "o-", color=color, lw=2, label=f"{row['variant']} (mean of {len(row['seeds'])})")
            ax.fill_between(xs, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)],
                            color=color, alpha=0.15)
        ax.axhline(base["value"], color="gray", ls="--", label=f"mean-pose baseline {base['value']:.1f}")
        if target is not None:
            ax.axhline(target, color="k", ls=":", lw=0.8, label=f"target {target:g}")
        ax.set_xlabel(label)
        ax.set_ylabel(rows[0]["metric"] if rows else "score")
        ax.legend(fontsize=8)


def plot(report: dict, path: Path) -> None:
    suite, rows = report["suite"], report["rows"]
    height = 4.5 if suite == "accuracy" else max(3.0, 0.45 * len(rows) + 1.5)
    fig, axes = plt.subplots(1, 2, figsize=(13, height))
    if suite in ("train", "infer"):
        _bars(axes[0], rows, "images/s (median over repeats; bars: min-max)")
        _latency(axes[1], rows)
    elif suite == "data":
        _bars(axes[0], rows, "samples per CPU-second (per core)")
        timed = [r for r in rows if r.get("wall_per_s")]
        axes[1].barh([r["key"] for r in timed], [r["wall_per_s"] for r in timed], color="tab:green")
        axes[1].set_xlabel("samples/s (wall clock)")
        axes[1].invert_yaxis()
    elif suite == "kernels":
        timed = [r for r in rows if r.get("timed")]
        axes[0].barh([r["key"] for r in timed], [r["value"] for r in timed], color="tab:blue")
        axes[0].set_xlabel("ms per call")
        axes[0].invert_yaxis()
        axes[1].barh([r["key"] for r in timed], [r.get("x_floor") or 0 for r in timed], color="tab:orange")
        axes[1].axvline(1.0, color="k", lw=0.8)
        axes[1].set_xlabel("time / bandwidth floor")
        axes[1].invert_yaxis()
    elif suite == "compile":
        timed = [r for r in rows if r.get("value") is not None]
        axes[0].barh([r["key"] for r in timed], [r["value"] for r in timed], color="tab:blue")
        axes[0].set_xlabel("compile s (median over repeats)")
        axes[0].invert_yaxis()
        axes[1].barh([r["key"] for r in timed], [r["steady_step_ms"]["median"] for r in timed], color="tab:green")
        axes[1].set_xlabel("steady step ms (median)")
        axes[1].invert_yaxis()
    elif suite == "accuracy":
        _accuracy(axes, report)
    elif suite == "scaling":
        w = [r["world_size"] for r in rows]
        axes[0].plot(w, [r["value"] for r in rows], "o-", label="measured")
        axes[0].plot(w, [rows[0]["value"] * x for x in w], "--", color="gray", label="linear")
        axes[0].set_xlabel("world size")
        axes[0].set_ylabel("images/s")
        axes[0].legend()
        axes[1].plot(w, [r["efficiency"] for r in rows], "o-")
        axes[1].set_ylim(0, 1.1)
        axes[1].set_xlabel("world size")
        axes[1].set_ylabel("efficiency vs linear")
    fig.suptitle(f"bench {suite} {report.get('label') or ''} on {report['device_slug']} ({report['created'][:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
