"""Training losses: heatmap MSE with intermediate supervision, and the two adversarial objectives of Self
Adversarial Training (Chou et al.): the BEGAN-style "sat" objective and the cGAN objective with d_fake.

Pure functions, no optimizer logic and no state: harness/objectives.py composes them into objectives (SAT's
k_t controller lives there) and harness/step.py runs one step. The order of a step, with G the stacked hourglass and D a
`models.discriminator.PoseDiscriminator`:

    outputs = G(images); fake = outputs[-1]                  # the LAST stack's heatmaps
    leaf = fake.detach().requires_grad_()                    # D's input: one D pass serves D and G
    t = sat_losses(D, target, leaf, images, k)               # L_D, L_adv, L_real, L_fake
    g_adv = torch.autograd.grad(lambda_g * t.adv, leaf)      # G's adversarial gradient, D's parameters untouched
    t.loss_d.backward()                                      # D's gradient, D not stepped yet
    (heatmap_mse(outputs, target, weight) + (fake * g_adv).sum()).backward()   # G: MSE + adversarial, one pass
    opt_d.step(); opt_g.step()

(cGAN: `d_fake_targets`, then `cgan_losses` with alpha.) So G's adversarial term goes through the PRE-update D,
computed once per step. Defaults of the hyper-parameters live in the typed config (harness/config.py), nowhere else.

Heatmaps are [B, J, h, w] in the heatmap frame of models/heatmap.py; weights [B, J] (1 = supervise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models import kernels


def _check_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if not isinstance(a, torch.Tensor) or a.dim() != 4:
        what = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
        raise ValueError(f"{name_a} must be a [B, J, h, w] tensor (the last stack's heatmaps), got {what}")
    if not isinstance(b, torch.Tensor) or b.shape != a.shape:
        what = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
        raise ValueError(f"{name_b} must have the shape of {name_a} {tuple(a.shape)}, got {what}")


def _check_weight(weight: torch.Tensor | None, like: torch.Tensor, name: str = "weight") -> None:
    if weight is not None and (not isinstance(weight, torch.Tensor) or weight.shape != like.shape[:2]):
        what = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{name} must be [B, J] = {tuple(like.shape[:2])}, got {what}")


def heatmap_mse(outputs: Sequence[torch.Tensor], target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Intermediate supervision: sum over stacks of mean over (B, J, h, w) of weight * (out - target)^2.

    `outputs` is the list G returns (one [B, J, h, w] tensor per stack); `weight` [B, J] (e.g.
    models.heatmap.target_weight) zeroes the joints that have no target. On CUDA one fused Triton pass
    over all stacks forward and one backward (models/kernels/stacked_mse.py); the torch formula elsewhere.
    """
    if isinstance(outputs, torch.Tensor) or not isinstance(outputs, Sequence) or len(outputs) == 0:
        raise TypeError("heatmap_mse: outputs must be a non-empty list with one [B, J, h, w] tensor per "
                        f"stack, got {type(outputs).__name__}")
    for i, out in enumerate(outputs):
        _check_pair(f"outputs[{i}]", out, "target", target)
    _check_weight(weight, target)
    return kernels.heatmap_mse(outputs, target, weight)


# ---------------------------------------------------------------- SAT (BEGAN-style)


class AdversarialLosses(NamedTuple):
    """One step's adversarial terms from ONE pass of D over the real and one over the fake heatmaps.

    loss_d is D's loss (its gradient is meant for D's parameters only), adv G's adversarial term (its gradient is
    meant for the fake heatmaps only). Both hang off the same D pass on `fake`, so the caller routes the gradients
    (harness/step.py): with `fake` a detached leaf that requires grad, torch.autograd.grad(adv, fake) is G's
    adversarial gradient (no parameter of D touched) and loss_d.backward() gives D's parameter gradients."""
    loss_d: torch.Tensor
    adv: torch.Tensor
    l_real: torch.Tensor
    l_fake: torch.Tensor


def reconstruction_error(D: nn.Module, heatmaps: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
    """err(C, D(C, X)): mean squared error between heatmaps and D's reconstruction of them."""
    return F.mse_loss(D(heatmaps, image).reconstruction, heatmaps)


def _check_k(k: float) -> float:
    k = float(k)
    if not 0.0 <= k <= 1.0:
        raise ValueError(f"BEGAN k_t must lie in [0, 1], got {k}")
    return k


def sat_losses(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, image: torch.Tensor | None,
               k: float | torch.Tensor, D_fake: nn.Module | None = None) -> AdversarialLosses:
    """SAT's terms: L_real = err(C, D(C, X)), L_fake = err(C^, D(C^, X)) with C^ the last stack's output,
    L_D = L_real - k_t L_fake for D, and G's adversarial term L_adv = L_fake (L_G = L_MSE + lambda_G L_adv): the
    same D pass on C^ serves both. `real` is detached here; `fake` is used as given (see AdversarialLosses).
    `D_fake`: the same D called another way for the fake pass (default D; harness/step.py passes the plain module
    where D is wrapped)."""
    _check_pair("fake", fake, "real", real)
    if not isinstance(k, torch.Tensor):
        k = _check_k(k)  # a device tensor is the caller's (kept in [0, 1]): checking it would sync the host
    l_real = reconstruction_error(D, real.detach(), image)
    l_fake = reconstruction_error(D if D_fake is None else D_fake, fake, image)
    k = k.to(l_fake.dtype) if isinstance(k, torch.Tensor) else k
    return AdversarialLosses(l_real - k * l_fake, l_fake, l_real, l_fake)


# ---------------------------------------------------------------- cGAN with d_fake


def d_fake_targets(prediction: torch.Tensor, target: torch.Tensor, delta: float = 0.003,
                   normalize: str = "heatmap", torso: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-joint labels [B, J] for D on the fake: 1.0 where the prediction's peak is close to the
    ground truth's, else 0.0 (no gradient).

    d_j = |argmax(prediction_j) - argmax(target_j)| (integer peak positions, first maximum on ties,
    Euclidean, heatmap pixels) divided by
      'heatmap': the heatmap side max(h, w);
      'torso': the ground-truth torso length, the distance between the target peaks of the joint pair
               `torso` (Skeleton.torso). Where that length is zero or either torso map has no positive
               value (unannotated), the heatmap side is used instead.
    d_fake_j = 1 if d_j < delta else 0. With 'heatmap' and delta < 1 / side (the default 0.003 with side
    64), d_fake = 1 exactly when both peaks fall on the same heatmap pixel. A Triton kernel on CUDA
    (models/kernels/dfake.py), the torch reference elsewhere.
    """
    _check_pair("prediction", prediction, "target", target)
    return kernels.d_fake_targets(prediction, target, delta, normalize, torso)


def _weighted_bce(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean over batch and joints of BCE-with-logits, each term multiplied by `weight` when given:
    sum(w l) / (B J), like heatmap_mse's masking. Normalising by the element count rather than by sum(w)
    keeps the loss of a global batch equal to the mean of its equal shards' losses, so data-parallel ranks
    and a single process compute the same gradient."""
    cdt = torch.promote_types(logits.dtype, torch.float32)
    loss = F.binary_cross_entropy_with_logits(logits.to(cdt), labels.to(device=logits.device, dtype=cdt),
                                              reduction="none")
    if weight is None:
        return loss.mean()
    w = weight.to(device=logits.device, dtype=cdt)
    return (loss * w).mean()


def cgan_losses(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, image: torch.Tensor | None,
                d_fake: torch.Tensor, weight: torch.Tensor | None = None, D_fake: nn.Module | None = None
                ) -> AdversarialLosses:
    """The cGAN terms from one D pass on the fake's logits: L_real = BCE(D(C, X).logits, 1), L_fake =
    BCE(D(C^, X).logits, d_fake) (d_fake from `d_fake_targets`), L_D = L_real + L_fake for D, and G's adversarial
    term L_adv = BCE(D(C^, X).logits, 1) (L_G = L_MSE + alpha L_adv); each a mean over batch and joints, terms
    multiplied by `weight` [B, J] (e.g. to mask unannotated joints). `real` is detached here; `fake` is used as
    given (see AdversarialLosses); `D_fake` as in `sat_losses`."""
    _check_pair("fake", fake, "real", real)
    _check_weight(d_fake, real, "d_fake")
    _check_weight(weight, real)
    ones = torch.ones_like(d_fake)
    l_real = _weighted_bce(D(real.detach(), image).logits, ones, weight)
    logits_fake = (D if D_fake is None else D_fake)(fake, image).logits
    l_fake = _weighted_bce(logits_fake, d_fake.detach(), weight)
    return AdversarialLosses(l_real + l_fake, _weighted_bce(logits_fake, ones, weight), l_real, l_fake)
