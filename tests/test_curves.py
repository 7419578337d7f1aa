"""Curves of every run (issue 24 item 4): `<run-dir>/curves.png` after a real run, drawn from metrics.jsonl;
`harness curves` overlaying runs; the TensorBoard sink's event file; clear errors for bad input.

One tiny real run (SAT, 12 steps, k_0 = 0.3 so that k_t moves, the TensorBoard sink on) serves the module.
"""

from __future__ import annotations

import json

import pytest
from helpers import require

import harness.curves
from data_pipelines.errors import UserError
from harness import cli
from harness.commands.train import write_run_curves
from harness.curves import read_metrics, series, write_curves

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TINY = ["data.name=synthetic", "data.input_size=64", "data.heatmap_size=16", "data.synthetic_train_size=24",
        "data.synthetic_val_size=8", "data.num_workers=0", "model.stacks=1", "model.features=16",
        "discriminator.features=16", "train.batch_size=4", "train.threads=1", "train.device=cpu",
        "adversarial.objective=sat", "adversarial.sat.k0=0.3", "train.max_steps=12", "train.log_every=3",
        "train.val_every=6", "train.flip_test=false"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(run_dir, what the run's own curves.png was drawn from)."""
    require("tensorboard", "the TensorBoard sink (extra `tensorboard`)")
    run = tmp_path_factory.mktemp("curves") / "run"
    drawn = []
    real = harness.curves.write_curves

    def spy(runs, path):
        drawn.append(real(runs, path))
        return drawn[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness.curves, "write_curves", spy)
        assert cli.main(["train", "--run-dir", str(run), *TINY, "telemetry.tensorboard=true"]) == 0
    assert len(drawn) == 1, "the run drew its curves once, at its end"
    return run, drawn[0]


def _rows(run, kind):
    return [r for r in read_metrics(run) if r["kind"] == kind]


def test_run_leaves_curves_png_with_its_logged_series(tiny_run):
    run, drawn = tiny_run
    png = run / "curves.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    train, val = _rows(run, "train"), _rows(run, "val")
    steps = [r["step"] for r in train]
    assert steps == [1, 3, 6, 9, 12]  # step 1 and every log_every
    for panel, name in [("generator loss", "loss_g"), ("discriminator: L_D, L_real, L_fake", "l_fake"),
                        ("discriminator: L_D, L_real, L_fake", "l_real"), ("k_t (sat) / d_fake ratio (cgan)", "k"),
                        ("learning rate", "lr_g"), ("learning rate", "lr_d"), ("images/s (logged steps)",
                                                                                "images_per_s")]:
        x, y = drawn[panel][name]
        assert x == steps
        assert y == pytest.approx([r[name] for r in train], rel=1e-12), name
    k = drawn["k_t (sat) / d_fake ratio (cgan)"]["k"][1]
    assert k[0] != 0.3 or k[-1] != 0.3, "k_t moved from k_0 (the test's run must exercise the k_t panel)"
    x, y = drawn[harness.curves.SCORE_PANEL]["score"]
    assert x == [6, 12] and y == pytest.approx([r["value"] for r in val])


def test_curves_command_overlays_two_runs(tiny_run, tmp_path):
    run, _ = tiny_run
    other = tmp_path / "other"
    other.mkdir()
    rows = [{"kind": "start", "time": 0}, {"kind": "train", "step": 5, "epoch": 0, "loss_g": 0.5, "loss_mse": 0.5,
                                           "lr_g": 1e-3, "images_per_s": 10.0},
            {"kind": "train", "step": 10, "epoch": 0, "loss_g": 0.25, "loss_mse": 0.25, "lr_g": 1e-3,
             "images_per_s": 12.0},
            {"kind": "val", "step": 10, "metric": "PCK@0.2", "value": 42.0, "auc": 0.3}]
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "overlay.png"
    assert cli.main(["curves", str(run), str(other), "--out", str(out)]) == 0
    assert out.is_file()
    drawn = write_curves(harness.curves.run_labels([run, other]), tmp_path / "again.png")
    score = drawn[harness.curves.SCORE_PANEL]
    assert score["other: score"] == ([10.0], [42.0])
    assert score["run: score"][0] == [6.0, 12.0]
    assert drawn["generator loss"]["other: loss_g"] == ([5.0, 10.0], [0.5, 0.25])
    assert "other: k" not in drawn["k_t (sat) / d_fake ratio (cgan)"]  # a `none`-like run has no k_t
    assert "run: k" in drawn["k_t (sat) / d_fake ratio (cgan)"]


def test_series_keeps_the_last_row_of_a_step():
    rows = [{"kind": "train", "step": 3, "loss_g": 1.0}, {"kind": "train", "step": 3, "loss_g": 2.0},
            {"kind": "val", "step": 3, "value": 7.0}]
    assert series(rows) == {"loss_g": ([3], [2.0]), "score": ([3], [7.0])}


def test_bad_run_dir_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["curves", str(tmp_path / "nope")]) == 2
    assert "nope: no such run folder" in capsys.readouterr().err
    assert cli.main(["curves", str(tmp_path)]) == 2
    assert "not a run folder of `harness train` (no metrics.jsonl)" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n{oops\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2: not a JSON line"):
        read_metrics(tmp_path)


def test_a_plotting_error_only_warns(tmp_path, capsys):
    write_run_curves(tmp_path)  # no metrics.jsonl: the error becomes a warning
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "curves.png not written" in err
    assert not (tmp_path / "curves.png").exists()


def test_tensorboard_event_file_holds_the_logged_scalars(tiny_run):
    run, _ = tiny_run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    train, val = _rows(run, "train"), _rows(run, "val")
    for name in ("loss_g", "loss_d", "l_real", "l_fake", "k", "lr_g", "images_per_s"):
        got = acc.Scalars(f"train/{name}")
        assert [e.step for e in got] == [r["step"] for r in train]
        assert [e.value for e in got] == pytest.approx([r[name] for r in train], rel=1e-6)  # stored as float32
    got = acc.Scalars("val/PCK@0.2")
    assert [(e.step, e.value) for e in got] == [(r["step"], pytest.approx(r["value"], rel=1e-6)) for r in val]
    assert [e.value for e in acc.Scalars("val/PCK@0.2/auc")] == pytest.approx([r["auc"] for r in val], rel=1e-6)


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    from harness.sinks.tensorboard import TensorBoardSink

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    with pytest.raises(UserError, match=r"telemetry.tensorboard=true needs the tensorboard package"):
        TensorBoardSink(tmp_path)
