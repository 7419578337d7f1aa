"""`bench accuracy` (issue 24): the mean-pose baseline against a plain reference, the seed statistics of the
rows against hand arithmetic, train.max_minutes, and the lsp-tta-tiny preset end to end through the CLI on real
LSP at a reduced budget (the full preset's figures are in the committed report, docs/benchmarks/)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from data_pipelines.geometry import crop_affine
from data_pipelines.lsp import load_lsp
from harness.bench import SCHEMA
from harness.bench.mean_pose import mean_crop_pose, place
from harness.bench.suite_accuracy import mean_pose_baseline, summarize, time_to
from harness.cli import main
from harness.config import G_STRIDE, load_config
from harness.evaluate import score_records
from harness.precision import cpu_has_bf16_kernels

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_mean_pose_against_a_loop(lsp_root):
    records = load_lsp(lsp_root, "train")[:50]
    size = 96
    ref = np.zeros((14, 2))
    for r in records:
        A = crop_affine(r.center, r.scale, size)
        for j in range(14):
            x, y = r.joints[j]
            ref[j] += (A[0, 0] * x + A[0, 1] * y + A[0, 2], A[1, 0] * x + A[1, 1] * y + A[1, 2])
    np.testing.assert_allclose(mean_crop_pose(records, size), ref / len(records), rtol=0, atol=1e-9)


def test_placing_each_records_own_crop_pose_gives_its_joints_back(lsp_root):
    records = load_lsp(lsp_root, "test")[:20]
    for r in records:
        own = mean_crop_pose([r], 64)  # one record: its own pose in its crop
        np.testing.assert_allclose(place(own, [r], 64)[0], r.joints, atol=1e-9)
    preds = {i: place(mean_crop_pose([r], 64), [r], 64)[0] for i, r in enumerate(records)}
    assert score_records(records, preds, "lsp").headline()["value"] == 100.0


def test_mean_pose_baseline_does_not_depend_on_the_crop_size(lsp_root):
    def at(s: int) -> list[str]:
        return [f"data.root={lsp_root}", f"data.input_size={s}", f"data.heatmap_size={s // G_STRIDE}", "model.depth=2"]
    values = {s: mean_pose_baseline(load_config("lsp-tta-tiny", None, at(s)))["value"] for s in (64, 256)}
    assert 5 < values[64] < 40 and values[64] == pytest.approx(values[256], abs=1e-9)


def test_rows_paired_differences_and_time_to_target_by_hand():
    def run(variant, seed, final, curve):
        return {"variant": variant, "seed": seed, "images": 64, "train_min": 1.0, "images_per_s": 10.0,
                "final": {"value": final, "no_flip": final - 1, "flip": final, "metric": "PCK@0.2"},
                "curve": [{"step": s, "images": 16 * s, "train_min": s / 10, "value": v} for s, v in curve],
                "time_to_target": None}
    runs = [run("sat", 0, 30.0, [(2, 10.0), (4, 26.0)]), run("none", 0, 28.0, [(2, 12.0), (4, 24.0)]),
            run("sat", 1, 34.0, [(2, 14.0), (4, 30.0)]), run("none", 1, 30.0, [(2, 16.0), (4, 24.5)])]
    for r in runs:
        r["time_to_target"] = time_to(r["curve"], 25.0)
    assert runs[0]["time_to_target"] == {"step": 4, "images": 64, "train_min": 0.4}
    assert runs[1]["time_to_target"] is None
    rows = {r["key"]: r for r in summarize(["sat", "none"], runs, {"value": 20.0, "metric": "PCK@0.2"}, 25.0)}
    t975 = 12.706204736  # Student t, 1 degree of freedom
    assert rows["sat"]["final"]["mean"] == 32.0 and rows["sat"]["final"]["ci95"] == pytest.approx(t975 * 2)
    paired = rows["none"]["paired_vs_first"]  # none - sat per seed: -2, -4
    assert paired["mean"] == -3.0 and paired["ci95"] == pytest.approx(t975 * math.sqrt(2) / math.sqrt(2))
    assert rows["sat"]["paired_vs_first"] is None and rows["none"]["over_baseline"] == 9.0
    assert rows["sat"]["target_reached"] == "2/2" and rows["sat"]["time_to_target_min"]["mean"] == 0.4
    assert rows["none"]["target_reached"] == "0/2" and rows["none"]["time_to_target_min"] is None
    curve = rows["none"]["curve"]
    assert [p["step"] for p in curve] == [2, 4] and curve[1]["value"]["mean"] == 24.25
    assert rows["mean-pose baseline"]["value"] == 20.0


def test_max_minutes_stops_the_run_and_scores_its_last_step(tmp_path):
    from harness.trainer import Trainer

    cfg = load_config(None, None, ["train.device=cpu", "data.name=synthetic", "data.synthetic_train_size=32",
                                   "data.synthetic_val_size=4", "data.input_size=64", "data.heatmap_size=16",
                                   "model.stacks=1", "model.features=16", "discriminator.features=16",
                                   "train.batch_size=4", "data.num_workers=0", "train.threads=1",
                                   "train.max_steps=1000", "train.val_every=500", "train.max_minutes=1e-6"])
    trainer = Trainer(cfg, tmp_path, interactive=False)
    summary = trainer.fit()
    assert trainer.time_up and summary["steps"] == 1  # the first step already outlasts 60 microseconds
    assert trainer.validator.last_step == 1 and summary["value"] is not None
    assert (tmp_path / "checkpoints" / "step-00000001.pt").is_file()


def test_bench_accuracy_lsp_tta_tiny_reduced(tmp_path, lsp_root):
    """The preset's code path at a reduced budget: 2 steps per run, 2 seeds, sat and none; the curves on 8
    test images, the final score on all 1000 (with and without flip), the baseline."""
    args = ["bench", "accuracy", "--preset", "lsp-tta-tiny", f"data.root={lsp_root}", "data.max_val_samples=8",
            "train.val_every=1", "data.num_workers=0", "--images", "32", "--seeds", "2", "--target", "1",
            "--out", str(tmp_path)]
    assert main(args) == 0
    files = sorted(tmp_path.glob("*_accuracy_*"))
    assert {f.suffix for f in files} == {".json", ".md", ".png"}, files
    report = json.loads(next(f for f in files if f.suffix == ".json").read_text())
    assert report["schema"] == SCHEMA and report["suite"] == "accuracy"
    assert report["settings"]["seeds"] == 2 and report["settings"]["images"] == 32
    rows = {r["key"]: r for r in report["rows"]}
    assert list(rows) == ["sat", "none", "mean-pose baseline"]
    base = mean_pose_baseline(load_config("lsp-tta-tiny", None, [f"data.root={lsp_root}"]))["value"]
    assert rows["mean-pose baseline"]["value"] == pytest.approx(base) and report["baseline"]["test_records"] == 1000
    assert len(report["runs"]) == 4
    for r in report["runs"]:
        assert r["steps"] == 2 and r["images"] == 32 and r["stopped_by"] == "max_steps"
        assert [p["step"] for p in r["curve"]] == [1, 2] and [p["images"] for p in r["curve"]] == [16, 32]
        assert 0 < r["curve"][0]["train_min"] < r["curve"][1]["train_min"] <= r["train_min"] < r["elapsed_min"]
        assert 0 <= r["final"]["no_flip"] <= 100 and 0 <= r["final"]["flip"] <= 100
        assert r["final"]["value"] == r["final"]["flip"]
    for v in ("sat", "none"):
        assert rows[v]["final"]["n"] == 2 and rows[v]["final"]["ci95"] is not None
        assert [p["step"] for p in rows[v]["curve"]] == [1, 2]
    assert rows["none"]["paired_vs_first"]["n"] == 2
    md = next(f for f in files if f.suffix == ".md").read_text()
    assert "mean-pose baseline" in md and "### sat: PCK@0.2 (%) over training" in md


def test_bench_accuracy_lsp_tta_tiny_learns_well_past_the_mean_pose(tmp_path, lsp_root):
    """The whole preset, one seed, sat and none (~3 minutes on 2 cores): each variant trains its 850 steps and
    scores all 1000 test images. Floor: the mean-pose baseline + 12 points. The committed report
    (docs/benchmarks/2026-12-05_accuracy_cpu-amd-epyc_lsp-tta-tiny.md) has +16.4 over 3 seeds, single runs
    +15.2 to +18.3; on another CPU the float rounding (vector ISA, bf16 kernels) changes the trajectory like
    another seed, so the floor leaves a seed's spread below issue 24's +15. The 64 px recipe before it, +3, fails."""
    # bf16 is the preset's (AVX512-BF16 here); on a CPU without bf16 kernels fp32 keeps the test's time bounded
    # (bf16 runs 4.5x slower than fp32 there: harness.precision.cpu_has_bf16_kernels)
    precision = "bf16" if cpu_has_bf16_kernels() else "fp32"
    args = ["bench", "accuracy", "--preset", "lsp-tta-tiny", f"data.root={lsp_root}", f"train.precision={precision}",
            "--seeds", "1", "--target", "30", "--out", str(tmp_path), "--formats", "json", "md"]
    assert main(args) == 0
    report = json.loads(next(tmp_path.glob("*_accuracy_*.json")).read_text())
    rows = {r["key"]: r for r in report["rows"]}
    assert list(rows) == ["sat", "none", "mean-pose baseline"]
    base = rows["mean-pose baseline"]["value"]
    assert base == pytest.approx(19.7643, abs=1e-3)  # 1000 training records' mean pose on the 1000 test crops
    for r in report["runs"]:
        assert (r["steps"], r["images"], r["stopped_by"]) == (850, 13600, "max_steps")
        assert [p["step"] for p in r["curve"]] == [170, 340, 510, 680, 850]
        assert r["final"]["value"] == r["final"]["flip"]
        assert r["final"]["flip"] >= base + 12, (r["variant"], r["final"], base)
        assert r["curve"][-1]["value"] > r["curve"][0]["value"]


@pytest.mark.parametrize("budget", [["--images", "0"], ["--minutes", "-1"], ["--seeds", "0"]])
def test_bad_budgets_are_one_error_line(budget, capsys):
    assert main(["bench", "accuracy", "--preset", "lsp-tta-tiny", *budget]) == 2
    assert "error:" in capsys.readouterr().err
