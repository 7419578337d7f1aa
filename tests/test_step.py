"""The training step for every objective, and the objectives' own state (SAT's k_t).

What is pinned here (each check was seen to fail on a broken variant of the step):
- every G and D parameter moves in one step, for none / sat / cgan;
- the step with one D pass on the fake equals, in float64 to 1e-10, the two-pass algorithm it replaced (D's loss on
  the detached fake, then G's adversarial term through a frozen copy of the PRE-update D): G's and D's gradients,
  D's BatchNorm running statistics (one update per input kind) and k_t; G's gradient includes the adversarial
  term (fails when it is detached);
- k_t follows the BEGAN controller exactly, from the step's real losses.
"""

from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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


def _bce(logits, labels, weight):
    return (F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * weight).mean()


def _two_pass_reference(g0, d0, b, objective):
    """The step as it was before one D pass served both players, by plain autograd in float64: D's loss on the
    real and the DETACHED fake (D's gradient, its BatchNorm statistics updated once per pass), then G's MSE plus the
    weighted adversarial term through a frozen copy of the pre-update D (G's gradient). Formulas written out here,
    not taken from models/losses.py."""
    g, d = copy.deepcopy(g0), copy.deepcopy(d0)
    image, real, weight = b["image"], b["heatmaps"], b["target_weight"]
    outputs = g(image)
    fake = outputs[-1]
    mse = sum(((o - real) ** 2 * weight[:, :, None, None]).mean() for o in outputs)
    out_real, out_fake = d(real, image), d(fake.detach(), image)
    if isinstance(objective, SAT):
        l_real = F.mse_loss(out_real.reconstruction, real)
        l_fake = F.mse_loss(out_fake.reconstruction, fake.detach())
        loss_d = l_real - objective.k * l_fake
    else:
        d_fake = losses.d_fake_targets(fake.detach(), real, objective.delta)
        l_real = _bce(out_real.logits, torch.ones_like(d_fake), weight)
        l_fake = _bce(out_fake.logits, d_fake, weight)
        loss_d = l_real + l_fake
    d_grads = torch.autograd.grad(loss_d, list(d.parameters()))
    stats = {k: v.clone() for k, v in d.state_dict().items() if "running" in k or "num_batches" in k}
    frozen = copy.deepcopy(d0).requires_grad_(False)  # pre-update parameters, train-mode BatchNorm
    out = frozen(fake, image)
    if isinstance(objective, SAT):
        adv = objective.lambda_g * F.mse_loss(out.reconstruction, fake)
    else:
        adv = objective.alpha * _bce(out.logits, torch.ones_like(out.logits), weight)
    g_grads = torch.autograd.grad(mse + adv, list(g.parameters()), retain_graph=True)
    mse_only = torch.autograd.grad(mse, list(g.parameters()))
    return g_grads, mse_only, d_grads, stats, {"l_real": l_real.detach(), "l_fake": l_fake.detach()}


@pytest.mark.parametrize("objective", ["sat", "cgan"])
def test_one_d_pass_step_equals_the_two_pass_step_in_fp64(objective):
    """fp64, SGD: (p0 - p1) / lr is exactly each gradient; G's through the pre-update D, D's from its loss alone,
    both within 1e-10 of the two-pass reference; D's running statistics and the next k_t equal."""
    cfg = tiny(f"adversarial.objective={objective}", "adversarial.sat.k0=0.3", "adversarial.sat.lambda_g=1.0",
               "adversarial.cgan.alpha=1.0", "adversarial.cgan.delta=0.2")
    torch.manual_seed(0)
    g0, d0 = build_generator(cfg, 14).double(), build_discriminator(cfg, 14).double()
    g, d = copy.deepcopy(g0), copy.deepcopy(d0)
    b = batch(1, torch.float64)
    lr = 0.5
    obj = build_objective(cfg, (9, 2), torch.device("cpu"))
    ref_obj = build_objective(cfg, (9, 2), torch.device("cpu"))
    expected_g, mse_only, expected_d, stats, ref_losses = _two_pass_reference(g0, d0, b, ref_obj)
    values = train_step([b], Model(g, torch.optim.SGD(g.parameters(), lr)),
                        Model(d, torch.optim.SGD(d.parameters(), lr)), obj, "fp64")
    for model0, model, expected in ((g0, g, expected_g), (d0, d, expected_d)):
        got = [(p0 - p1).detach() / lr for p0, p1 in zip(model0.parameters(), model.parameters())]
        num = sum(float((x - e).norm() ** 2) for x, e in zip(got, expected, strict=True)) ** 0.5
        den = sum(float(e.norm() ** 2) for e in expected) ** 0.5
        assert den > 0 and num / den <= 1e-10, (num / den)
    adv_part = max(float((e - m).abs().max()) for e, m in zip(expected_g, mse_only))
    assert adv_part > 1e-6, "the adversarial term must reach G (it would be 0 if detached)"
    after = {k: v for k, v in d.state_dict().items() if k in stats}
    for k, v in stats.items():  # one update per input kind: real, fake
        assert torch.equal(after[k], v), k
    for key in ("l_real", "l_fake"):
        assert abs(float(values[key]) - float(ref_losses[key])) <= 1e-12 * abs(float(ref_losses[key]))
    if objective == "sat":  # k_t from the step's losses equals k_t from the reference's
        k_new, k_ref = obj.update(values)["k"], ref_obj.update(ref_losses)["k"]
        assert abs(float(k_new) - float(k_ref)) <= 1e-12


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
    """L_D = L_real - k_t L_fake with the objective's current k (0.3 here), against float64 by hand; the
    adversarial term is lambda_G L_fake from the same pass."""
    cfg = tiny("adversarial.objective=sat", "adversarial.sat.k0=0.3", "adversarial.sat.lambda_g=0.01")
    torch.manual_seed(0)
    d = build_discriminator(cfg, 14).double()
    b = batch(2, torch.float64)
    fake = torch.rand_like(b["heatmaps"])
    obj = build_objective(cfg, None, torch.device("cpu"))
    loss, adv, logs = obj.adversarial(d, d, b["heatmaps"], fake, b["image"], b["target_weight"])
    assert float(logs["l_fake"].detach()) > 0
    torch.testing.assert_close(loss, logs["l_real"] - 0.3 * logs["l_fake"], rtol=1e-12, atol=0)
    torch.testing.assert_close(adv, 0.01 * logs["l_fake"], rtol=1e-12, atol=0)
