"""The training step for every objective, and the objectives' own state (SAT's k_t).

What is pinned here (each check was seen to fail on a broken variant of the step):
- every G and D parameter moves in one step, for none / sat / cgan;
- G's gradient is the one autograd gives through a copy of the PRE-update D (fails when D's optimizer steps
  before G's pass) and includes the adversarial term (fails when it is detached);
- G's pass leaves D's BatchNorm running statistics as the two D passes left them (fails without the
  momentum-0 freeze);
- k_t follows the BEGAN controller exactly, from the step's real losses.
"""

from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest
import torch

from harness.build import build_discriminator, build_generator
from harness.config import load_config
from harness.objectives import SAT, build_objective
from harness.step import Model, train_step
from models import losses

TINY = ["data.input_size=64", "data.heatmap_size=16", "model.stacks=2", "model.features=16",
        "discriminator.features=16"]


def tiny(*extra: str):
    return load_config(None, None, TINY + list(extra))


def batch(seed: int = 0, dtype=torch.float32) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(4, 3, 64, 64, generator=gen, dtype=dtype),
            "heatmaps": torch.rand(4, 14, 16, 16, generator=gen, dtype=dtype),
            "target_weight": (torch.rand(4, 14, generator=gen) > 0.2).to(dtype)}


@pytest.mark.parametrize("objective", ["none", "sat", "cgan"])
def test_step_updates_both_models(objective):
    cfg = tiny(f"adversarial.objective={objective}", "adversarial.sat.k0=0.3")
    torch.manual_seed(0)
    g, d = build_generator(cfg, 14), build_discriminator(cfg, 14)
    gm = Model(g, torch.optim.Adam(g.parameters(), 1e-3))
    dm = Model(d, torch.optim.Adam(d.parameters(), 1e-3)) if d is not None else None
    g0 = {k: v.clone() for k, v in g.state_dict().items()}
    d0 = {k: v.clone() for k, v in d.state_dict().items()} if d is not None else {}
    obj = build_objective(cfg, (9, 2), torch.device("cpu"))
    values = train_step([batch()], gm, dm, obj, "fp32")
    assert all(v.dtype == torch.float64 and v.dim() == 0 for v in values.values())
    changed_g = [k for k, v in g.named_parameters() if not torch.equal(v, g0[k])]
    assert len(changed_g) == len(list(g.parameters())), "every G parameter must move"
    if d is None:
        assert objective == "none" and set(values) == {"loss_mse", "loss_g"}
        return
    changed_d = [k for k, v in d.named_parameters() if not torch.equal(v, d0[k])]
    assert len(changed_d) == len(list(d.parameters())), "every D parameter must move"
    assert {"loss_d", "l_real", "l_fake", "loss_adv"} <= set(values)
    assert ("d_fake" in values) == (objective == "cgan")


def _expected_g_grad_and_d_stats(cfg, g0, d0, b, objective):
    """G's gradient by plain autograd through a copy of the pre-update D; D's BatchNorm buffers after the
    two D passes (real, detached fake) alone."""
    g, d = copy.deepcopy(g0), copy.deepcopy(d0)
    outputs = g(b["image"])
    fake = outputs[-1]
    objective.d_loss(d, b["heatmaps"], fake, b["image"], b["target_weight"])  # updates d's running stats
    stats = {k: v.clone() for k, v in d.state_dict().items() if "running" in k or "num_batches" in k}
    d_for_g = copy.deepcopy(d0)  # pre-update parameters; train-mode BatchNorm uses batch statistics
    for p in d_for_g.parameters():
        p.requires_grad_(False)
    adv, _ = objective.g_adv(d_for_g, fake, b["image"], b["target_weight"])
    loss = losses.heatmap_mse(outputs, b["heatmaps"], b["target_weight"]) + adv
    grads = torch.autograd.grad(loss, list(g.parameters()), retain_graph=True)
    mse_only = torch.autograd.grad(losses.heatmap_mse(outputs, b["heatmaps"], b["target_weight"]),
                                   list(g.parameters()))
    return grads, mse_only, stats


@pytest.mark.parametrize("objective", ["sat", "cgan"])
def test_g_gradient_goes_through_the_frozen_pre_update_d(objective):
    """fp64, SGD: (g0 - g1) / lr is exactly G's gradient; compare it with autograd through a copy of D0."""
    cfg = tiny(f"adversarial.objective={objective}", "adversarial.sat.k0=0.3", "adversarial.sat.lambda_g=1.0",
               "adversarial.cgan.alpha=1.0")
    torch.manual_seed(0)
    g0, d0 = build_generator(cfg, 14).double(), build_discriminator(cfg, 14).double()
    g, d = copy.deepcopy(g0), copy.deepcopy(d0)
    b = batch(1, torch.float64)
    lr = 0.5
    obj = build_objective(cfg, (9, 2), torch.device("cpu"))
    expected, mse_only, stats = _expected_g_grad_and_d_stats(cfg, g0, d0, b, obj)
    train_step([b], Model(g, torch.optim.SGD(g.parameters(), lr)), Model(d, torch.optim.SGD(d.parameters(), lr)),
               obj, "fp64")
    got = [(p0 - p1) / lr for p0, p1 in zip(g0.parameters(), g.parameters())]
    for e, x in zip(expected, got):
        torch.testing.assert_close(x, e, rtol=1e-7, atol=1e-10)
    adv_part = max(float((e - m).abs().max()) for e, m in zip(expected, mse_only))
    assert adv_part > 1e-6, "the adversarial term must reach G (it would be 0 if detached)"
    # G's pass through D changed no BatchNorm statistic: D's buffers are the two D passes' alone.
    after = {k: v for k, v in d.state_dict().items() if k in stats}
    for k, v in stats.items():
        assert torch.equal(after[k], v), k


def test_sat_k_follows_the_began_controller_and_round_trips():
    obj = SAT(gamma=0.5, lambda_k=1e-3, lambda_g=1e-4, k0=0.0, device=torch.device("cpu"))
    rng = np.random.default_rng(0)
    k_ref = 0.0
    for _ in range(200):
        lr, lf = rng.uniform(0, 2), rng.uniform(0, 2)
        out = obj.update({"l_real": torch.tensor(lr, dtype=torch.float64),
                          "l_fake": torch.tensor(lf, dtype=torch.float64)})
        k_ref = min(max(k_ref + 1e-3 * (0.5 * lr - lf), 0.0), 1.0)
        assert float(out["k"]) == k_ref
        assert float(out["convergence"]) == lr + abs(0.5 * lr - lf)
    big = SAT(gamma=0.5, lambda_k=1.0, lambda_g=1e-4, k0=0.9, device=torch.device("cpu"))
    one = {"l_real": torch.tensor(10.0, dtype=torch.float64), "l_fake": torch.tensor(0.0, dtype=torch.float64)}
    assert float(big.update(one)["k"]) == 1.0  # clipped at 1
    assert float(big.update({"l_real": one["l_fake"], "l_fake": one["l_real"]})["k"]) == 0.0  # and at 0
    # state: plain floats, survives torch.load(weights_only=True) and pickling
    state = SAT(0.7, 2e-3, 1e-4, 0.25, torch.device("cpu")).state_dict()
    assert all(type(v) is float for v in state.values())
    buf = io.BytesIO()
    torch.save({"objective": state}, buf)
    buf.seek(0)
    fresh = SAT(0.7, 2e-3, 1e-4, 0.0, torch.device("cpu"))
    fresh.load_state_dict(torch.load(buf, weights_only=True)["objective"])
    assert float(fresh.k) == 0.25 and float(pickle.loads(pickle.dumps(fresh)).k) == 0.25
    with pytest.raises(ValueError, match="lacks"):
        fresh.load_state_dict({"k": 0.1})
    with pytest.raises(ValueError, match="k_t"):
        SAT(0.5, 1e-3, 1e-4, 1.5, torch.device("cpu"))


def test_sat_d_loss_uses_k():
    """L_D = L_real - k_t L_fake with the objective's current k (0.3 here), against float64 by hand."""
    cfg = tiny("adversarial.objective=sat", "adversarial.sat.k0=0.3")
    torch.manual_seed(0)
    d = build_discriminator(cfg, 14).double()
    b = batch(2, torch.float64)
    fake = torch.rand_like(b["heatmaps"])
    obj = build_objective(cfg, None, torch.device("cpu"))
    loss, logs = obj.d_loss(d, b["heatmaps"], fake, b["image"], b["target_weight"])
    assert float(logs["l_fake"].detach()) > 0
    torch.testing.assert_close(loss, logs["l_real"] - 0.3 * logs["l_fake"], rtol=1e-12, atol=0)
