"""Stacked hourglass network (Newell, Yang, Deng, ECCV 2016), as the generator G.

Faithful to the reference implementation: pre-activation bottleneck residuals, a 7x7/2 stem with
residuals and a max-pool (256x256 -> 64x64xF), depth-4 hourglasses, and intermediate supervision after
every stack whose 1x1 remaps are added back to the trunk. The stem has three residuals after the pool
(128, 128, F), as in the authors' stacked model (pose-hg-train `hg-stacked.lua`: r4, r5, r6); with it
the parameter counts match the published ones (16 joints: 3.48M, 6.62M, 12.91M, 25.49M for 1/2/4/8
stacks).

Convolutions whose output goes straight into a BatchNorm carry no bias: BatchNorm subtracts the batch mean, which
cancels it exactly in training, and in evaluation it is the same as a shift of the running mean. The published
counts above include those biases (`cancelled_bias_count` gives their number, `model-info` reports both). The
biases are dropped after the layers are initialised, so the random-number stream and every other initial weight
are those of the model with biases; `models.legacy` folds the biases of checkpoints written with them into the
BatchNorm running means.
"""

from __future__ import annotations

import torch
from torch import nn

from models.legacy import load_state_dict_pre_hook


def drop_cancelled_biases(seq: nn.Sequential) -> nn.Sequential:
    """Remove the bias of every Conv2d of `seq` that is followed directly by a BatchNorm2d (which cancels it).
    The one rule for "bias before BatchNorm" (models/legacy.py applies it to old state dicts)."""
    layers = list(seq)
    for conv, norm in zip(layers, layers[1:]):
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.modules.batchnorm._BatchNorm):
            conv.bias = None
    return seq


def cancelled_bias_count(model: nn.Module) -> int:
    """How many parameters the dropped biases had: a model's count plus this is the count of the reference
    implementation, whose every convolution has a bias."""
    total = 0
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            layers = list(seq)
            total += sum(conv.out_channels for conv, norm in zip(layers, layers[1:])
                         if isinstance(conv, nn.Conv2d) and conv.bias is None
                         and isinstance(norm, nn.modules.batchnorm._BatchNorm))
    return total


class Residual(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1(F/2), BN-ReLU-3x3(F/2), BN-ReLU-1x1(F); 1x1 skip if C changes."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.body = drop_cancelled_biases(nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, mid, 1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1),
        ))
        same = in_channels == out_channels
        self.skip = nn.Identity() if same else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


def residual_stack(in_channels: int, out_channels: int, count: int) -> nn.Sequential:
    """`count` residual modules at one location (the first one may change the channel count)."""
    return nn.Sequential(*(Residual(in_channels if i == 0 else out_channels, out_channels)
                           for i in range(count)))


class Hourglass(nn.Module):
    """One recursive hourglass of the given depth: each level halves the resolution (max-pool) and adds
    the upsampled lower branch to a full-resolution skip branch."""

    def __init__(self, depth: int, features: int, num_residual: int = 1):
        super().__init__()
        self.up1 = residual_stack(features, features, num_residual)
        self.pool = nn.MaxPool2d(2, 2)
        self.low1 = residual_stack(features, features, num_residual)
        self.low2 = (Hourglass(depth - 1, features, num_residual) if depth > 1
                     else residual_stack(features, features, num_residual))
        self.low3 = residual_stack(features, features, num_residual)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.low3(self.low2(self.low1(self.pool(x))))
        return self.up1(x) + self.upsample(low)


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1) -> nn.Sequential:
    return drop_cancelled_biases(nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride,
                                                         padding=kernel // 2),
                                               nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)))


class StackedHourglass(nn.Module):
    """N stacked hourglasses with intermediate supervision.

    `stem_stride=4` (the generator): 7x7/2 conv, residual, max-pool, three residuals: HxW -> H/4 x W/4.
    `stem_stride=1` (the discriminator, which already works at heatmap resolution): the same layers with
    a stride-1 conv and no pool.

    forward(x) returns a list with the heatmaps of every stack, [B, J, H/stride, W/stride] each.
    """

    def __init__(self, num_stacks: int = 2, num_joints: int = 16, features: int = 256,
                 num_residual: int = 1, in_channels: int = 3, stem_stride: int = 4, depth: int = 4):
        super().__init__()
        if stem_stride not in (1, 4):
            raise ValueError(f"stem_stride must be 1 or 4, got {stem_stride}")
        if num_stacks < 1 or num_joints < 1 or features < 2 or features % 2 or num_residual < 1:
            raise ValueError(f"bad hourglass size: stacks={num_stacks} joints={num_joints} "
                             f"features={features} (must be even) residuals={num_residual}")
        self.num_stacks, self.num_joints, self.features = num_stacks, num_joints, features
        stem_mid = min(128, features)
        self.stem = nn.Sequential(
            conv_bn_relu(in_channels, stem_mid // 2, 7, stride=2 if stem_stride == 4 else 1),
            Residual(stem_mid // 2, stem_mid),
            nn.MaxPool2d(2, 2) if stem_stride == 4 else nn.Identity(),
            Residual(stem_mid, stem_mid),
            Residual(stem_mid, stem_mid),
            Residual(stem_mid, features),
        )
        self.hourglasses = nn.ModuleList(Hourglass(depth, features, num_residual) for _ in range(num_stacks))
        self.features_out = nn.ModuleList(
            nn.Sequential(residual_stack(features, features, num_residual), conv_bn_relu(features, features))
            for _ in range(num_stacks))
        self.heads = nn.ModuleList(nn.Conv2d(features, num_joints, 1) for _ in range(num_stacks))
        # 1x1 remaps of the features and of the heatmaps, added back to the trunk between stacks.
        self.remap_features = nn.ModuleList(nn.Conv2d(features, features, 1) for _ in range(num_stacks - 1))
        self.remap_heatmaps = nn.ModuleList(nn.Conv2d(num_joints, features, 1) for _ in range(num_stacks - 1))
        self.register_load_state_dict_pre_hook(load_state_dict_pre_hook)  # checkpoints with the biases

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        for i in range(self.num_stacks):
            y = self.features_out[i](self.hourglasses[i](x))
            heatmaps = self.heads[i](y)
            outputs.append(heatmaps)
            if i < self.num_stacks - 1:
                x = x + self.remap_features[i](y) + self.remap_heatmaps[i](heatmaps)
        return outputs
