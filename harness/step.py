"""One optimizer step of Algorithm 1 for each adversarial objective.

    G forward -> D on real and on detached fake (backward into D) -> G loss = MSE over stacks
    + lambda * adversarial term through D with D frozen (backward into G) -> update D, update G
    -> k_t update (SAT).

G's adversarial gradient is taken through the pre-update D, as BEGAN computes both losses from one
forward. D must not accumulate gradients from G's loss: during G's pass D's parameters have
requires_grad=False (losses.frozen_parameters) and D is called through its unwrapped module, so no
DDP/DeepSpeed reducer expects gradients from it; its BatchNorm running statistics are frozen for that
pass, so they are updated once per input kind (real, fake) per step.

Models are reached through a `Pair` so that the same step serves plain modules, DDP and DeepSpeed engines
(harness/strategies): `backward`, `step` and `no_sync` dispatch to the strategy.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.precision import autocast, param_dtype
from models import losses


def unwrap(model: nn.Module) -> nn.Module:
    """The user module inside DDP (`.module`) or a DeepSpeed engine (`.module`)."""
    return getattr(model, "module", model)


@contextmanager
def frozen_batchnorm_stats(module: nn.Module):
    """BatchNorm layers keep using batch statistics (training mode) but do not update their running
    statistics inside the block: momentum 0 leaves running = running, and the batch counter is restored."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield module
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


@dataclass
class Model:
    """A trainable model as the step sees it: the (possibly wrapped) module, its optimizer and scaler."""
    module: nn.Module
    optimizer: Any
    scaler: torch.amp.GradScaler | None = None
    engine: Any = None  # a DeepSpeed engine drives backward/step itself

    def backward(self, loss: torch.Tensor) -> None:
        if self.engine is not None:
            self.engine.backward(loss)
        elif self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(self) -> None:
        if self.engine is not None:
            self.engine.step()
            return
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def no_sync(self, skip: bool):
        """DDP: skip the gradient all-reduce on all but the last micro-batch."""
        if skip and hasattr(self.module, "no_sync") and self.engine is None:
            return self.module.no_sync()
        return nullcontext()


@dataclass
class StepSettings:
    objective: str  # none | sat | cgan
    precision: str = "fp32"
    lambda_g: float = 1e-4
    alpha: float = 1 / 200
    delta: float = 0.003
    distance: str = "heatmap"
    torso: tuple[int, int] | None = None


def train_step(micro_batches: list[dict], g: Model, d: Model | None, s: StepSettings,
               balance: losses.BEGANBalance | None, device: torch.device) -> dict[str, float]:
    """Run one optimizer step over `micro_batches` (grad_accum of them); return this rank's loss values
    (the caller averages them over ranks)."""
    n = len(micro_batches)
    sums: dict[str, float] = {}

    def add(name: str, value: torch.Tensor) -> None:
        sums[name] = sums.get(name, 0.0) + float(value.detach()) / n

    for i, batch in enumerate(micro_batches):
        last = i == n - 1
        dtype = param_dtype(s.precision)
        image = batch["image"].to(device, dtype, non_blocking=True)
        target = batch["heatmaps"].to(device, dtype, non_blocking=True)
        weight = batch["target_weight"].to(device, dtype, non_blocking=True)
        with g.no_sync(not last):
            with autocast(device, s.precision):
                outputs = g.module(image)
            outputs = [o.to(dtype) for o in outputs]  # losses in fp32/fp64, outside autocast
            fake = outputs[-1]
            loss_mse = losses.heatmap_mse(outputs, target, weight)
            add("loss_mse", loss_mse)
            loss_g = loss_mse
            if s.objective != "none":
                assert d is not None
                # -- D: real and detached fake ------------------------------------------------------
                with d.no_sync(not last):
                    with autocast(device, s.precision):
                        if s.objective == "sat":
                            loss_d, l_real, l_fake = losses.sat_discriminator_loss(
                                d.module, target, fake, image, balance.k)
                        else:
                            d_fake = losses.d_fake_targets(fake, target, s.delta, normalize=s.distance,
                                                           torso=s.torso)
                            loss_d, l_real, l_fake = losses.cgan_discriminator_loss(
                                d.module, target, fake, image, d_fake, weight)
                            add("d_fake", d_fake.float().mean())
                    add("l_real", l_real)
                    add("l_fake", l_fake)
                    add("loss_d", loss_d)
                    d.backward(loss_d.to(dtype) / n)  # outside autocast, as backward passes should be
                # -- G's adversarial term through the frozen, pre-update D --------------------------
                plain_d = unwrap(d.module)
                with frozen_batchnorm_stats(plain_d), autocast(device, s.precision):
                    if s.objective == "sat":
                        adv = losses.sat_generator_adv(plain_d, fake, image)
                        loss_g = loss_mse + s.lambda_g * adv.to(dtype)
                    else:
                        adv = losses.cgan_generator_adv(plain_d, fake, image, weight)
                        loss_g = loss_mse + s.alpha * adv.to(dtype)
                add("loss_adv", adv)
            add("loss_g", loss_g)
            g.backward(loss_g / n)
    if d is not None and s.objective != "none":
        d.step()
    g.step()
    return sums
