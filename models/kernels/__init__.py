"""Fused heatmap ops: each op's Triton kernel beside its torch reference (one module per op), and the
dispatch between them.

    gaussian.py     Gaussian targets                  render_gaussian
    stacked_mse.py  stacked masked MSE, fwd + bwd     heatmap_mse
    decode.py       argmax + quarter-pixel + conf,    decode_heatmaps, decode_flip_merged
                    fused with the flip-test merge
    dfake.py        cGAN d_fake labels                d_fake_targets
    cases.py        the benchmark cases of `bench kernels` (inputs, reference, fused, bytes to move)

Every entry point takes backend='auto' | 'torch' | 'triton': 'auto' runs the Triton kernel on CUDA tensors
of float16/bfloat16/float32 when triton imports, the torch reference elsewhere (CPU, float64, no triton);
the choice is a plain Python check on device and dtype (runtime.use_triton), so torch.compile traces the
torch path on CPU without a graph break. Both backends have the same semantics, checked by tests/kernels
on CPU under TRITON_INTERPRET=1 and on a GPU. The public names are models.heatmap.render_gaussian /
decode_heatmaps / decode_flip_merged and models.losses.heatmap_mse / d_fake_targets, which call these.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.kernels.decode import decode_flip_merged_torch, decode_heatmaps_torch, decode_triton
from models.kernels.dfake import d_fake_targets_torch, d_fake_targets_triton
from models.kernels.gaussian import render_gaussian_torch, render_gaussian_triton
from models.kernels.runtime import HAVE_TRITON, TRITON_DTYPES, use_triton
from models.kernels.stacked_mse import heatmap_mse_torch, heatmap_mse_triton

__all__ = ["HAVE_TRITON", "TRITON_DTYPES", "d_fake_targets", "decode_flip_merged", "decode_heatmaps",
           "heatmap_mse", "render_gaussian", "use_triton"]


def render_gaussian(keypoints: torch.Tensor, visible: torch.Tensor, size: Sequence[int],
                    sigma: float = 1.0, backend: str = "auto") -> torch.Tensor:
    """Gaussian target maps [B, J, h, w]: exp(-d^2 / (2 sigma^2)), d the distance from each pixel
    centre to the (subpixel) keypoint given in heatmap coordinates [B, J, 2]. Peak value 1 when the
    keypoint sits on a pixel centre (unnormalised). All-zero maps where `target_weight` is 0.

    Computed in at least float32 (float64 stays float64), returned in the keypoints' float dtype
    (models/kernels/gaussian.py; backend as in models/kernels).
    """
    if use_triton(keypoints, backend):
        return render_gaussian_triton(keypoints, visible, size, sigma)
    return render_gaussian_torch(keypoints, visible, size, sigma)


def heatmap_mse(outputs: Sequence[torch.Tensor], target: torch.Tensor, weight: torch.Tensor,
                backend: str = "auto") -> torch.Tensor:
    """sum over stacks of mean(weight * (out - target)^2), differentiable (models/kernels/stacked_mse.py).
    'auto' keeps the torch reference where any tensor is not a CUDA tensor of a kernel dtype, or the
    weight requires a gradient. Inputs are validated by models.losses.heatmap_mse."""
    fused = use_triton(target, backend)
    if backend == "auto" and fused:
        fused = not weight.requires_grad and all(use_triton(o, "auto") for o in outputs)
    return heatmap_mse_triton(outputs, target, weight) if fused else heatmap_mse_torch(outputs, target, weight)


def decode_heatmaps(heatmaps: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints from heatmaps: (coords [B, J, 2] in heatmap coordinates, confidence [B, J]).

    coords = integer argmax (first maximum on ties) plus the standard quarter-pixel shift toward the
    higher neighbour, separately in x and in y: +-0.25 by the sign of (next - previous) along that axis,
    only where both neighbours exist (no shift on the border rows/columns) and none for equal
    neighbours. confidence = the maximum value. coords dtype: the heatmaps' float dtype.
    """
    if use_triton(heatmaps, backend):
        return decode_triton(heatmaps)
    return decode_heatmaps_torch(heatmaps)


def decode_flip_merged(heatmaps: torch.Tensor, flipped: torch.Tensor, flip_index: Sequence[int] | torch.Tensor,
                       backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The flip test and the decode in one pass: decode_heatmaps(flip_merge(heatmaps, flipped, flip_index)),
    `flipped` being the maps predicted on the mirrored input. 'auto' keeps the torch reference where the
    two tensors' dtypes differ."""
    fused = use_triton(heatmaps, backend)
    if backend == "auto" and fused:
        fused = flipped.dtype == heatmaps.dtype and flipped.device == heatmaps.device
    return decode_triton(heatmaps, flipped, flip_index) if fused else decode_flip_merged_torch(heatmaps, flipped,
                                                                                                flip_index)


def d_fake_targets(prediction: torch.Tensor, target: torch.Tensor, delta: float, normalize: str = "heatmap",
                   torso: tuple[int, int] | None = None, backend: str = "auto") -> torch.Tensor:
    """cGAN per-joint labels [B, J] (models/kernels/dfake.py; the documented API is
    models.losses.d_fake_targets). 'auto' keeps the torch reference where the target is not a CUDA tensor
    of a kernel dtype."""
    fused = use_triton(prediction, backend)
    if backend == "auto" and fused:
        fused = use_triton(target, "auto")
    if fused:
        return d_fake_targets_triton(prediction, target, delta, normalize, torso)
    return d_fake_targets_torch(prediction, target, delta, normalize, torso)
