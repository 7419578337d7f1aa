"""Heatmap targets, decoding, flip-test merging and coordinate maps between heatmap, crop and image.

Coordinate conventions (all coordinates are (x, y), x along the width):

* Heatmap coordinates are pixel-centre coordinates on the heatmap grid: the centre of heatmap pixel
  (row i, column j) is at x = j, y = i. The grid spans x in [0, w - 1], y in [0, h - 1].
* Crop-input coordinates (the network's input image, e.g. 256 x 256) are pixel-centre coordinates too.
  With stride s = input_size / heatmap_size (4 for 256 -> 64),

      x_in = s * x_hm + (s - 1) / 2,        x_hm = (x_in - (s - 1) / 2) / s,

  i.e. heatmap pixel j sits at the mean of the input pixels s*j .. s*j + s - 1 it covers (the same
  alignment as an area resize, which the conditional discriminator uses for its image input).
* Mirroring. An input of width W = s * w mirrors as x_in -> W - 1 - x_in. Then
  x_hm -> (W - 1 - x_in - (s - 1) / 2) / s = w - 1 - x_hm, which is exactly the heatmap's own pixel
  mirror (column j -> column w - 1 - j). So `flip_back` needs NO one-pixel shift, unlike code bases that
  use x_hm = x_in / s (whose heatmap mirror is off by (s - 1) / s px and patched with a 1-px shift).
* Original-image coordinates are pixel-centre coordinates of the stored image (see
  data_pipelines/records.py); a crop's 2x3 affine maps original -> crop-input coordinates.

All functions are vectorised over batch and joints and work on CPU and CUDA tensors of any float dtype.
"""

from __future__ import annotations

import torch

# The ops with a fused Triton kernel live in models/kernels (each beside its torch reference) and are
# re-exported here: render_gaussian, decode_heatmaps and decode_flip_merged dispatch to Triton on CUDA
# tensors and to torch elsewhere (their `backend` argument chooses).
from models.kernels import decode_flip_merged as decode_flip_merged
from models.kernels import decode_heatmaps as decode_heatmaps
from models.kernels import render_gaussian as render_gaussian
from models.kernels.checks import check_keypoints
from models.kernels.decode import flip_back as flip_back
from models.kernels.decode import flip_merge as flip_merge
from models.kernels.decode import heatmap_argmax as heatmap_argmax
from models.kernels.gaussian import target_weight as target_weight


def _check_stride(stride: float) -> float:
    if not (stride > 0 and stride < float("inf")):
        raise ValueError(f"stride must be a positive finite number, got {stride}")
    return float(stride)


def heatmap_to_input(coords: torch.Tensor, stride: float) -> torch.Tensor:
    """Heatmap -> crop-input coordinates: x_in = stride * x_hm + (stride - 1) / 2 (x and y alike)."""
    s = _check_stride(stride)
    return coords * s + (s - 1.0) / 2.0


def input_to_heatmap(coords: torch.Tensor, stride: float) -> torch.Tensor:
    """Crop-input -> heatmap coordinates: x_hm = (x_in - (stride - 1) / 2) / stride."""
    s = _check_stride(stride)
    return (coords - (s - 1.0) / 2.0) / s


def _as_affine(affine, points: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(affine).to(device=points.device, dtype=torch.float64)
    if a.dim() == 2:
        a = a.unsqueeze(0).expand(points.shape[0], 2, 3)
    if a.dim() != 3 or a.shape[1:] != (2, 3) or a.shape[0] != points.shape[0]:
        raise ValueError(f"affine must be [B, 2, 3] (or one [2, 3]) with B = {points.shape[0]}, "
                         f"got {tuple(a.shape)}")
    return a


def invert_affine(affine: torch.Tensor) -> torch.Tensor:
    """Inverse of a batch of 2x3 affines [B, 2, 3], in float64: y = M x + t  ->  x = M^-1 y - M^-1 t.

    Raises ValueError naming the batch entries whose linear part is singular or non-finite.
    """
    a = torch.as_tensor(affine).to(torch.float64)
    if a.dim() != 3 or a.shape[1:] != (2, 3):
        raise ValueError(f"affine must be [B, 2, 3], got {tuple(a.shape)}")
    m, t = a[:, :, :2], a[:, :, 2]
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    scale = m.flatten(1).abs().amax(dim=1)
    bad = ~torch.isfinite(a.flatten(1)).all(dim=1) | (det.abs() <= 1e-12 * scale**2)
    if bad.any():
        where = bad.nonzero().flatten().tolist()
        raise ValueError(f"affine is singular or non-finite at batch index {where}")
    inv_m = torch.stack([torch.stack([m[:, 1, 1], -m[:, 0, 1]], -1),
                         torch.stack([-m[:, 1, 0], m[:, 0, 0]], -1)], 1) / det[:, None, None]
    inv_t = -(inv_m @ t.unsqueeze(-1)).squeeze(-1)
    return torch.cat([inv_m, inv_t.unsqueeze(-1)], dim=2)


def transform_points(points: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Apply 2x3 affines [B, 2, 3] (or one [2, 3] for the whole batch) to points [B, N, 2]:
    p' = A[:, :2] p + A[:, 2]. Computed in float64, returned in the points' float dtype."""
    check_keypoints(points, "points")
    a = _as_affine(affine, points)
    out = points.to(torch.float64) @ a[:, :, :2].transpose(1, 2) + a[:, None, :, 2]
    return out.to(points.dtype if points.is_floating_point() else torch.float64)


def to_original(coords_input: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Crop-input coordinates [B, J, 2] -> original-image pixel coordinates, through the inverse of the
    crop's forward (original -> crop) affine [B, 2, 3]; the inversion is done in float64."""
    check_keypoints(coords_input, "coords_input")
    return transform_points(coords_input, invert_affine(_as_affine(affine, coords_input)))
