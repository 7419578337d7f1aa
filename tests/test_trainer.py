"""The single-node trainer: each objective's step, bit-exact resume, preemption, CLI outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness import checkpoint as ckpt
from harness.config import load_config
from harness.trainer import EXIT_PREEMPTED, Trainer

REPO = Path(__file__).resolve().parents[1]

# A tiny but complete configuration: the real pipeline, models and losses, small enough for 2 CPU cores.
TINY = ["data.name=synthetic", "data.input_size=64", "data.heatmap_size=16", "data.synthetic_train_size=24",
        "data.synthetic_val_size=8", "data.num_workers=0", "model.stacks=2", "model.features=16",
        "discriminator.features=16", "train.batch_size=4", "train.log_every=1", "train.threads=1"]


def tiny(*extra: str):
    return load_config(None, None, TINY + list(extra))


def run_cli(*args: str, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def state_equal(a: dict, b: dict) -> list[str]:
    """Names of entries that differ (tensors compared bitwise, nested dicts/lists recursively)."""
    diffs = []

    def walk(x, y, path):
        if isinstance(x, torch.Tensor):
            if not (isinstance(y, torch.Tensor) and x.shape == y.shape and torch.equal(x, y)):
                diffs.append(path)
        elif isinstance(x, dict):
            if not isinstance(y, dict) or set(x) != set(y):
                diffs.append(path)
            else:
                for k in x:
                    walk(x[k], y[k], f"{path}.{k}")
        elif isinstance(x, list | tuple):
            if not isinstance(y, list | tuple) or len(x) != len(y):
                diffs.append(path)
            else:
                for i, (u, v) in enumerate(zip(x, y)):
                    walk(u, v, f"{path}[{i}]")
        elif x != y:
            diffs.append(path)
    walk(a, b, "")
    return diffs


@pytest.mark.parametrize("objective", ["sat", "cgan"])
def test_stop_and_resume_is_bit_exact(tmp_path, objective):
    # k0 = 0.3: SAT's k_t moves every step (from 0 it can stay clipped at 0), so its checkpointing is tested.
    extra = [f"adversarial.objective={objective}", "train.max_steps=8", "train.val_every=4",
             "adversarial.sat.k0=0.3"]
    full = Trainer(tiny(*extra), tmp_path / "full", interactive=False)
    full.fit()
    # Same run, stopped after 3 steps (not on an epoch or validation boundary), then resumed to 8.
    first = Trainer(tiny(*extra[:1], "train.max_steps=3", "train.val_every=4", "adversarial.sat.k0=0.3"),
                    tmp_path / "split", interactive=False)
    first.fit()
    second = Trainer(tiny(*extra), tmp_path / "split", resume="auto", interactive=False)
    assert second.step == 3
    second.fit()
    a, b = full.state(), second.state()
    if objective == "sat":
        assert a["objective"]["k"] != 0.3, "k_t must have moved for this test to check it"
    for key in ("generator", "discriminator", "optim_g", "optim_d", "objective", "step", "epoch"):
        assert state_equal(a[key], b[key]) == [], key
    assert a["rng"]["torch"].equal(b["rng"]["torch"])


def test_checkpoint_format(tmp_path):
    t = Trainer(tiny("adversarial.objective=sat", "train.max_steps=2", "train.keep_last=1"), tmp_path,
                interactive=False)
    t.fit()
    files = t.ckpts.step_files()
    assert [p.name for p in files] == ["step-00000002.pt"]  # keep_last=1
    state = torch.load(files[0], weights_only=True)
    for key in ("generator", "discriminator", "optim_g", "optim_d", "scaler_g", "scaler_d", "objective",
                "step", "epoch", "rng", "config"):
        assert key in state
    assert state["config"]["adversarial"]["objective"] == "sat"
    assert isinstance(state["objective"]["k"], float)
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    # A torn newest checkpoint is passed over by --resume auto (with a warning), never loaded.
    torn = tmp_path / "checkpoints" / "step-00000009.pt"
    torn.write_bytes(files[0].read_bytes()[:1000])
    warnings = []
    path, _ = ckpt.CheckpointManager(tmp_path / "checkpoints").latest_valid(warn=warnings.append)
    assert path == files[0] and "step-00000009.pt" in warnings[0]


def test_preemption_signal_checkpoints_and_resumes_exactly(tmp_path):
    """SIGUSR1 mid-run: checkpoint, exit 85; `--resume auto` finishes with the uninterrupted weights."""
    args = TINY + ["adversarial.objective=sat", "train.max_steps=12", "train.val_every=100", "adversarial.sat.k0=0.3"]
    proc = subprocess.Popen([sys.executable, "-m", "harness", "train", "--run-dir", str(tmp_path / "pre"),
                             *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "pre" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and any(json.loads(x).get("step", 0) >= 2 for x in log.read_text().splitlines()):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, out
    stopped = ckpt.CheckpointManager(tmp_path / "pre" / "checkpoints").step_files()
    stopped_step = int(stopped[0].stem.split("-")[1]) if stopped else -1
    assert 2 <= stopped_step < 12, out
    resumed = run_cli("train", "--run-dir", str(tmp_path / "pre"), "--resume", "auto", *args)
    assert resumed.returncode == 0, resumed.stderr
    # It really resumed: from the stopped step, and trained only the remaining steps.
    assert f"at step {stopped_step}" in resumed.stdout, resumed.stdout
    summary = json.loads((tmp_path / "pre" / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["steps_this_run"] == 12 - stopped_step
    straight = run_cli("train", "--run-dir", str(tmp_path / "straight"), *args)
    assert straight.returncode == 0, straight.stderr
    a = ckpt.load(tmp_path / "pre" / "checkpoints" / "step-00000012.pt")
    b = ckpt.load(tmp_path / "straight" / "checkpoints" / "step-00000012.pt")
    assert a["objective"]["k"] != 0.3
    for key in ("generator", "discriminator", "optim_g", "optim_d", "objective"):
        assert state_equal(a[key], b[key]) == [], key


def test_train_eval_predict_cli(tmp_path, lsp_root):
    run = tmp_path / "run"
    res = run_cli("train", "--run-dir", str(run), *TINY, "adversarial.objective=cgan", "train.max_steps=2")
    assert res.returncode == 0, res.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metric"] == "PCK@0.2" and summary["steps"] == 2
    for key in ("value", "per_joint", "wall_s", "images_per_s"):
        assert summary[key] is not None
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]
    assert "held-out PCK@0.2" in res.stdout  # plain lines when not a TTY
    best = run / "checkpoints" / "best.pt"
    res = run_cli("eval", "--checkpoint", str(best), "--json", "--preds-out", str(tmp_path / "p.mat"))
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["count"] == 8 and set(result["groups"]) >= {"Head", "Mean"}
    # G as evaluation ran it before BatchNorm folding and the one-pass flip test: the same scores
    res = run_cli("eval", "--checkpoint", str(best), "--json", "--infer", "fold_batchnorm=false",
                  "--infer", "one_pass_flip=false", "--infer", "cast_weights=false")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == result
    res = run_cli("eval", "--checkpoint", str(best), "--infer", "fold=false")
    assert res.returncode == 2 and "unknown key 'infer.fold'" in res.stderr
    import scipy.io
    assert scipy.io.loadmat(tmp_path / "p.mat")["preds"].shape == (8, 14, 2)
    image = lsp_root / "images" / "im0001.jpg"
    res = run_cli("predict", "--checkpoint", str(best), str(image), "--out", str(tmp_path / "pred"))
    assert res.returncode == 0, res.stderr
    keypoints = json.loads((tmp_path / "pred" / "im0001.json").read_text())["keypoints"]
    assert len(keypoints) == 14 and set(keypoints["head"]) == {"x", "y", "confidence"}
    assert (tmp_path / "pred" / "im0001.png").stat().st_size > 1000


def test_cli_bad_config_is_one_clear_error(tmp_path):
    res = run_cli("train", "--run-dir", str(tmp_path), "train.batchsize=4")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: config: unknown key 'train.batchsize' "
                                               "(did you mean 'train.batch_size'?)"]
    res = run_cli("train", "--run-dir", str(tmp_path), "--preset", "quickstart", "model.stacks=0")
    assert res.returncode == 2 and "model.stacks" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = run_cli("eval", "--checkpoint", str(tmp_path / "missing.pt"))
    assert res.returncode == 2 and "checkpoint not found" in res.stderr


@pytest.mark.parametrize("objective", ["sat", "cgan"])
def test_bf16_autocast_step_runs_on_cpu(tmp_path, objective):
    """Mixed precision on a device without a GPU: bf16 autocast forward, fp32 losses, finite, both move."""
    t = Trainer(tiny(f"adversarial.objective={objective}", "train.precision=bf16", "train.max_steps=2"), tmp_path,
                interactive=False)
    g0 = {k: v.clone() for k, v in t.generator.state_dict().items()}
    seen: set[torch.dtype] = set()
    for m in t.generator.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    summary = t.fit()
    assert torch.bfloat16 in seen, f"autocast did not run G's convolutions in bf16: {seen}"
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert len(train_rows) == 2 and all(isinstance(r["loss_d"], float) for r in train_rows)
    assert any(not torch.equal(v, g0[k]) for k, v in t.generator.state_dict().items())
    assert summary["steps"] == 2


def test_fp16_is_refused_without_gpu(tmp_path):
    from data_pipelines.errors import UserError
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        Trainer(tiny("train.precision=fp16", "train.device=cpu"), tmp_path, interactive=False)
