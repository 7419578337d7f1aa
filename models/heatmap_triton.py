"""Fused Triton kernel that renders the Gaussian heatmap targets of `models.heatmap.render_gaussian`.

Same maps, same conventions (heatmap pixel-centre coordinates, unnormalised exp(-d^2 / 2 sigma^2),
zero maps where `target_weight` is 0): one program per (map, tile of BLOCK pixels) computes the
separable Gaussian for its pixels and writes them once, instead of the torch version's temporaries.

Importing this module imports triton. Kernels run on CUDA tensors, or on CPU tensors when the
environment variable TRITON_INTERPRET=1 was set before this module was imported (the interpreter;
slow, for tests). Use `models.heatmap.render_gaussian(..., backend=...)` rather than calling this
directly. Compute is float32 (float16/bfloat16/float32 keypoints; output in the keypoints' dtype);
float64 stays on the torch backend. The output takes no gradient (targets need none).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from models.heatmap import TRITON_DTYPES, target_weight

_MAX_BLOCK = 1024


@triton.jit
def _gaussian_kernel(kp_ptr, weight_ptr, out_ptr, h, w, two_var, BLOCK: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)  # map index b * J + j
    tile = tl.program_id(1)
    x = tl.load(kp_ptr + 2 * m)
    y = tl.load(kp_ptr + 2 * m + 1)
    keep = tl.load(weight_ptr + m) > 0
    offs = tile * BLOCK + tl.arange(0, BLOCK)
    n = h * w
    inside = offs < n
    row = offs // w
    col = offs - row * w
    dx = col.to(tl.float32) - x
    dy = row.to(tl.float32) - y
    # separable, in the same order as the torch version: exp(-dx^2 / 2s^2) * exp(-dy^2 / 2s^2)
    val = tl.exp(-(dx * dx) / two_var) * tl.exp(-(dy * dy) / two_var)
    val = tl.where(keep, val, 0.0)  # where, not multiply: NaN keypoints give zero maps
    tl.store(out_ptr + m * n + offs, val.to(out_ptr.dtype.element_ty), mask=inside)


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def render_gaussian_triton(keypoints: torch.Tensor, visible: torch.Tensor, size: Sequence[int],
                           sigma: float = 1.0) -> torch.Tensor:
    """`models.heatmap.render_gaussian` computed by the Triton kernel ([B, J, 2] -> [B, J, h, w])."""
    weight = target_weight(keypoints, visible, size, sigma)  # validates shapes, size and sigma
    dtype = keypoints.dtype if keypoints.is_floating_point() else torch.float32
    if dtype not in TRITON_DTYPES:
        raise ValueError(f"the triton heatmap kernel computes in float32 and takes {TRITON_DTYPES}; "
                         f"got {dtype} keypoints (use backend='torch')")
    if not keypoints.is_cuda and not interpreter_enabled():
        raise ValueError(f"the triton heatmap kernel needs CUDA tensors (got {keypoints.device}), or "
                         "TRITON_INTERPRET=1 set before models.heatmap_triton is imported")
    h, w = int(size[0]), int(size[1])
    b, j = keypoints.shape[:2]
    out = torch.empty(b, j, h, w, dtype=dtype, device=keypoints.device)
    if out.numel() == 0:
        return out
    kp = keypoints.detach().to(torch.float32).contiguous()
    wt = weight.to(torch.float32).contiguous()
    n = h * w
    block = min(_MAX_BLOCK, triton.next_power_of_2(n))
    grid = (b * j, triton.cdiv(n, block))
    two_var = 2.0 * float(sigma) ** 2
    if keypoints.is_cuda:
        with torch.cuda.device(keypoints.device):
            _gaussian_kernel[grid](kp, wt, out, h, w, two_var, BLOCK=block)
    else:
        _gaussian_kernel[grid](kp, wt, out, h, w, two_var, BLOCK=block)
    return out
