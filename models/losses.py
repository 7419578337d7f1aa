"""Training losses: heatmap MSE with intermediate supervision, and the two adversarial objectives of Self
Adversarial Training (Chou et al.): the BEGAN-style "sat" objective and the cGAN objective with d_fake.

Pure functions plus one small controller (`BEGANBalance`, the BEGAN k_t); no optimizer logic. The
intended trainer step, with G the stacked hourglass and D a `models.discriminator.PoseDiscriminator`:

    outputs = G(images); fake = outputs[-1]                 # the LAST stack's heatmaps
    # D step: D sees the real heatmaps and the DETACHED fake (G gets no gradient from it)
    loss_d, l_real, l_fake = sat_discriminator_loss(D, target, fake, images, balance.k)
    opt_d.zero_grad(); loss_d.backward(); opt_d.step()
    balance.update(l_real.item(), l_fake.item())
    # G step: the adversarial term runs D with its parameters frozen, so gradient flows through D's
    # input into G but D's parameters receive none
    loss_g = heatmap_mse(outputs, target, weight) + SAT_LAMBDA_G * sat_generator_adv(D, fake, images)
    opt_g.zero_grad(); loss_g.backward(); opt_g.step()

(cGAN: `d_fake_targets`, `cgan_discriminator_loss`, then `CGAN_ALPHA * cgan_generator_adv`.)
With DistributedDataParallel, pass the unwrapped D (`ddp.module`) to the *_generator_adv functions: D
takes no gradient there, so no all-reduce should be expected of it.

Heatmaps are [B, J, h, w] in the heatmap frame of models/heatmap.py; weights [B, J] (1 = supervise).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.heatmap import heatmap_argmax

# Defaults of the paper / the authors' code.
SAT_LAMBDA_G = 1e-4  # weight of the adversarial term in L_G
SAT_GAMMA = 0.5  # BEGAN diversity ratio: target of L_fake / L_real
SAT_LAMBDA_K = 1e-3  # k_t learning rate
SAT_K0 = 0.0
CGAN_ALPHA = 1.0 / 200  # weight of the adversarial term in L_G
CGAN_DELTA = 0.003  # d_fake threshold on the normalised peak distance


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
    models.heatmap.target_weight) zeroes the joints that have no target.
    """
    if isinstance(outputs, torch.Tensor) or not isinstance(outputs, Sequence) or len(outputs) == 0:
        raise TypeError("heatmap_mse: outputs must be a non-empty list with one [B, J, h, w] tensor per "
                        f"stack, got {type(outputs).__name__}")
    for i, out in enumerate(outputs):
        _check_pair(f"outputs[{i}]", out, "target", target)
    _check_weight(weight, target)
    w = weight.to(target.dtype)[..., None, None]
    return sum(((out - target) ** 2 * w).mean() for out in outputs)


@contextlib.contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, `module`'s parameters do not require grad, so a forward pass run here builds
    no graph to them: a later backward gives them no gradient while gradient still flows through the
    module to its inputs. Restores each parameter's previous flag on exit (also on error)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)


# ---------------------------------------------------------------- SAT (BEGAN-style)


def reconstruction_error(D: nn.Module, heatmaps: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
    """err(C, D(C, X)): mean squared error between heatmaps and D's reconstruction of them."""
    return F.mse_loss(D(heatmaps, image).reconstruction, heatmaps)


def _check_k(k: float) -> float:
    k = float(k)
    if not 0.0 <= k <= 1.0:
        raise ValueError(f"BEGAN k_t must lie in [0, 1], got {k}")
    return k


def sat_discriminator_loss(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, image: torch.Tensor | None,
                           k: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """D's SAT loss: (L_D, L_real, L_fake) with L_real = err(C, D(C, X)), L_fake = err(C^, D(C^, X)) on the
    detached fake C^ (the last stack's output), L_D = L_real - k_t * L_fake.

    All three are graph-attached tensors (D's parameters get gradient from both terms); use .item() for
    logging and for `BEGANBalance.update`.
    """
    _check_pair("fake", fake, "real", real)
    k = _check_k(k)
    l_real = reconstruction_error(D, real.detach(), image)
    l_fake = reconstruction_error(D, fake.detach(), image)
    return l_real - k * l_fake, l_real, l_fake


def sat_generator_adv(D: nn.Module, fake: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
    """G's SAT adversarial term L_adv = err(C^, D(C^, X)), with D's parameters frozen: the gradient
    reaches G through D's input only. L_G = L_MSE + lambda_G * L_adv (lambda_G = SAT_LAMBDA_G)."""
    _check_pair("fake", fake, "fake", fake)
    with frozen_parameters(D):
        return reconstruction_error(D, fake, image)


class BEGANBalance:
    """The BEGAN equilibrium controller: k_{t+1} = clip(k_t + lambda_k (gamma L_real - L_fake), 0, 1).

    State is plain python floats, so `state_dict()` survives torch.load(weights_only=True).
    """

    def __init__(self, gamma: float = SAT_GAMMA, lambda_k: float = SAT_LAMBDA_K, k: float = SAT_K0):
        if not (math.isfinite(gamma) and gamma > 0 and math.isfinite(lambda_k) and lambda_k >= 0):
            raise ValueError(f"BEGANBalance needs gamma > 0 and lambda_k >= 0, got {gamma}, {lambda_k}")
        self.gamma, self.lambda_k, self.k = float(gamma), float(lambda_k), _check_k(k)

    @staticmethod
    def _losses(l_real: float, l_fake: float) -> tuple[float, float]:
        l_real, l_fake = (v.detach().item() if isinstance(v, torch.Tensor) else float(v)
                          for v in (l_real, l_fake))
        if not (math.isfinite(l_real) and math.isfinite(l_fake)):
            raise ValueError(f"BEGAN losses must be finite, got L_real={l_real}, L_fake={l_fake}")
        return l_real, l_fake

    def update(self, l_real: float, l_fake: float) -> float:
        """Advance k_t with this step's losses; returns the new k."""
        l_real, l_fake = self._losses(l_real, l_fake)
        self.k = min(max(self.k + self.lambda_k * (self.gamma * l_real - l_fake), 0.0), 1.0)
        return self.k

    def convergence(self, l_real: float, l_fake: float) -> float:
        """BEGAN's convergence measure M = L_real + |gamma L_real - L_fake| (for logging)."""
        l_real, l_fake = self._losses(l_real, l_fake)
        return l_real + abs(self.gamma * l_real - l_fake)

    def state_dict(self) -> dict[str, float]:
        return {"k": self.k, "gamma": self.gamma, "lambda_k": self.lambda_k}

    def load_state_dict(self, state: dict) -> None:
        missing = {"k", "gamma", "lambda_k"} - set(state)
        if missing:
            raise ValueError(f"BEGANBalance state lacks {sorted(missing)}")
        self.__init__(gamma=float(state["gamma"]), lambda_k=float(state["lambda_k"]), k=float(state["k"]))

    def __repr__(self) -> str:
        return f"BEGANBalance(k={self.k:.6g}, gamma={self.gamma}, lambda_k={self.lambda_k})"


# ---------------------------------------------------------------- cGAN with d_fake


def d_fake_targets(prediction: torch.Tensor, target: torch.Tensor, delta: float = CGAN_DELTA,
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
    64), d_fake = 1 exactly when both peaks fall on the same heatmap pixel.
    """
    _check_pair("prediction", prediction, "target", target)
    if not (math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be a positive finite number, got {delta}")
    b, j, h, w = target.shape
    side = float(max(h, w))
    with torch.no_grad():
        pred_peak, _ = heatmap_argmax(prediction.detach())
        gt_peak, gt_max = heatmap_argmax(target.detach())
        dtype = prediction.dtype if prediction.is_floating_point() else torch.float32
        cdt = torch.promote_types(dtype, torch.float32)
        dist = (pred_peak - gt_peak).to(cdt).norm(dim=-1)  # [B, J]
        if normalize == "heatmap":
            norm = torch.full((b, 1), side, dtype=cdt, device=dist.device)
        elif normalize == "torso":
            if torso is None or len(torso) != 2 or not all(0 <= int(t) < j for t in torso):
                raise ValueError(f"normalize='torso' needs a pair of joint indices in [0, {j}), got {torso}")
            a, c = int(torso[0]), int(torso[1])
            length = (gt_peak[:, a] - gt_peak[:, c]).to(cdt).norm(dim=-1)
            valid = (length > 0) & (gt_max[:, a] > 0) & (gt_max[:, c] > 0)
            norm = torch.where(valid, length, torch.full_like(length, side)).unsqueeze(1)
        else:
            raise ValueError(f"normalize must be 'heatmap' or 'torso', got {normalize!r}")
        return (dist / norm < delta).to(dtype)


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


def cgan_discriminator_loss(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, image: torch.Tensor | None,
                            d_fake: torch.Tensor, weight: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """D's cGAN loss: (L_D, L_real, L_fake) with L_real = BCE(D(C, X).logits, 1), L_fake =
    BCE(D(C^.detach(), X).logits, d_fake) (d_fake from `d_fake_targets`), L_D = L_real + L_fake, each a
    mean over batch and joints (terms multiplied by `weight` [B, J], e.g. to mask unannotated joints).
    All three are graph-attached; D's parameters get gradient from both terms, G none."""
    _check_pair("fake", fake, "real", real)
    _check_weight(d_fake, real, "d_fake")
    _check_weight(weight, real)
    l_real = _weighted_bce(D(real.detach(), image).logits, torch.ones_like(d_fake), weight)
    l_fake = _weighted_bce(D(fake.detach(), image).logits, d_fake.detach(), weight)
    return l_real + l_fake, l_real, l_fake


def cgan_generator_adv(D: nn.Module, fake: torch.Tensor, image: torch.Tensor | None,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """G's cGAN adversarial term BCE(D(C^, X).logits, 1) with D's parameters frozen (gradient reaches G
    through D's input only). L_G = L_MSE + alpha * this (alpha = CGAN_ALPHA)."""
    _check_pair("fake", fake, "fake", fake)
    _check_weight(weight, fake)
    with frozen_parameters(D):
        logits = D(fake, image).logits
    return _weighted_bce(logits, torch.ones_like(logits), weight)
