"""BatchNorm folded into the convolution before it: an inference copy of a model with fewer kernels.

In eval mode a BatchNorm is an affine map per channel, y = s (x - mean) + beta with s = gamma / sqrt(var + eps),
so after a convolution (weight W, bias b, or none) it is the convolution with weight s W and bias
s (b - mean) + beta. `fold_batchnorm` does that for every BatchNorm that directly follows a Conv2d inside an
nn.Sequential (the hourglass's conv_bn_relu, and the BN-ReLU pairs after conv1 and conv2 in a residual's body);
the folded BatchNorm becomes an Identity. A BatchNorm with no convolution right before it stays: the residuals
are pre-activation (BN-ReLU-conv), so each residual's first BatchNorm reads the skip path's input.

The copy is in eval mode and has no gradients; the folding is done in float64 and the results cast to the
convolution's dtype. The input model is not changed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def fold_conv_bn(conv: nn.Conv2d, bn: _BatchNorm) -> nn.Conv2d:
    """A new Conv2d equal to bn(conv(x)) with bn in eval mode (its running statistics)."""
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, _BatchNorm):
        raise TypeError(f"fold_conv_bn needs a Conv2d and a BatchNorm, got {type(conv).__name__} and "
                        f"{type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn}: no running statistics (track_running_stats=False): cannot be folded")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"{bn} follows a convolution with {conv.out_channels} output channels")
    f64 = torch.float64
    scale = bn.running_var.detach().to(f64).add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.detach().to(f64)
    bias = conv.bias.detach().to(f64) if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.detach().to(f64)) * scale
    if bn.bias is not None:
        bias = bias + bn.bias.detach().to(f64)
    w = conv.weight.detach()
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                       device=w.device, dtype=w.dtype)
    with torch.no_grad():
        folded.weight.copy_(w.to(f64) * scale.view(-1, 1, 1, 1))
        folded.bias.copy_(bias)
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with every BatchNorm that directly follows a Conv2d in an nn.Sequential
    folded into that convolution (the BatchNorm replaced by an Identity); `model` is unchanged."""
    out = copy.deepcopy(model).eval()
    for module in out.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, _BatchNorm):
                module._modules[a] = fold_conv_bn(conv, bn)
                module._modules[b] = nn.Identity()
    out.requires_grad_(False)
    return out


def count_batchnorms(model: nn.Module) -> int:
    """BatchNorm modules in `model` (what folding leaves)."""
    return sum(isinstance(m, _BatchNorm) for m in model.modules())
