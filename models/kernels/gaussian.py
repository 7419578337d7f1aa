"""Gaussian heatmap targets: which joints get a map (`target_weight`), the torch reference renderer, and
the fused Triton kernel.

Convention (models/heatmap.py): keypoints [B, J, 2] are (x, y) in heatmap pixel-centre coordinates; map
pixel (row i, column j) holds exp(-((j - x)^2 + (i - y)^2) / (2 sigma^2)), unnormalised (peak 1 on a pixel
centre), and the whole map is zero where `target_weight` is 0 (not visible, NaN, or more than 3 sigma
outside the grid).

Dtypes: the torch reference computes in at least float32 (float64 stays float64); the kernel reads
float16/bfloat16/float32 keypoints and computes in float32. Both return the keypoints' float dtype
(float32 for integer keypoints). Targets take no gradient.

Bytes: the output is write-only, B*J*h*w*itemsize, plus B*J keypoints and visibilities read. The kernel
is one launch (target_weight is evaluated in it), tiles each map by whole rows and uses separability: one
exp per row and per column of a tile and one multiply per pixel, written once (the torch version runs a
dozen small ops for the weights and also builds the [B, J, h, w] product and a where).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.kernels.checks import check_keypoints, check_size_sigma, float_dtype
from models.kernels.runtime import check_launch, device_of, jit, tl, triton

TRUNCATE_SIGMAS = 3.0  # a keypoint farther than this many sigmas outside the grid gets no target
_TILE = 2048  # pixels per program


def target_weight(keypoints: torch.Tensor, visible: torch.Tensor, size: Sequence[int],
                  sigma: float = 1.0) -> torch.Tensor:
    """[B, J] weights: 1 where `render_gaussian` renders a map, else 0.

    A map is rendered when the joint is visible (`visible` bool, or > 0 - so occluded-but-annotated
    joints with visibility code 1 count) and its heatmap coordinates are finite and no farther than
    3 * sigma outside the grid, i.e. -3 sigma <= x <= w - 1 + 3 sigma and likewise for y with h.
    Dtype: the keypoints' float dtype (float32 for integer keypoints).
    """
    h, w = _check_inputs(keypoints, visible, size, sigma)
    vis = visible if visible.dtype == torch.bool else visible > 0
    x, y = keypoints[..., 0], keypoints[..., 1]
    r = TRUNCATE_SIGMAS * sigma
    inside = (x >= -r) & (x <= w - 1 + r) & (y >= -r) & (y <= h - 1 + r)  # False for NaN
    return (vis.to(keypoints.device) & inside).to(float_dtype(keypoints))


def _check_inputs(keypoints: torch.Tensor, visible: torch.Tensor, size: Sequence[int], sigma: float
                  ) -> tuple[int, int]:
    check_keypoints(keypoints)
    h, w = check_size_sigma(size, sigma)
    if not isinstance(visible, torch.Tensor) or visible.shape != keypoints.shape[:2]:
        shape = tuple(visible.shape) if isinstance(visible, torch.Tensor) else type(visible).__name__
        raise ValueError(f"visible must be a [B, J] = {tuple(keypoints.shape[:2])} tensor, got {shape}")
    return h, w


def render_gaussian_torch(keypoints: torch.Tensor, visible: torch.Tensor, size: Sequence[int],
                          sigma: float = 1.0) -> torch.Tensor:
    """The torch reference: Gaussian target maps [B, J, h, w] (module docstring)."""
    weight = target_weight(keypoints, visible, size, sigma)
    h, w = int(size[0]), int(size[1])
    out_dtype = float_dtype(keypoints)
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


@jit
def _gaussian_kernel(kp_ptr, vis_ptr, out_ptr, h, w, two_var, lo, hi_x, hi_y,
                     BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)  # map index b * J + j
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    x = tl.load(kp_ptr + 2 * m).to(tl.float32)
    y = tl.load(kp_ptr + 2 * m + 1).to(tl.float32)
    # target_weight in the kernel (bounds rounded to the keypoints' dtype by the launcher); False for NaN
    keep = (tl.load(vis_ptr + m) > 0) & (x >= lo) & (x <= hi_x) & (y >= lo) & (y <= hi_y)
    dx = cols.to(tl.float32) - x
    dy = rows.to(tl.float32) - y
    gx = tl.exp(-(dx * dx) / two_var)  # the torch reference's operations, in its order
    gy = tl.exp(-(dy * dy) / two_var)
    val = gy[:, None] * gx[None, :]
    val = tl.where(keep, val, 0.0)  # where, not multiply: NaN keypoints give zero maps
    mask = (rows[:, None] < h) & (cols[None, :] < w)
    offs = m * h * w + rows[:, None] * w + cols[None, :]
    tl.store(out_ptr + offs, val.to(out_ptr.dtype.element_ty), mask=mask)


def render_gaussian_triton(keypoints: torch.Tensor, visible: torch.Tensor, size: Sequence[int],
                           sigma: float = 1.0) -> torch.Tensor:
    """The Triton kernel: the maps of `render_gaussian_torch`, float32 compute (module docstring). One
    launch: `target_weight` is evaluated in the kernel, against the same bounds rounded to the keypoints'
    dtype as torch rounds them."""
    h, w = _check_inputs(keypoints, visible, size, sigma)
    kp = (keypoints if keypoints.is_floating_point() else keypoints.float()).detach().contiguous()
    check_launch("render_gaussian", kp)
    vis = visible.to(kp.device)
    vis = (vis.view(torch.uint8) if vis.dtype == torch.bool else vis).contiguous()
    b, j = kp.shape[:2]
    out = torch.empty(b, j, h, w, dtype=kp.dtype, device=kp.device)
    if out.numel() == 0:
        return out
    r = TRUNCATE_SIGMAS * sigma
    lo, hi_x, hi_y = (torch.tensor(v, dtype=kp.dtype).item() for v in (-r, w - 1 + r, h - 1 + r))
    block_w = triton.next_power_of_2(w)
    block_h = max(1, min(triton.next_power_of_2(h), _TILE // block_w))
    grid = (b * j, triton.cdiv(h, block_h))
    with device_of(out):
        _gaussian_kernel[grid](kp, vis, out, h, w, 2.0 * float(sigma) ** 2, lo, hi_x, hi_y,
                               BLOCK_H=block_h, BLOCK_W=block_w)
    return out
