"""Affine maps between an original image and a square person crop (numpy float64).

Conventions (shared with records.py and models/heatmap.py):

- Coordinates are 0-based pixel-centre: (0, 0) is the centre of the top-left pixel, x to the right, y down.
  A W-pixel-wide image covers x in [-0.5, W - 0.5].
- A 2x3 matrix A maps a point p = (x, y) to A[:, :2] @ p + A[:, 2]. `crop_affine` returns the FORWARD map
  original -> crop, which is exactly what cv2.warpAffine expects without WARP_INVERSE_MAP (cv2 also samples
  at integer pixel centres), so one matrix serves both the image and the keypoints.
- The crop box is the square of side `scale * SCALE_UNIT_PX * CROP_ENLARGE` original pixels centred on the
  person centre (MPII's `scale` is the person's size in units of 200 px; the box is enlarged by 1.25 as
  in the common stacked-hourglass code). The box's centre goes to ((S-1)/2, (S-1)/2) and its sides to the
  crop's outer pixel edges -0.5 and S-0.5.
- rotation_deg > 0 turns the image content counter-clockwise on screen about the box centre (the
  convention of cv2.getRotationMatrix2D); a joint above the centre moves to the left.
- flip=True mirrors the crop after rotation: x -> S-1-x. Keypoint labels are NOT swapped here (that is the
  transform's job, via Skeleton.flip_index).
"""

from __future__ import annotations

import numpy as np

from data_pipelines.records import SCALE_UNIT_PX

# The crop box side is the person size (scale * 200 px) times this factor, as in the hourglass code.
CROP_ENLARGE = 1.25


def crop_box_side(scale: float) -> float:
    """Side, in original pixels, of the square box that `crop_affine` maps onto the crop."""
    return float(scale) * SCALE_UNIT_PX * CROP_ENLARGE


def crop_affine(center, scale: float, output_size: int, rotation_deg: float = 0.0,
                flip: bool = False) -> np.ndarray:
    """2x3 float64 forward matrix original -> crop of `output_size` x `output_size` pixels.

    p_crop = k * R(rotation_deg) @ (p - center) + (S-1)/2 with k = S / crop_box_side(scale) and
    R(t) = [[cos t, sin t], [-sin t, cos t]] (counter-clockwise on screen, y pointing down); with flip,
    x_crop -> S-1-x_crop afterwards.
    """
    center = np.asarray(center, dtype=np.float64)
    if center.shape != (2,) or not np.all(np.isfinite(center)):
        raise ValueError(f"crop_affine: center must be 2 finite numbers, got {center!r}")
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"crop_affine: scale must be positive, got {scale}")
    if int(output_size) != output_size or output_size <= 0:
        raise ValueError(f"crop_affine: output_size must be a positive integer, got {output_size}")
    size = int(output_size)
    k = size / crop_box_side(scale)
    t = np.deg2rad(rotation_deg)
    c, s = np.cos(t), np.sin(t)
    linear = k * np.array([[c, s], [-s, c]], dtype=np.float64)
    mid = (size - 1) / 2.0
    offset = np.array([mid, mid]) - linear @ center
    A = np.concatenate([linear, offset[:, None]], axis=1)
    if flip:
        mirror = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0]])
        A = compose_affine(mirror, A)
    return A


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of p -> outer(inner(p))."""
    outer = _check_affine(outer)
    inner = _check_affine(inner)
    return outer[:, :2] @ inner + np.concatenate([np.zeros((2, 2)), outer[:, 2:]], axis=1)


def apply_affine(points, A: np.ndarray) -> np.ndarray:
    """Map points [..., 2] (x, y) through the 2x3 matrix A; returns float64 of the same shape."""
    A = _check_affine(A)
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1:] != (2,):
        raise ValueError(f"apply_affine: points must have shape [..., 2], got {p.shape}")
    return p @ A[:, :2].T + A[:, 2]


def _check_affine(A) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    if A.shape != (2, 3):
        raise ValueError(f"affine matrix must be 2x3, got shape {A.shape}")
    return A
