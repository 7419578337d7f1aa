"""One optimizer step of Algorithm 1, for every objective (harness/objectives.py says which D G's term uses):

    G forward -> MSE over stacks -> ONE D pass on the real and one on the fake (a detached leaf): D's loss and G's
    adversarial term -> G's adversarial gradient at D's input (D's parameters untouched) -> D's backward
    -> G's backward (MSE + the adversarial gradient, one pass) -> step D, step G

The caller then averages the returned values over ranks and lets the objective update its state (k_t).

Models are reached through `Model` handles, so the same step serves plain modules, DDP and DeepSpeed engines
(harness/strategies): `backward`, `step` and `no_sync` dispatch to the strategy. Every returned value is a
float64 device tensor: the step never reads a number back to the host.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.distributed import Runtime
from harness.objectives import NoAdversary
from harness.precision import autocast, param_dtype
from models import losses


def unwrap(model: nn.Module) -> nn.Module:
    """The user module inside DDP (`.module`) or a DeepSpeed engine (`.module`)."""
    return getattr(model, "module", model)


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

    def loss_scale(self, device: torch.device) -> torch.Tensor | None:
        """The GradScaler's current scale as a device tensor (no host sync), None without a scaler (a DeepSpeed
        engine scales inside its own backward)."""
        if self.engine is not None or self.scaler is None or not self.scaler.is_enabled():
            return None
        return self.scaler.scale(torch.ones((), device=device))

    def no_sync(self, skip: bool):
        """DDP: skip the gradient all-reduce on all but the last micro-batch."""
        if skip and hasattr(self.module, "no_sync") and self.engine is None:
            return self.module.no_sync()
        return nullcontext()

    def grad_norm(self) -> torch.Tensor | None:
        """L2 norm of the accumulated gradients (call between the last backward and step), on the device;
        None where it is not measured (a DeepSpeed engine keeps ZeRO's gradients in its own partitions). Under
        an fp16 GradScaler this is the scaled norm."""
        if self.engine is not None:
            return None
        grads = [p.grad for p in unwrap(self.module).parameters() if p.grad is not None]
        if not grads:
            return None
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in grads]))


class StepValues:
    """Means over the micro-batches of one step, kept on the device in float64."""

    def __init__(self, micro_batches: int):
        self.n = micro_batches
        self.values: dict[str, torch.Tensor] = {}

    def add(self, logs: dict[str, torch.Tensor]) -> None:
        for name, value in logs.items():
            v = value.detach().double() / self.n
            self.values[name] = self.values[name] + v if name in self.values else v


def train_step(micro_batches: list[dict], g: Model, d: Model | None, objective: NoAdversary, precision: str,
               measure_grad_norms: bool = False) -> dict[str, torch.Tensor]:
    """One optimizer step over `micro_batches` (grad_accum of them, already on the device: `image`,
    `heatmaps`, `target_weight`). Returns this rank's values (float64 device scalars)."""
    dtype = param_dtype(precision)
    values = StepValues(len(micro_batches))
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        image, target, weight = (batch[k].to(dtype) for k in ("image", "heatmaps", "target_weight"))
        device = image.device
        with g.no_sync(not last):
            with autocast(device, precision):
                outputs = g.module(image)
            outputs = [o.to(dtype) for o in outputs]  # losses in fp32/fp64, outside autocast
            fake = outputs[-1]
            loss_mse = losses.heatmap_mse(outputs, target, weight)
            loss_g, g_loss = loss_mse, loss_mse  # g_loss: what G backpropagates (the logged loss_g's gradient)
            if d is not None:
                # D's input: the fake cut from G's graph; its gradient is G's adversarial gradient. A view of the
                # detached leaf, not the leaf: module trackers (FlopCounterMode's) refuse autograd.grad to a leaf
                # that is a module input
                fake_in = fake.detach().requires_grad_().view_as(fake)
                with d.no_sync(not last):
                    # the real pass through the strategy's wrapper (DDP's reducer, DeepSpeed's engine), the fake pass
                    # through the plain module: autograd.grad below must not run DeepSpeed's backward hooks (they
                    # refuse any backward but engine.backward); D's parameters still get both passes' gradients in
                    # d.backward, where DDP and DeepSpeed reduce them
                    with autocast(device, precision):
                        loss_d, adv, logs = objective.adversarial(d.module, unwrap(d.module), target, fake_in, image,
                                                                  weight)
                    adv = adv.to(dtype)
                    # G's adversarial gradient through the pre-update D, before D's backward frees the graph; scaled
                    # like G's loss under fp16 so that D's activation gradients do not underflow
                    scale = g.loss_scale(device)
                    (grad_fake,) = torch.autograd.grad(adv if scale is None else adv * scale, fake_in,
                                                       retain_graph=True)
                    if scale is not None:
                        grad_fake = grad_fake / scale
                    d.backward(loss_d.to(dtype) / len(micro_batches))  # outside autocast, like every backward
                loss_g = loss_mse + adv.detach()
                # d(g_loss)/d(fake) = dL_MSE/d(fake) + grad_fake: G's whole gradient in one backward
                g_loss = loss_mse + (fake * grad_fake.to(fake.dtype)).sum()
                values.add(logs)
            values.add({"loss_mse": loss_mse, "loss_g": loss_g})
            g.backward(g_loss / len(micro_batches))
    if measure_grad_norms:
        norms = {"grad_norm_g": g.grad_norm(), "grad_norm_d": d.grad_norm() if d is not None else None}
        values.values.update({k: v for k, v in norms.items() if v is not None})
    if d is not None:
        d.step()
    g.step()
    return values.values


def synchronized_step(micro_batches: list[dict], g: Model, d: Model | None, objective: NoAdversary, rt: Runtime,
                      precision: str, measure_grad_norms: bool = False) -> dict[str, torch.Tensor]:
    """`train_step`, then its values averaged over ranks (one all-reduce, no host sync) and the objective's
    update from them, so k_t is the same on every rank. The trainer and `bench train` both step through here."""
    values = train_step(micro_batches, g, d, objective, precision, measure_grad_norms)
    names = sorted(values)
    reduced = dict(zip(names, rt.mean(torch.stack([values[k] for k in names])).unbind()))
    reduced.update(objective.update(reduced))
    return reduced
