"""models/losses.py against loop / float64 references, and the gradient paths of both adversarial
objectives."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from models.discriminator import PoseDiscriminator
from models.hourglass import StackedHourglass
from models.losses import cgan_losses, d_fake_targets, heatmap_mse, sat_losses

J, HM = 4, 16  # tiny models: 4 joints, 16x16 heatmaps (64x64 input)


def tiny_d(seed=0):
    torch.manual_seed(seed)
    return PoseDiscriminator(num_joints=J, features=16)


def tiny_g(seed=1):
    torch.manual_seed(seed)
    return StackedHourglass(num_stacks=2, num_joints=J, features=16)


def batch(seed=2, B=2):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(B, 3, 4 * HM, 4 * HM, generator=g)
    real = torch.rand(B, J, HM, HM, generator=g)
    return image, real


def grads(module):
    return [p.grad for p in module.parameters()]


def total_abs_grad(module):
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


# ---------------------------------------------------------------- heatmap_mse


def test_heatmap_mse_matches_loop_reference_with_weights():
    g = torch.Generator().manual_seed(0)
    B, h, w = 3, 5, 6
    outs = [torch.randn(B, J, h, w, generator=g, dtype=torch.float64) for _ in range(3)]
    target = torch.randn(B, J, h, w, generator=g, dtype=torch.float64)
    weight = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 1]], dtype=torch.float64)
    ref = 0.0
    for o in outs:
        s = 0.0
        for b in range(B):
            for j in range(J):
                for y in range(h):
                    for x in range(w):
                        s += float(weight[b, j]) * (float(o[b, j, y, x]) - float(target[b, j, y, x])) ** 2
        ref += s / (B * J * h * w)
    assert math.isclose(float(heatmap_mse(outs, target, weight)), ref, rel_tol=1e-12)
    # bool weights behave like 0/1
    assert math.isclose(float(heatmap_mse(outs, target, weight > 0)), ref, rel_tol=1e-12)
    with pytest.raises(TypeError, match="list"):
        heatmap_mse(outs[0], target, weight)  # a bare tensor would silently iterate over the batch
    with pytest.raises(ValueError, match=r"outputs\[1\]"):
        heatmap_mse([outs[0], outs[1][:, :2]], target, weight)
    with pytest.raises(ValueError, match="weight"):
        heatmap_mse(outs, target, weight[:, :2])


# ---------------------------------------------------------------- SAT


def np_mse(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    total = 0.0
    for v in np.ndindex(a.shape):
        total += (a[v] - b[v]) ** 2
    return total / a.size


def test_sat_losses_match_manual_float64():
    D = tiny_d().eval()
    image, real = batch()
    fake = torch.rand_like(real)
    k = 0.3
    loss, adv, l_real, l_fake = sat_losses(D, real, fake, image, k)
    D64 = copy.deepcopy(D).double()
    with torch.no_grad():
        rec_real = D64(real.double(), image.double()).reconstruction.numpy()
        rec_fake = D64(fake.double(), image.double()).reconstruction.numpy()
    ref_real, ref_fake = np_mse(real.numpy(), rec_real), np_mse(fake.numpy(), rec_fake)
    assert math.isclose(l_real.item(), ref_real, rel_tol=1e-4)
    assert math.isclose(l_fake.item(), ref_fake, rel_tol=1e-4)
    assert math.isclose(loss.item(), ref_real - k * ref_fake, rel_tol=1e-4, abs_tol=1e-7)
    assert math.isclose(adv.item(), ref_fake, rel_tol=1e-4)
    with pytest.raises(ValueError, match="k_t"):
        sat_losses(D, real, fake, image, 1.5)


def _check_routing(losses_of, D, G, image, real) -> torch.Tensor:
    """The step's routing on one D pass (G's adversarial gradient at D's input, a detached leaf, by autograd.grad;
    D's parameter gradient from L_D) equals the same two by separate passes, and the former is not zero. Returns
    G's adversarial gradient."""
    D.zero_grad(set_to_none=True)
    fake = G(image)[-1]
    leaf = fake.detach().requires_grad_()
    t = losses_of(D, real, leaf, image)
    (g_fake,) = torch.autograd.grad(t.adv, leaf, retain_graph=True)
    assert all(g is None for g in grads(D)), "autograd.grad of the adversarial term touched D's parameters"
    t.loss_d.backward()
    d_grads = [p.grad.clone() for p in D.parameters()]
    # separately: G's term through a frozen copy of D, D's loss on the detached fake through a fresh copy
    frozen = copy.deepcopy(D).requires_grad_(False)
    fake2 = fake.detach().requires_grad_()
    (g_sep,) = torch.autograd.grad(losses_of(frozen, real, fake2, image).adv, fake2)
    fresh = copy.deepcopy(D)
    fresh.zero_grad()
    losses_of(fresh, real, fake.detach(), image).loss_d.backward()
    torch.testing.assert_close(g_fake, g_sep, atol=1e-7, rtol=1e-5)
    assert float(g_fake.abs().sum()) > 0
    for a, b in zip(d_grads, [p.grad for p in fresh.parameters()], strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)
    return g_fake


def test_sat_gradient_paths():
    G, D = tiny_g(), tiny_d()
    image, real = batch()
    k = 0.4
    # D's gradient: from L_real and from L_fake separately; L_D = L_real - k L_fake
    fake = G(image)[-1]
    loss, adv, l_real, l_fake = sat_losses(D, real, fake.detach(), image, k)
    params = list(D.parameters())
    g_real = torch.autograd.grad(l_real, params, retain_graph=True)
    g_fk = torch.autograd.grad(l_fake, params, retain_graph=True)
    assert sum(float(g.abs().sum()) for g in g_real) > 0 and sum(float(g.abs().sum()) for g in g_fk) > 0
    loss.backward()
    for p, gr, gf in zip(params, g_real, g_fk):
        torch.testing.assert_close(p.grad, gr - k * gf, atol=1e-6, rtol=1e-4)
    assert all(g is None for g in grads(G)), "the real term must not reach G"
    # one pass routed as the step does = the two separate passes
    g_fake = _check_routing(lambda D_, r, f, x: sat_losses(D_, r, f, x, k), D, G, image, real)
    # The gradient really passes through D: with D's output detached, G's gradient would differ.
    fake = G(image)[-1]
    direct = torch.autograd.grad(((fake - D(fake.detach(), image).reconstruction.detach()) ** 2).mean(),
                                 fake)[0]
    assert (g_fake - direct).abs().max() > 1e-6 * direct.abs().max()


# ---------------------------------------------------------------- cGAN


def ref_d_fake(pred, gt, delta, normalize, torso=None):
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    B, Jn, h, w = gt.shape
    out = np.zeros((B, Jn))
    for b in range(B):
        peaks = []
        for j in range(Jn):
            yp, xp = divmod(int(np.argmax(pred[b, j])), w)
            yg, xg = divmod(int(np.argmax(gt[b, j])), w)
            peaks.append((xg, yg, gt[b, j].max()))
            out[b, j] = math.hypot(xp - xg, yp - yg)
        norm = max(h, w)
        if normalize == "torso":
            (xa, ya, ma), (xc, yc, mc) = peaks[torso[0]], peaks[torso[1]]
            length = math.hypot(xa - xc, ya - yc)
            if length > 0 and ma > 0 and mc > 0:
                norm = length
        out[b] = [1.0 if d / norm < delta else 0.0 for d in out[b]]
    return out


def test_d_fake_matches_loop_reference_both_normalisations():
    g = torch.Generator().manual_seed(3)
    B, Jn, h, w = 6, 5, 12, 12
    gt = torch.rand(B, Jn, h, w, generator=g)
    pred = gt + 0.6 * torch.rand(B, Jn, h, w, generator=g)  # peaks sometimes agree, sometimes not
    gt[1, 0] = 0  # unannotated torso joint in sample 1 -> heatmap-side fallback
    gt[2, 0] = gt[2, 1] = 0
    gt[2, 0, 3, 3] = gt[2, 1, 3, 3] = 1  # coincident torso joints -> zero length fallback
    for normalize, delta in [("heatmap", 0.003), ("heatmap", 0.2), ("torso", 0.5), ("torso", 1.2)]:
        got = d_fake_targets(pred, gt, delta, normalize, torso=(0, 1))
        ref = ref_d_fake(pred.numpy(), gt.numpy(), delta, normalize, (0, 1))
        np.testing.assert_array_equal(got.numpy(), ref)
        assert got.dtype == pred.dtype and not got.requires_grad
    # the reference cases are not degenerate: some ones and some zeros
    ref = ref_d_fake(pred.numpy(), gt.numpy(), 0.5, "torso", (0, 1))
    assert 0 < ref.sum() < ref.size
    # delta < 1/side with 'heatmap': 1 exactly on the same peak pixel
    same = (d_fake_targets(pred, gt) == 1).numpy()
    pk_p = pred.flatten(2).argmax(-1).numpy()
    pk_g = gt.flatten(2).argmax(-1).numpy()
    np.testing.assert_array_equal(same, pk_p == pk_g)
    with pytest.raises(ValueError, match="torso"):
        d_fake_targets(pred, gt, 0.1, "torso")
    with pytest.raises(ValueError, match="normalize"):
        d_fake_targets(pred, gt, 0.1, "pixels")


def np_bce_logits(logit, label):
    return max(logit, 0) - logit * label + math.log1p(math.exp(-abs(logit)))


def test_cgan_losses_match_manual_float64_with_weights():
    D = tiny_d().eval()
    image, real = batch(B=3)
    fake = torch.rand_like(real)
    d_fake = torch.tensor([[1.0, 0, 0, 1], [0, 0, 1, 0], [1, 1, 1, 1]])
    weight = torch.tensor([[1.0, 1, 0, 1], [0, 1, 1, 1], [1, 1, 1, 0]])
    D64 = copy.deepcopy(D).double()
    with torch.no_grad():
        lr = D64(real.double(), image.double()).logits.numpy()
        lf = D64(fake.double(), image.double()).logits.numpy()
    for wt in (None, weight):
        wn = np.ones((3, J)) if wt is None else wt.numpy()
        ref_r = sum(wn[b, j] * np_bce_logits(lr[b, j], 1.0) for b in range(3) for j in range(J)) / (3 * J)
        ref_f = sum(wn[b, j] * np_bce_logits(lf[b, j], d_fake[b, j].item())
                    for b in range(3) for j in range(J)) / (3 * J)
        ref_g = sum(wn[b, j] * np_bce_logits(lf[b, j], 1.0) for b in range(3) for j in range(J)) / (3 * J)
        loss, adv, l_real, l_fake = cgan_losses(D, real, fake, image, d_fake, wt)
        assert math.isclose(l_real.item(), ref_r, rel_tol=1e-5)
        assert math.isclose(l_fake.item(), ref_f, rel_tol=1e-5)
        assert math.isclose(loss.item(), ref_r + ref_f, rel_tol=1e-5)
        assert math.isclose(adv.item(), ref_g, rel_tol=1e-5)
    # all-zero weight: zero loss, not NaN
    l0 = cgan_losses(D, real, fake, image, d_fake, torch.zeros(3, J)).l_real
    assert l0.item() == 0.0
    with pytest.raises(ValueError, match="d_fake"):
        cgan_losses(D, real, fake, image, d_fake[:, :2])


def test_cgan_gradient_paths():
    """The thesis's public code gave D no gradient; ours must: G from the adversarial term (through D's input),
    D from the real term and from the fake term separately (G none)."""
    G, D = tiny_g(), tiny_d()
    image, real = batch()
    fake = G(image)[-1]
    d_fake = d_fake_targets(fake, real, 0.3)
    loss, adv, l_real, l_fake = cgan_losses(D, real, fake.detach(), image, d_fake)
    params = list(D.parameters())
    g_real = torch.autograd.grad(l_real, params, retain_graph=True)
    g_fk = torch.autograd.grad(l_fake, params, retain_graph=True)
    assert sum(float(g.abs().sum()) for g in g_real) > 0
    assert sum(float(g.abs().sum()) for g in g_fk) > 0
    loss.backward()
    for p, gr, gf in zip(params, g_real, g_fk):
        torch.testing.assert_close(p.grad, gr + gf, atol=1e-6, rtol=1e-4)
    assert all(g is None for g in grads(G))
    _check_routing(lambda D_, r, f, x: cgan_losses(D_, r, f, x, d_fake), D, G, image, real)


