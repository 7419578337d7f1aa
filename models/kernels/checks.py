"""Input checks shared by the heatmap ops: one clear ValueError naming the argument and what it got."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _shape(t) -> object:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def check_keypoints(keypoints: torch.Tensor, name: str = "keypoints") -> None:
    if not isinstance(keypoints, torch.Tensor) or keypoints.dim() != 3 or keypoints.shape[-1] != 2:
        raise ValueError(f"{name} must be a [B, J, 2] tensor of (x, y), got {_shape(keypoints)}")


def check_maps(heatmaps: torch.Tensor, name: str = "heatmaps") -> None:
    if not isinstance(heatmaps, torch.Tensor) or heatmaps.dim() != 4:
        raise ValueError(f"{name} must be a [B, J, h, w] tensor, got {_shape(heatmaps)}")
    if heatmaps.shape[-1] < 1 or heatmaps.shape[-2] < 1:
        raise ValueError(f"{name} has an empty grid: {tuple(heatmaps.shape)}")


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if not isinstance(b, torch.Tensor) or b.shape != a.shape:
        raise ValueError(f"{name_b} must have the shape of {name_a} {tuple(a.shape)}, got {_shape(b)}")


def check_size_sigma(size: Sequence[int], sigma: float) -> tuple[int, int]:
    if len(size) != 2 or any(int(v) != v or v < 1 for v in size):
        raise ValueError(f"heatmap size must be (h, w) with positive integers, got {tuple(size)}")
    if not (sigma > 0 and sigma < float("inf")):
        raise ValueError(f"sigma must be a positive finite number, got {sigma}")
    return int(size[0]), int(size[1])


def float_dtype(t: torch.Tensor) -> torch.dtype:
    """t's dtype if floating point, else float32 (integer keypoints, bool weights)."""
    return t.dtype if t.is_floating_point() else torch.float32
