"""Checkpoints written while the convolutions before a BatchNorm still had biases (main up to f6168e0) load,
evaluate and resume to the same numbers in the bias-free model (models/legacy.py, harness/checkpoint.py).

The fixture is a real quickstart checkpoint of that main at step 40, its `harness eval` output and the losses of
two steps resumed from it, as that code produced them (tests/fixtures/legacy-quickstart-step40.json says how)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import randomise_batchnorms
from torch import nn

from harness.checkpoint import upgrade_optimizer_state
from models import hourglass
from models.discriminator import PoseDiscriminator
from models.hourglass import StackedHourglass
from models.legacy import cancelled_bias_keys, drop_from_optimizer_state

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
CKPT = FIXTURES / "legacy-quickstart-step40.pt"
RECORD = json.loads((FIXTURES / "legacy-quickstart-step40.json").read_text())


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def with_biases(model: nn.Module, seed: int = 0) -> nn.Module:
    """`model` as the reference implementation has it: every cancelled bias back, random."""
    gen = torch.Generator().manual_seed(seed)
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            for conv in seq:
                if isinstance(conv, nn.Conv2d) and conv.bias is None:
                    conv.bias = nn.Parameter(torch.randn(conv.out_channels, generator=gen, dtype=conv.weight.dtype))
    return model


def test_old_state_dict_folds_into_the_running_mean_exactly_in_fp64():
    torch.manual_seed(0)
    old = with_biases(StackedHourglass(num_stacks=2, num_joints=5, features=16, depth=2).double())
    randomise_batchnorms(old, seed=1)
    state = old.state_dict()
    assert len(cancelled_bias_keys(state)) > 0
    new = StackedHourglass(num_stacks=2, num_joints=5, features=16, depth=2).double()
    new.load_state_dict(state)  # strict: the biases are folded, nothing is left over
    assert set(state) - set(new.state_dict()) == {k for k, _ in cancelled_bias_keys(state)}
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(old.eval()(x), new.eval()(x)):
            assert (a - b).norm() / a.norm() < 1e-12
    assert state["stem.0.0.bias"].abs().sum() > 0  # the caller's dict is left as it was
    # a bias-free state dict loads unchanged
    again = StackedHourglass(num_stacks=2, num_joints=5, features=16, depth=2).double()
    again.load_state_dict(new.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), new.state_dict().values()))


def test_discriminator_folds_under_its_prefix():
    old = with_biases(PoseDiscriminator(num_joints=4, num_stacks=1, features=8).double())
    randomise_batchnorms(old, seed=1)
    new = PoseDiscriminator(num_joints=4, num_stacks=1, features=8).double()
    new.load_state_dict(old.state_dict())
    h, img = torch.rand(2, 4, 16, 16, dtype=torch.float64), torch.rand(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        a, b = old.eval()(h, img).reconstruction, new.eval()(h, img).reconstruction
    assert (a - b).norm() / a.norm() < 1e-12


def test_same_initial_weights_as_the_model_with_biases(monkeypatch):
    """Dropping the biases after initialisation keeps the random stream: every remaining weight is the one the
    model with all biases (the code before the change: no bias dropped) gets from the same seed."""
    torch.manual_seed(3)
    new = StackedHourglass(num_stacks=2, num_joints=4, features=8, depth=2)
    monkeypatch.setattr(hourglass, "drop_cancelled_biases", lambda seq: seq)
    torch.manual_seed(3)
    ref = StackedHourglass(num_stacks=2, num_joints=4, features=8, depth=2)
    ref_params = dict(ref.named_parameters())
    assert len(ref_params) - len(dict(new.named_parameters())) == len(cancelled_bias_keys(ref.state_dict())) > 0
    assert all(torch.equal(p, ref_params[n]) for n, p in new.named_parameters())


def test_optimizer_state_drops_the_removed_parameters_by_name():
    old = with_biases(StackedHourglass(num_stacks=1, num_joints=4, features=8, depth=1))
    opt = torch.optim.Adam(old.parameters(), lr=1e-3)
    old(torch.rand(2, 3, 32, 32))[-1].square().sum().backward()
    opt.step()
    old_names = [n for n, _ in old.named_parameters()]
    saved = opt.state_dict()
    new = StackedHourglass(num_stacks=1, num_joints=4, features=8, depth=1)
    upgraded = upgrade_optimizer_state(saved, old.state_dict(), new)
    new_opt = torch.optim.Adam(new.parameters(), lr=1e-3)
    new_opt.load_state_dict(upgraded)
    by_name_old = {old_names[i]: s for i, s in saved["state"].items()}
    assert sorted(upgraded["state"]) == list(range(len(list(new.parameters()))))
    for (name, p), (_, s) in zip(new.named_parameters(), sorted(upgraded["state"].items()), strict=True):
        assert torch.equal(s["exp_avg"], by_name_old[name]["exp_avg"]) and s["exp_avg"].shape == p.shape, name
    with pytest.raises(ValueError, match="optimizer state has"):
        drop_from_optimizer_state(saved, old_names[:-1], {old_names[0]})


def test_legacy_quickstart_checkpoint_evaluates_to_the_same_numbers(tmp_path):
    preds = tmp_path / "preds.npy"
    r = _run("eval", "--checkpoint", str(CKPT), "--json", "--preds-out", str(preds))
    assert r.returncode == 0, r.stderr
    got, want = json.loads(r.stdout), RECORD["eval"]
    assert abs(got["mean"] - want["mean"]) <= 1e-6 and abs(got["auc"] - want["auc"]) <= 1e-6
    assert all(abs(got["per_joint"][j] - v) <= 1e-6 for j, v in want["per_joint"].items())
    old_preds = np.load(FIXTURES / "legacy-quickstart-step40-preds.npy")
    np.testing.assert_allclose(np.load(preds), old_preds, atol=1e-6)


def test_legacy_quickstart_checkpoint_resumes_to_the_same_losses(tmp_path):
    run_dir = tmp_path / "run"
    r = _run("train", "--preset", "quickstart", "--run-dir", str(run_dir), "--resume", str(CKPT),
             "train.max_steps=42", "train.val_every=1000", "train.threads=1", "train.log_every=1")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = {str(row["step"]): row for row in rows if row["kind"] == "train"}
    assert set(steps) == set(RECORD["resumed_steps"]) == {"41", "42"}
    for step, want in RECORD["resumed_steps"].items():
        for key, value in want.items():  # fp32 on the CPU: the dropped biases change rounding only
            assert steps[step][key] == pytest.approx(value, rel=1e-5), (step, key)
