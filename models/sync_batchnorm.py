"""BatchNorm with statistics over the global batch of all ranks, on any device and process-group backend.

torch.nn.SyncBatchNorm does this for GPUs only; `CrossRankBatchNorm2d` does it with differentiable
all-reduces (a synchronous sum whose backward is again a sum), so it also runs on CPU with gloo - which
is what makes a 2-process run and a 1-process run of the same global batch produce the same weights.
`convert_sync_batchnorm` picks torch's CUDA kernel on GPUs and this module elsewhere.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with gradient: d(sum_r x_r)/d x_r is the identity, so the backward sums the
    incoming gradients of every rank's loss the same way."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(x)


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training-mode mean and variance are taken over every rank's samples."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # fp16/bf16 -> fp32; fp64 stays
        count = torch.full((1,), x.numel() / c, device=x.device, dtype=xf.dtype)
        totals = sum_over_ranks(torch.cat([xf.sum(dim=(0, 2, 3)), count]))  # one collective: sums and n
        n = totals[c:]
        mean = totals[:c] / n
        centred = xf - mean.view(1, c, 1, 1)
        var = sum_over_ranks(centred.pow(2).sum(dim=(0, 2, 3))) / n  # biased, used to normalise
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(self.running_var.dtype))
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of `module` made cross-rank: torch's SyncBatchNorm on CUDA, CrossRankBatchNorm2d
    elsewhere. Parameters and buffers are kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CrossRankBatchNorm2d):
        new = CrossRankBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module
