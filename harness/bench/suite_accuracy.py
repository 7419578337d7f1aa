"""`bench accuracy`: how soon each variant reaches a score, under one budget, on the preset's official metric.

Every (seed, variant) is one ordinary harness.trainer.Trainer run in this process (seeds outer, variants inner,
so a change in the machine's load falls on every variant of a seed), its budget `--images K` (train.max_steps =
ceil(K / batch)) or `--minutes M` (train.max_minutes = M, the preset's max_steps and its lr schedule still apply)
or the preset's own. Validation follows the config (train.val_every steps, so fixed image counts; on
data.max_val_samples test records, with train.flip_test), and a sink beside the run's own records each score
with the images and the training seconds behind it: the trainer's clock, steps and data waits only, so
validation and checkpoint time never count as training time. After each run G is scored once more on the
whole held-out split (data.max_val_samples ignored), with and without the flip test: the final score.

Statistics over seeds (harness.stats): mean +- the Student-t 95% interval per validation point and of the final
score; paired differences of each variant against the first (same seed); time to `--target` (the first
validation at or above it, in images and training minutes). The mean-pose baseline (harness.bench.mean_pose)
is the floor.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from data_pipelines.errors import UserError
from harness.bench.mean_pose import mean_crop_pose, place
from harness.bench.variants import Variant
from harness.config import Config, config_from_dict
from harness.data import RunData, load_split
from harness.evaluate import predict_dataset, score_records
from harness.sinks import Sink, build_sinks
from harness.stats import estimate, paired_difference


class CurveSink(Sink):
    """Each validation score with the images and training seconds before it (the trainer's `step` events:
    step and data-wait seconds only) and the wall seconds since the run started (validation included)."""

    def __init__(self):
        self.images, self.train_s, self.t0 = 0, 0.0, time.perf_counter()
        self.points: list[dict[str, Any]] = []

    def step(self, step: int, fields: dict[str, float]) -> None:
        self.images += int(fields["images"])
        self.train_s += float(fields["step_s"])

    def record(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "val":
            self.points.append({"step": int(fields["step"]), "images": self.images,
                                "train_min": self.train_s / 60, "elapsed_min": (time.perf_counter() - self.t0) / 60,
                                "value": float(fields["value"])})


def budgeted(cfg: Config, seed: int, images: int | None, minutes: float | None) -> Config:
    """The run's config: the variant's, with this seed and the budget."""
    d = cfg.to_dict()
    d["train"]["seed"] = seed
    if images is not None:
        d["train"].update(max_steps=math.ceil(images / cfg.train.batch_size), max_minutes=None)
    if minutes is not None:
        d["train"]["max_minutes"] = minutes
    return config_from_dict(d, "bench accuracy")


def full_test(cfg: Config) -> Config:
    """The config whose held-out split is the whole of it (the final score)."""
    d = cfg.to_dict()
    d["data"]["max_val_samples"] = None
    return config_from_dict(d, "bench accuracy (final score)")


def final_scores(generator, cfg: Config, data: RunData, device) -> dict[str, float | None]:
    """G's score on the whole held-out split with the flip test (None where the config turns it off: the
    synthetic people) and without; the metric's name."""
    out: dict[str, Any] = {"flip": None}
    for key, flip in (("no_flip", False), ("flip", True)):
        if flip and not cfg.train.flip_test:
            continue
        preds = predict_dataset(generator, data.val_loader(max(cfg.train.batch_size, 8)), device, data.skeleton,
                                flip_test=flip, precision=cfg.train.precision)
        h = score_records(data.val_records, preds, cfg.data.name, coco_annotations=data.val_annotations).headline()
        out[key], out["metric"] = float(h["value"]), h["metric"]
    out["value"] = out["flip"] if out["flip"] is not None else out["no_flip"]
    return out


def mean_pose_baseline(cfg: Config) -> dict[str, Any]:
    """The training set's mean crop pose in every test crop, scored like the models' final score."""
    train = load_split(cfg.data, "train")[: cfg.data.max_train_samples]
    test = load_split(cfg.data, "val")
    preds = place(mean_crop_pose(train, cfg.data.input_size), test, cfg.data.input_size)
    h = score_records(test, preds, cfg.data.name).headline()
    return {"value": float(h["value"]), "metric": h["metric"], "train_records": len(train),
            "test_records": len(test), "per_joint": h["per_joint"]}


def time_to(curve: list[dict], target: float | None) -> dict | None:
    """The first validation at or above `target`, or None."""
    if target is None:
        return None
    return next(({"step": p["step"], "images": p["images"], "train_min": p["train_min"]}
                 for p in curve if p["value"] >= target), None)


def run_one(v: Variant, seed: int, images: int | None, minutes: float | None, target: float | None,
            work: Path, final_data: dict) -> dict[str, Any]:
    from harness.step import unwrap
    from harness.trainer import Trainer

    cfg = budgeted(v.cfg, seed, images, minutes)
    run_dir = work / f"{v.name}-seed{seed}"
    curve = CurveSink()
    sinks = build_sinks(cfg, 0, run_dir, interactive=False)
    sinks.sinks.append(curve)
    trainer = Trainer(cfg, run_dir, sinks=sinks)
    if trainer.rt.distributed:
        raise UserError("bench accuracy runs in one process (its variants and seeds one after another)")
    summary = trainer.fit()
    key = repr(cfg.data)
    if key not in final_data:
        final_data[key] = RunData(full_test(cfg), train=False)
    final = final_scores(unwrap(trainer.g.module), cfg, final_data[key], trainer.rt.device)
    return {"variant": v.name, "seed": seed, "steps": summary["steps"], "images": trainer.images,
            "train_min": trainer.train_time / 60, "elapsed_min": (time.perf_counter() - curve.t0) / 60,
            "images_per_s": summary["images_per_s"], "stopped_by": "max_minutes" if trainer.time_up else "max_steps",
            "curve": curve.points, "final": final, "time_to_target": time_to(curve.points, target),
            "device": str(trainer.rt.device)}


def _curve_stats(runs: list[dict]) -> list[dict]:
    """Mean +- CI over seeds at each validation step every seed reached."""
    by_step: dict[int, list[dict]] = {}
    for r in runs:
        for p in r["curve"]:
            by_step.setdefault(p["step"], []).append(p)
    out = []
    for step, pts in sorted(by_step.items()):
        if len(pts) < len(runs):
            continue
        out.append({"step": step, "images": pts[0]["images"],
                    "train_min": sum(p["train_min"] for p in pts) / len(pts),
                    "value": estimate([p["value"] for p in pts]).to_json()})
    return out


def summarize(variants: list[str], runs: list[dict], baseline: dict, target: float | None) -> list[dict]:
    """The report's rows: one per variant (first: the reference of the paired differences), then the baseline."""
    finals = {v: {r["seed"]: r["final"]["value"] for r in runs if r["variant"] == v} for v in variants}
    rows = []
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        final = estimate(list(finals[v].values()))
        no_flip = estimate([r["final"]["no_flip"] for r in mine])
        paired = paired_difference(finals[v], finals[variants[0]]) if v != variants[0] else None
        reached = [r["time_to_target"] for r in mine if r["time_to_target"] is not None]
        rows.append({
            "key": v, "variant": v, "value": final.mean, "metric": mine[0]["final"]["metric"] + " (%)",
            "higher_is_better": True, "seeds": sorted(finals[v]), "final": final.to_json(),
            "final_no_flip": no_flip.to_json(), "flip_test": mine[0]["final"]["flip"] is not None,
            "paired_vs_first": paired.to_json() if paired else None,
            "over_baseline": final.mean - baseline["value"],
            "target": target, "target_reached": f"{len(reached)}/{len(mine)}",
            "time_to_target_min": estimate([t["train_min"] for t in reached]).to_json()
            if target is not None and len(reached) == len(mine) else None,
            "images_to_target": estimate([float(t["images"]) for t in reached]).to_json()
            if target is not None and len(reached) == len(mine) else None,
            "images": estimate([float(r["images"]) for r in mine]).mean,
            "train_min": estimate([r["train_min"] for r in mine]).mean,
            "images_per_s": estimate([r["images_per_s"] or 0.0 for r in mine]).mean,
            "curve": _curve_stats(mine)})
    rows.append({"key": "mean-pose baseline", "variant": "mean-pose baseline", "value": baseline["value"],
                 "metric": baseline["metric"] + " (%)", "higher_is_better": True, "baseline": True})
    return rows


def run(variants: list[Variant], seeds: int, images: int | None, minutes: float | None,
        target: float | None) -> dict[str, Any]:
    if seeds < 1:
        raise UserError("--seeds must be at least 1")
    if images is not None and minutes is not None:
        raise UserError("give --images or --minutes, not both")
    if (images is not None and images < 1) or (minutes is not None and minutes <= 0):
        raise UserError("--images and --minutes must be positive")
    skipped = [v.name for v in variants if v.cfg is None]
    if skipped:
        raise UserError(f"variant(s) {skipped} switch on only keys this config does not have")
    base_seed = variants[0].cfg.train.seed
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    baseline = mean_pose_baseline(variants[0].cfg)
    baseline_s = time.perf_counter() - t0
    runs: list[dict] = []
    final_data: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as work:
        for seed in range(base_seed, base_seed + seeds):
            for v in variants:
                runs.append(run_one(v, seed, images, minutes, target, Path(work), final_data))
    names = [v.name for v in variants]
    rows = summarize(names, runs, baseline, target)
    c = variants[0].cfg
    notes = [
        "training time = the trainer's clock: optimizer steps and the waits for their batches; validation, the "
        "final scoring and checkpoint writes are excluded (elapsed_min in the JSON includes them)",
        f"curves: validation every {c.train.val_every or 'epoch'} steps on "
        f"{c.data.max_val_samples or 'all'} held-out records (flip test: {c.train.flip_test}); final score: all "
        f"{baseline['test_records']} held-out records, with and without the flip test",
        f"mean-pose baseline: the mean crop pose of {baseline['train_records']} training records in each test "
        f"crop ({baseline_s:.1f} s); crops of models and baseline alike are placed from the ground-truth joints",
        "paired differences: each variant minus the first, same seed; intervals: Student-t 95% over seeds",
        "load average (1, 5, 15 min) at the start {:.1f} {:.1f} {:.1f}, at the end {:.1f} {:.1f} {:.1f}".format(
            *load_start, *os.getloadavg()),
    ]
    return {"rows": rows, "runs": runs, "baseline": baseline,
            "runtime": {"device": runs[0]["device"], "world_size": 1},
            "budget": {"images": images, "minutes": minutes, "seeds": seeds, "target": target},
            "wall_s": round(time.perf_counter() - t0, 1), "notes": notes}
