"""Sweep presets and the sweep report, without Ray: configs of every point, the seed statistics against a
hand computation, and a report rendered from a hand-made sweep folder."""

from __future__ import annotations

import json
import math

import pytest

from data_pipelines.errors import UserError
from harness.stats import estimate, min_detectable_difference, paired_difference
from sweeps.balance import k_first_positive, ratio_windows
from sweeps.presets import PRESETS, get_preset
from sweeps.report import write_report
from sweeps.trial import STOPPED_EARLY, TrialSpec, trial_config

# Student t quantiles t(0.975, df) from a printed table (NIST/SEMATECH e-Handbook, Table 1.3.6.7.2)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}


def _spec(name: str, overrides=(), gpus: int = 0) -> TrialSpec:
    return TrialSpec(get_preset(name), tuple(overrides), "/tmp/exp", "/work/dir", 1, gpus)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_point_is_a_valid_config(name):
    preset = PRESETS[name]
    assert preset.points and all(a in preset.points and b in preset.points for a, b in preset.comparisons)
    if preset.axis:  # every point on the axis but the baselines the comparisons hold up against
        off_axis = set(preset.points) - set(preset.axis.x)
        assert set(preset.axis.x) <= set(preset.points) and off_axis <= {b for _, b in preset.comparisons}
    for point in preset.points:
        cfg = trial_config(_spec(name), point, seed=1)
        assert cfg.train.seed == 1 and cfg.train.device == "cpu"
        if name == "sat-gamma-tiny":  # real LSP (the k_t question is about real heatmaps), k_t logged often
            assert cfg.data.name == "lsp" and cfg.data.root.is_absolute() and cfg.train.log_every <= 5
            assert cfg.train.max_steps <= 400 and cfg.data.input_size <= 96 and cfg.model.stacks == 1
        elif name.endswith("-tiny"):
            assert cfg.data.name == "synthetic" and cfg.train.max_steps <= 1000 and cfg.data.input_size <= 128
        elif cfg.data.root is not None:
            assert cfg.data.root.is_absolute() and str(cfg.data.root).startswith("/work")  # Tune chdirs


def test_tiny_twins_have_the_same_points():
    for name, preset in PRESETS.items():
        if not name.endswith("-tiny"):
            assert PRESETS[f"{name}-tiny"].points == preset.points


def test_point_overrides_win_and_user_overrides_reach_every_trial():
    spec = _spec("stacks-tiny", ["model.stacks=3", "train.max_steps=7"], gpus=1)
    cfg = trial_config(spec, "g8-sat", seed=0)
    assert (cfg.model.stacks, cfg.adversarial.objective, cfg.train.max_steps) == (8, "sat", 7)
    assert cfg.train.device == "cuda"  # GPU trials run the preset's device (paper presets require CUDA)
    cfg = trial_config(spec, "g2-none", seed=0)
    assert (cfg.model.stacks, cfg.adversarial.objective) == (2, "none")
    assert trial_config(_spec("thesis-alpha-tiny"), "alpha-1over110", 0).adversarial.cgan.alpha == 1 / 110
    assert trial_config(_spec("thesis-delta"), "delta-0.8", 0).adversarial.cgan.delta == 0.8
    assert trial_config(_spec("sat-fig10"), "g1-uncond", 0).discriminator.conditional is False


def test_bad_preset_and_bad_override_are_user_errors():
    with pytest.raises(UserError, match="unknown sweep preset 'nope'"):
        get_preset("nope")
    with pytest.raises(UserError, match="unknown key"):
        trial_config(_spec("stacks-tiny", ["model.stack=3"]), "g1-sat", 0)


def test_estimate_against_hand_computation():
    values = [70.0, 72.5, 71.0]
    mean = (70.0 + 72.5 + 71.0) / 3
    s = math.sqrt(((70.0 - mean) ** 2 + (72.5 - mean) ** 2 + (71.0 - mean) ** 2) / 2)
    e = estimate(values)
    assert e.n == 3 and e.mean == pytest.approx(mean) and e.std == pytest.approx(s)
    assert e.ci95 == pytest.approx(T975[2] * s / math.sqrt(3), rel=1e-3)
    assert estimate([5.0]).ci95 is None
    d = paired_difference({0: 3.0, 1: 5.0, 2: 4.0, 3: 9.9}, {0: 1.0, 1: 2.0, 2: 2.5})  # seed 3 unpaired
    diffs = [2.0, 3.0, 1.5]
    dm = sum(diffs) / 3
    ds = math.sqrt(sum((x - dm) ** 2 for x in diffs) / 2)
    assert d.n == 3 and d.mean == pytest.approx(dm) and d.ci95 == pytest.approx(T975[2] * ds / math.sqrt(3), rel=1e-3)
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


# t(0.80, df) from the same table (its 0.20 upper-tail column)
T80 = {2: 1.061}


def test_sat_gamma_grid():
    preset = get_preset("sat-gamma-tiny")
    assert preset.seeds >= 3 and len(preset.points) == 7
    got = set()
    for point in preset.points:
        sat = trial_config(_spec("sat-gamma-tiny"), point, 0).adversarial
        if point == "none":
            assert sat.objective == "none"
            continue
        assert sat.objective == "sat" and sat.sat.k0 == 0.0
        got.add((sat.sat.gamma, sat.sat.lambda_k))
    assert got == {(g, lk) for g in (0.5, 1.0, 2.0) for lk in (1e-3, 1e-2)}
    assert {b for _, b in preset.comparisons} == {"none"} and len(preset.comparisons) == 6


def test_min_detectable_difference_against_hand_computation():
    # paired differences 1, 3, 2 over 3 seeds: s_d = 1; MDD = (4.303 + 1.061) * 1 / sqrt(3) = 3.097
    assert min_detectable_difference(1.0, 3) == pytest.approx((T975[2] + T80[2]) / math.sqrt(3), rel=1e-3)
    assert min_detectable_difference(1.0, 3) == pytest.approx(3.097, abs=2e-3)
    assert min_detectable_difference(2.5, 3) == pytest.approx(2.5 * 3.097, rel=1e-3)  # linear in s_d
    assert min_detectable_difference(None, 1) is None and min_detectable_difference(1.0, 1) is None


def test_k_first_positive_and_ratio_windows():
    assert k_first_positive([1, 5, 10, 15], [0.0, 0.0, 0.002, 0.0]) == {"step": 10, "after": 5, "final": 0.0}
    assert k_first_positive([1, 5], [0.0, 0.0])["step"] is None
    assert k_first_positive([1, 5], [0.1, 0.2])["after"] == 0
    fake, real = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [2.0] * 10  # ratios 0.5 .. 5, windows of 2 rows
    assert ratio_windows(fake, real) == {"start": 0.75, "middle": pytest.approx(2.75), "end": 4.75}


def _fake_sweep(tmp_path, preset: str, scores: dict[str, list[float]]):
    exp = tmp_path / "exp"
    seeds = len(next(iter(scores.values())))
    runs = [f"{p}-seed{s}" for p in scores for s in range(seeds)]
    exp.mkdir()
    (exp / "sweep.json").write_text(json.dumps({"preset": preset, "overrides": ["train.max_steps=5"],
                                                "seeds": seeds, "points": list(scores), "runs": runs}))
    for point, values in scores.items():
        for seed, value in enumerate(values):
            run = exp / f"{point}-seed{seed}"
            run.mkdir()
            if value == "stopped":  # ASHA's mark (sweeps/asha.py)
                (run / STOPPED_EARLY).write_text(json.dumps({"by": "asha", "training_iteration": 1}))
            if value in (None, "stopped"):
                continue
            (run / "summary.json").write_text(json.dumps({"metric": "PCK@0.2", "value": value, "steps": 5}))
            rows = [{"kind": "val", "step": k, "value": value * k / 4, "metric": "PCK@0.2"} for k in (2, 4)]
            if point.startswith("sat-"):  # SAT runs log k_t: it leaves 0 at step 5 * (seed + 2), L_fake = 0.8 L_real
                rows += [{"kind": "train", "step": st, "k": 0.0 if st < 5 * (seed + 2) else 1e-3, "l_real": 0.5,
                          "l_fake": 0.4} for st in (1, 5, 10, 15, 20)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return exp


def test_report_renders_with_right_numbers(tmp_path):
    scores = {"alpha-1over270": [60.0, 64.0, 62.0], "alpha-1over200": [61.0, 66.0, 65.0],
              "alpha-1over110": [50.0, None, 58.0]}
    exp = _fake_sweep(tmp_path, "thesis-alpha-tiny", scores)
    paths = write_report(exp, tmp_path / "out")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(paths["json"].read_text())
    est = report["points"]["alpha-1over270"]["estimate"]
    assert est["mean"] == pytest.approx(62.0) and est["std"] == pytest.approx(2.0)
    assert est["ci95"] == pytest.approx(T975[2] * 2.0 / math.sqrt(3), rel=1e-3)
    assert report["points"]["alpha-1over110"]["estimate"]["n"] == 2
    assert report["missing"] == ["alpha-1over110-seed1"]
    comp = {(c["point"], c["baseline"]): c["difference"] for c in report["comparisons"]}
    d = comp[("alpha-1over270", "alpha-1over200")]  # differences -1, -2, -3
    assert (d["n"], d["mean"], d["std"]) == (3, pytest.approx(-2.0), pytest.approx(1.0))
    d = comp[("alpha-1over110", "alpha-1over200")]  # seeds 0 and 2 only: -11, -7
    assert (d["n"], d["mean"]) == (2, pytest.approx(-9.0))
    assert d["ci95"] == pytest.approx(T975[1] * math.sqrt(8.0) / math.sqrt(2), rel=1e-3)
    md = paths["markdown"].read_text()
    assert "| `alpha-1over270` | 62.00 ± 4.97 | 60.00, 64.00, 62.00 |" in md
    assert "1/200" in md and "![report.png](report.png)" in md


def test_report_tells_runs_asha_stopped_from_unfinished_ones(tmp_path):
    scores = {"alpha-1over270": [60.0, "stopped"], "alpha-1over200": [61.0, None], "alpha-1over110": [50.0, 52.0]}
    report_dir = write_report(_fake_sweep(tmp_path, "thesis-alpha-tiny", scores), tmp_path / "out")
    report = json.loads(report_dir["json"].read_text())
    assert report["stopped_early"] == ["alpha-1over270-seed1"]
    assert report["missing"] == ["alpha-1over200-seed1"]
    assert report["points"]["alpha-1over270"]["estimate"]["n"] == 1
    md = report_dir["markdown"].read_text()
    assert "Stopped early by ASHA (no final result): alpha-1over270-seed1" in md
    assert "Runs without a result (unfinished or failed): alpha-1over200-seed1" in md


def test_report_cli_and_errors(tmp_path, capsys):
    from harness.cli import main

    exp = _fake_sweep(tmp_path, "sat-fig10-tiny", {p: [50.0, 52.0] for p in get_preset("sat-fig10").points})
    assert main(["sweep", "report", str(exp)]) == 0
    assert (exp / "report.md").is_file()
    assert main(["sweep", "report", str(tmp_path)]) == 2
    assert "is not a sweep directory" in capsys.readouterr().err
    assert main(["sweep"]) == 2


def test_report_puts_the_thesis_numbers_beside_ours(tmp_path):
    points = get_preset("thesis-table6-1").points
    exp = _fake_sweep(tmp_path, "thesis-table6-1-tiny", {p: [50.0, 52.0] for p in points})
    report = json.loads(write_report(exp)["json"].read_text())
    assert report["points"]["g4-cgan"]["paper"] == 91.3 and report["points"]["g2-none"]["paper"] == 88.3
    comp = {c["point"]: c for c in report["comparisons"]}
    assert comp["g4-cgan"]["paper"] == pytest.approx(0.4) and comp["g2-cgan"]["paper"] == pytest.approx(-0.5)
    md = (exp / "report.md").read_text()
    assert "| `g4-cgan` | 51.00 ± 12.71 | 50.00, 52.00 | 91.3 |" in md and "| +0.4 |" in md


def test_report_has_k_t_and_detectable_difference_columns(tmp_path):
    points = list(get_preset("sat-gamma").points)
    scores = {p: [50.0 + i, 52.0 + i, 51.0 + 2 * i] for i, p in enumerate(points)}  # diffs vs none: i, i, 2i
    paths = write_report(_fake_sweep(tmp_path, "sat-gamma-tiny", scores), tmp_path / "out")
    report = json.loads(paths["json"].read_text())
    bal = report["points"]["sat-g1-lk0.001"]["balance"]
    assert bal["k_first_positive_step"] == {"0": 10, "1": 15, "2": 20} and bal["log_every"] == 5
    assert bal["l_fake_over_l_real_mean"] == {"start": pytest.approx(0.8), "middle": pytest.approx(0.8),
                                              "end": pytest.approx(0.8)}
    assert "balance" not in report["points"]["none"]
    comp = {c["point"]: c for c in report["comparisons"]}
    i = points.index("sat-g2-lk0.001")  # differences i, i, 2i: s_d = i / sqrt(3)
    assert comp["sat-g2-lk0.001"]["detectable"] == pytest.approx((T975[2] + T80[2]) * (i / math.sqrt(3)) / math.sqrt(3),
                                                                 rel=1e-3)
    md = paths["markdown"].read_text()
    assert "| `sat-g1-lk0.001` | 10, 15, 20 | 0.001 | 0.8 | 0.8 | 0.8 |" in md
    assert "k_t logged every 5 steps" in md and "MDD = (t(0.975, n-1) + t(0.80, n-1)) * s_d / sqrt(n)" in md
    assert f"| {comp['sat-g2-lk0.001']['detectable']:.2f} |" in md
