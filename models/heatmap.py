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

import functools
from collections.abc import Sequence

import torch

_TRUNCATE_SIGMAS = 3.0  # a keypoint farther than this many sigmas outside the grid gets no target


def _check_keypoints(keypoints: torch.Tensor, name: str = "keypoints") -> None:
    if not isinstance(keypoints, torch.Tensor) or keypoints.dim() != 3 or keypoints.shape[-1] != 2:
        shape = tuple(keypoints.shape) if isinstance(keypoints, torch.Tensor) else type(keypoints).__name__
        raise ValueError(f"{name} must be a [B, J, 2] tensor of (x, y), got {shape}")


def _check_maps(heatmaps: torch.Tensor, name: str = "heatmaps") -> None:
    if not isinstance(heatmaps, torch.Tensor) or heatmaps.dim() != 4:
        shape = tuple(heatmaps.shape) if isinstance(heatmaps, torch.Tensor) else type(heatmaps).__name__
        raise ValueError(f"{name} must be a [B, J, h, w] tensor, got {shape}")
    if heatmaps.shape[-1] < 1 or heatmaps.shape[-2] < 1:
        raise ValueError(f"{name} has an empty grid: {tuple(heatmaps.shape)}")


def _check_size_sigma(size: Sequence[int], sigma: float) -> tuple[int, int]:
    if len(size) != 2 or any(int(v) != v or v < 1 for v in size):
        raise ValueError(f"heatmap size must be (h, w) with positive integers, got {tuple(size)}")
    if not (sigma > 0 and sigma < float("inf")):
        raise ValueError(f"sigma must be a positive finite number, got {sigma}")
    return int(size[0]), int(size[1])


def _float_dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


def target_weight(keypoints: torch.Tensor, visible: torch.Tensor, size: Sequence[int],
                  sigma: float = 1.0) -> torch.Tensor:
    """[B, J] weights: 1 where `render_gaussian` renders a map, else 0.

    A map is rendered when the joint is visible (`visible` bool, or > 0 - so occluded-but-annotated
    joints with visibility code 1 count) and its heatmap coordinates are finite and no farther than
    3 * sigma outside the grid, i.e. -3 sigma <= x <= w - 1 + 3 sigma and likewise for y with h.
    Dtype: the keypoints' float dtype (float32 for integer keypoints).
    """
    _check_keypoints(keypoints)
    h, w = _check_size_sigma(size, sigma)
    if not isinstance(visible, torch.Tensor) or visible.shape != keypoints.shape[:2]:
        shape = tuple(visible.shape) if isinstance(visible, torch.Tensor) else type(visible).__name__
        raise ValueError(f"visible must be a [B, J] = {tuple(keypoints.shape[:2])} tensor, got {shape}")
    vis = visible if visible.dtype == torch.bool else visible > 0
    x, y = keypoints[..., 0], keypoints[..., 1]
    r = _TRUNCATE_SIGMAS * sigma
    inside = (x >= -r) & (x <= w - 1 + r) & (y >= -r) & (y <= h - 1 + r)  # False for NaN
    return (vis.to(keypoints.device) & inside).to(_float_dtype(keypoints))


def render_gaussian(keypoints: torch.Tensor, visible: torch.Tensor, size: Sequence[int],
                    sigma: float = 1.0, backend: str = "auto") -> torch.Tensor:
    """Gaussian target maps [B, J, h, w]: exp(-d^2 / (2 sigma^2)), d the distance from each pixel
    centre to the (subpixel) keypoint given in heatmap coordinates [B, J, 2]. Peak value 1 when the
    keypoint sits on a pixel centre (unnormalised). All-zero maps where `target_weight` is 0.

    Computed in at least float32 (float64 stays float64), returned in the keypoints' float dtype.
    backend: 'torch'; 'triton' (the fused kernel of models/heatmap_triton.py: CUDA tensors, or CPU
    under TRITON_INTERPRET=1; float16/bfloat16/float32); 'auto' = triton for CUDA tensors of those
    dtypes when triton is importable, torch otherwise.
    """
    if backend == "triton" or (backend == "auto" and _triton_applies(keypoints)):
        from models.heatmap_triton import render_gaussian_triton

        return render_gaussian_triton(keypoints, visible, size, sigma)
    if backend not in ("auto", "torch"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    return _render_gaussian_torch(keypoints, visible, size, sigma)


TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what the triton kernel takes


@functools.cache
def triton_available() -> bool:
    """Whether triton imports (tried once, on the first CUDA render with backend='auto')."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _triton_applies(keypoints: torch.Tensor) -> bool:
    return (isinstance(keypoints, torch.Tensor) and keypoints.is_cuda and keypoints.dtype in TRITON_DTYPES
            and triton_available())


def _render_gaussian_torch(keypoints: torch.Tensor, visible: torch.Tensor, size: Sequence[int],
                           sigma: float) -> torch.Tensor:
    weight = target_weight(keypoints, visible, size, sigma)
    h, w = int(size[0]), int(size[1])
    out_dtype = _float_dtype(keypoints)
    cdt = torch.promote_types(out_dtype, torch.float32)
    kp = keypoints.to(cdt)
    xs = torch.arange(w, device=kp.device, dtype=cdt)
    ys = torch.arange(h, device=kp.device, dtype=cdt)
    two_var = 2.0 * float(sigma) ** 2
    # The 2-D Gaussian is separable: exp(-(dx^2 + dy^2) / 2s^2) = exp(-dx^2 / 2s^2) * exp(-dy^2 / 2s^2).
    gx = torch.exp(-((xs - kp[..., 0:1]) ** 2) / two_var)  # [B, J, w]
    gy = torch.exp(-((ys - kp[..., 1:2]) ** 2) / two_var)  # [B, J, h]
    maps = gy.unsqueeze(-1) * gx.unsqueeze(-2)
    # where (not multiply) so that NaN keypoints give clean zero maps.
    maps = torch.where((weight > 0)[..., None, None], maps, torch.zeros((), dtype=cdt, device=kp.device))
    return maps.to(out_dtype)


def heatmap_argmax(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer peak of each map: (peaks [B, J, 2] int64 (x, y), max values [B, J]).

    Ties go to the first maximum in row-major order (like numpy's argmax).
    """
    _check_maps(heatmaps)
    b, j, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, j, h * w)
    idx = torch.argmax(flat, dim=-1)  # documented to return the first maximal index
    maxval = flat.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    peaks = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], dim=-1)
    return peaks, maxval


def decode_heatmaps(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints from heatmaps: (coords [B, J, 2] in heatmap coordinates, confidence [B, J]).

    coords = integer argmax (first maximum on ties) plus the standard quarter-pixel shift toward the
    higher neighbour, separately in x and in y: +-0.25 by the sign of (next - previous) along that axis,
    only where both neighbours exist (no shift on the border rows/columns) and none for equal
    neighbours. confidence = the maximum value. coords dtype: the heatmaps' float dtype.
    """
    peaks, conf = heatmap_argmax(heatmaps)
    b, j, h, w = heatmaps.shape
    n = h * w
    flat = heatmaps.reshape(b, j, n)
    px, py = peaks[..., 0], peaks[..., 1]
    idx = py * w + px

    def neighbour_sign(step: int, valid: torch.Tensor) -> torch.Tensor:
        after = flat.gather(-1, (idx + step).clamp(0, n - 1).unsqueeze(-1)).squeeze(-1)
        before = flat.gather(-1, (idx - step).clamp(0, n - 1).unsqueeze(-1)).squeeze(-1)
        return torch.where(valid, torch.sign(after - before), torch.zeros_like(after))

    sx = neighbour_sign(1, (px > 0) & (px < w - 1))
    sy = neighbour_sign(w, (py > 0) & (py < h - 1))
    dtype = _float_dtype(heatmaps)
    coords = peaks.to(dtype) + 0.25 * torch.stack([sx, sy], dim=-1).to(dtype)
    return coords, conf


def _inverse_permutation(flip_index: Sequence[int] | torch.Tensor, num_joints: int,
                         device: torch.device) -> torch.Tensor:
    perm = torch.as_tensor(list(flip_index) if not isinstance(flip_index, torch.Tensor) else flip_index,
                           dtype=torch.long).flatten().cpu()
    if perm.numel() != num_joints or not torch.equal(torch.sort(perm).values, torch.arange(num_joints)):
        raise ValueError(f"flip_index must be a permutation of 0..{num_joints - 1}, got {perm.tolist()}")
    return torch.argsort(perm).to(device)


def flip_back(heatmaps_of_flipped_input: torch.Tensor,
              flip_index: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Heatmaps predicted on a horizontally mirrored input, brought back to the original frame.

    Mirrors along the width (column j -> w - 1 - j, no shift; see the module docstring) and reorders
    channels: channel j of the mirrored prediction is joint flip_index[j] of the original
    (`Skeleton.flip_index`), so output channel flip_index[j] = mirrored channel j.
    """
    _check_maps(heatmaps_of_flipped_input, "heatmaps_of_flipped_input")
    inv = _inverse_permutation(flip_index, heatmaps_of_flipped_input.shape[1],
                               heatmaps_of_flipped_input.device)
    return heatmaps_of_flipped_input.flip(-1).index_select(1, inv)


def flip_merge(heatmaps: torch.Tensor, heatmaps_of_flipped_input: torch.Tensor,
               flip_index: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Flip-test: the average of `heatmaps` and `flip_back(heatmaps_of_flipped_input, flip_index)`."""
    _check_maps(heatmaps)
    if heatmaps.shape != heatmaps_of_flipped_input.shape:
        raise ValueError(f"flip_merge: shapes differ, {tuple(heatmaps.shape)} vs "
                         f"{tuple(heatmaps_of_flipped_input.shape)}")
    return 0.5 * (heatmaps + flip_back(heatmaps_of_flipped_input, flip_index))


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
    _check_keypoints(points, "points")
    a = _as_affine(affine, points)
    out = points.to(torch.float64) @ a[:, :, :2].transpose(1, 2) + a[:, None, :, 2]
    return out.to(points.dtype if points.is_floating_point() else torch.float64)


def to_original(coords_input: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Crop-input coordinates [B, J, 2] -> original-image pixel coordinates, through the inverse of the
    crop's forward (original -> crop) affine [B, 2, 3]; the inversion is done in float64."""
    _check_keypoints(coords_input, "coords_input")
    return transform_points(coords_input, invert_affine(_as_affine(affine, coords_input)))
