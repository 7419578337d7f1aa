"""The adversarial objectives as objects: `none` (plain hourglass), `sat` (BEGAN-style) and `cgan` (d_fake).

Each objective owns its hyper-parameters and state and gives the training step two things:
  adversarial(D, D_fake, real, fake, image, weight) -> (L_D, term, logs)   from ONE pass of D over real and one
        over fake (D_fake: the same D, as the fake pass calls it): D's loss, and the weighted adversarial term
        added to G's MSE loss
  update(values)                       -> logs  the per-step update from rank-averaged values (k_t)
so `harness.step.train_step` reads top to bottom with no branch on the objective's name.

The rule for which D G's adversarial term goes through: the PRE-update D of this step (BEGAN computes both
losses from one forward), in the same pass that gives D its loss on the fake: one D forward on the fake per step,
whose BatchNorm running statistics are updated once per input kind (real, fake). The step routes the gradients:
D's parameters get only L_D's (for SAT -k_t dL_fake/dtheta beside L_real's, for cGAN the fake-label term), G's
output only the adversarial term's. D's optimizer steps after G's backward.

Every value is a device tensor: nothing here reads a number back to the host, so a step never waits for the
GPU. SAT's k_t is a float64 device scalar, updated from the losses averaged over ranks, hence identical on
every rank; `state_dict()` holds it as a plain float (checkpoints load with weights_only=True).
"""

from __future__ import annotations

from typing import Any

import torch

from harness.config import Config
from models import losses

Logs = dict[str, torch.Tensor]


class NoAdversary:
    """The plain stacked hourglass: G trained with the heatmap MSE only; no D."""

    name = "none"
    uses_discriminator = False

    def adversarial(self, d, d_fake_pass, real, fake, image, weight) -> tuple[torch.Tensor, torch.Tensor, Logs]:
        raise RuntimeError("objective 'none' has no discriminator")

    def update(self, values: Logs) -> Logs:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class SAT(NoAdversary):
    """Self Adversarial Training (BEGAN-style): D reconstructs heatmaps; L_real = err(C, D(C, X)),
    L_fake = err(C^, D(C^, X)); L_D = L_real - k_t L_fake; G adds lambda_G * err(C^, D(C^, X));
    k_{t+1} = clip(k_t + lambda_k (gamma L_real - L_fake), 0, 1).

    When k_t stays 0 (L_fake above gamma L_real from the start, as in short runs with the paper's defaults),
    L_D = L_real: D only learns to reconstruct real heatmaps, and G's term pushes its output towards heatmaps D
    reconstructs well - a learned pose prior, without a term that makes D reject fakes.
    """

    name = "sat"
    uses_discriminator = True

    def __init__(self, gamma: float, lambda_k: float, lambda_g: float, k0: float, device: torch.device):
        if not (0.0 <= k0 <= 1.0):
            raise ValueError(f"BEGAN k_t must lie in [0, 1], got {k0}")
        self.gamma, self.lambda_k, self.lambda_g = float(gamma), float(lambda_k), float(lambda_g)
        self.k = torch.tensor(float(k0), dtype=torch.float64, device=device)

    def adversarial(self, d, d_fake_pass, real, fake, image, weight) -> tuple[torch.Tensor, torch.Tensor, Logs]:
        t = losses.sat_losses(d, real, fake, image, self.k, D_fake=d_fake_pass)
        return t.loss_d, self.lambda_g * t.adv, {"loss_d": t.loss_d, "l_real": t.l_real, "l_fake": t.l_fake,
                                                 "loss_adv": t.adv}

    def update(self, values: Logs) -> Logs:
        l_real, l_fake = values["l_real"], values["l_fake"]
        convergence = l_real + (self.gamma * l_real - l_fake).abs()
        # in place: a CUDA graph of the step (harness/graphed_step.py) reads and writes this very tensor
        self.k.copy_((self.k + self.lambda_k * (self.gamma * l_real - l_fake)).clamp(0.0, 1.0))
        return {"k": self.k.clone(), "convergence": convergence}

    def state_dict(self) -> dict[str, Any]:
        return {"k": float(self.k), "gamma": self.gamma, "lambda_k": self.lambda_k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"k", "gamma", "lambda_k"} - set(state)
        if missing:
            raise ValueError(f"SAT objective state lacks {sorted(missing)}")
        self.k.fill_(float(state["k"]))


class CGAN(NoAdversary):
    """The thesis's conditional GAN: D classifies per joint; its label for the fake is d_fake_j = 1 where G's
    peak is within delta (of the heatmap side, or of the torso) of the ground truth's; G adds alpha * BCE(D(C^),
    1). Terms are masked by the target weights."""

    name = "cgan"
    uses_discriminator = True

    def __init__(self, alpha: float, delta: float, distance: str, torso: tuple[int, int] | None):
        self.alpha, self.delta, self.distance, self.torso = float(alpha), float(delta), distance, torso

    def adversarial(self, d, d_fake_pass, real, fake, image, weight) -> tuple[torch.Tensor, torch.Tensor, Logs]:
        d_fake = losses.d_fake_targets(fake.detach(), real, self.delta, normalize=self.distance, torso=self.torso)
        t = losses.cgan_losses(d, real, fake, image, d_fake, weight, D_fake=d_fake_pass)
        return t.loss_d, self.alpha * t.adv, {"loss_d": t.loss_d, "l_real": t.l_real, "l_fake": t.l_fake,
                                              "d_fake": d_fake.float().mean(), "loss_adv": t.adv}


def build_objective(cfg: Config, torso: tuple[int, int] | None, device: torch.device) -> NoAdversary:
    a = cfg.adversarial
    if a.objective == "sat":
        return SAT(a.sat.gamma, a.sat.lambda_k, a.sat.lambda_g, a.sat.k0, device)
    if a.objective == "cgan":
        return CGAN(a.cgan.alpha, a.cgan.delta, a.cgan.distance, torso)
    return NoAdversary()
