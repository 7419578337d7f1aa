"""Pose discriminator D: a stacked hourglass of the generator's architecture that reads heatmaps.

It works at heatmap resolution (stride-1 stem). Input: J heatmaps, plus the RGB crop area-resized to the
heatmap size when `conditional` (3 + J channels). Output: J reconstructed heatmaps (the BEGAN-style SAT
objective scores a pose by the reconstruction error) and J per-joint logits, the global average of each
reconstructed map (the cGAN objective reads sigmoid(logit_j) as "joint j is real").
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.hourglass import StackedHourglass


class DiscriminatorOutput(NamedTuple):
    reconstruction: torch.Tensor  # [B, J, h, w]
    logits: torch.Tensor  # [B, J], pre-sigmoid per-joint scores


class PoseDiscriminator(nn.Module):
    def __init__(self, num_joints: int = 16, num_stacks: int = 1, features: int = 256,
                 num_residual: int = 1, conditional: bool = True, depth: int = 4):
        super().__init__()
        self.num_joints, self.conditional = num_joints, conditional
        self.net = StackedHourglass(num_stacks=num_stacks, num_joints=num_joints, features=features,
                                    num_residual=num_residual,
                                    in_channels=num_joints + (3 if conditional else 0), stem_stride=1,
                                    depth=depth)

    def forward(self, heatmaps: torch.Tensor, image: torch.Tensor | None = None) -> DiscriminatorOutput:
        if heatmaps.dim() != 4 or heatmaps.shape[1] != self.num_joints:
            raise ValueError(f"discriminator expects [B, {self.num_joints}, h, w] heatmaps, "
                             f"got {tuple(heatmaps.shape)}")
        x = heatmaps
        if self.conditional:
            if image is None:
                raise ValueError("a conditional discriminator needs the RGB image")
            # Area resize: heatmap pixel (i, j) is the mean of the image pixels it covers, which keeps
            # image and heatmap pixel centres aligned (x_heatmap = (x_image - (s - 1) / 2) / s).
            small = F.adaptive_avg_pool2d(image, heatmaps.shape[-2:]).to(heatmaps.dtype)
            x = torch.cat([heatmaps, small], dim=1)
        reconstruction = self.net(x)[-1]
        return DiscriminatorOutput(reconstruction, reconstruction.mean(dim=(2, 3)))
