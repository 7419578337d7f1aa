"""Optimizers and the learning-rate schedule, from the config (one factory for DDP and DeepSpeed runs)."""

from __future__ import annotations

import torch

from harness.config import OptimizerConfig


def build_optimizer(params, c: OptimizerConfig, fused: bool = False, capturable: bool = False
                    ) -> torch.optim.Optimizer:
    """The configured optimizer. `fused`: one fused kernel for all parameters where torch has it (Adam and SGD
    on CUDA), else the multi-tensor `foreach` implementation; the default is torch's per-parameter loop on CPU.
    `capturable` (Adam, RMSprop; for a CUDA graph of the step): step counters on the device, no host sync, and
    the learning rate a device tensor that `set_lr` fills in place."""
    params = list(params)
    impl: dict = {}
    if fused:
        on_cuda = all(p.is_cuda for p in params)
        impl = {"fused": True} if on_cuda and c.name in ("adam", "sgd") else {"foreach": True}
    lr: float | torch.Tensor = c.lr
    if capturable:
        if c.name == "sgd":
            raise ValueError("sgd is not built capturable here; use adam or rmsprop for a CUDA graph of the step")
        impl = {"capturable": True, "foreach": True}
        lr = torch.tensor(c.lr, dtype=torch.float32, device=params[0].device)
    if c.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=c.alpha, eps=c.eps, weight_decay=c.weight_decay, **impl)
    if c.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=c.momentum, weight_decay=c.weight_decay, **impl)
    return torch.optim.Adam(params, lr=lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, **impl)


def lr_at(c: OptimizerConfig, step: int, steps_per_epoch: int) -> float:
    """Piecewise-constant schedule: lr * gamma^(milestones passed). A function of the step alone, so a
    resumed run needs no scheduler state."""
    scale = steps_per_epoch if c.milestone_unit == "epoch" else 1
    return c.lr * c.gamma ** sum(step >= m * scale for m in c.milestones)


def set_lr(optimizer, c: OptimizerConfig, step: int, steps_per_epoch: int) -> None:
    """The schedule's rate for `step`; a rate held in a tensor (capturable optimizers) is filled in place."""
    lr = lr_at(c, step, steps_per_epoch)
    for group in optimizer.param_groups:
        current = group["lr"]
        if not group.get("capturable"):
            group["lr"] = lr  # (also where a checkpoint of a capturable run left a tensor)
        elif isinstance(current, torch.Tensor):
            current.fill_(lr)  # the tensor a captured step reads
        else:
            group["lr"] = torch.tensor(lr, dtype=torch.float32, device=group["params"][0].device)
