"""Optimizers and the learning-rate schedule, from the config (one factory for DDP and DeepSpeed runs)."""

from __future__ import annotations

import torch

from harness.config import OptimizerConfig


def build_optimizer(params, c: OptimizerConfig, fused: bool = False) -> torch.optim.Optimizer:
    """The configured optimizer. `fused`: one fused kernel for all parameters where torch has it (Adam and SGD
    on CUDA), else the multi-tensor `foreach` implementation; the default is torch's per-parameter loop on CPU."""
    params = list(params)
    impl: dict = {}
    if fused:
        on_cuda = all(p.is_cuda for p in params)
        impl = {"fused": True} if on_cuda and c.name in ("adam", "sgd") else {"foreach": True}
    if c.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=c.lr, alpha=c.alpha, eps=c.eps, weight_decay=c.weight_decay, **impl)
    if c.name == "sgd":
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, **impl)
    return torch.optim.Adam(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, **impl)


def lr_at(c: OptimizerConfig, step: int, steps_per_epoch: int) -> float:
    """Piecewise-constant schedule: lr * gamma^(milestones passed). A function of the step alone, so a
    resumed run needs no scheduler state."""
    scale = steps_per_epoch if c.milestone_unit == "epoch" else 1
    return c.lr * c.gamma ** sum(step >= m * scale for m in c.milestones)


def set_lr(optimizer, c: OptimizerConfig, step: int, steps_per_epoch: int) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr_at(c, step, steps_per_epoch)
