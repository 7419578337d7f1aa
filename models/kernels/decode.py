"""Heatmap decoding: argmax + quarter-pixel shift + confidence, optionally fused with the flip-test merge.
Torch references (`heatmap_argmax`, `decode_heatmaps_torch`, `flip_back`, `flip_merge`) and one Triton
kernel for both (`decode_triton`).

Conventions (models/heatmap.py): maps [B, J, h, w]; the peak is the first maximum in row-major order, a
NaN counting as the maximum (torch.argmax); coords (x, y) = peak + 0.25 * sign(next - previous) along
each axis, only where both neighbours exist; confidence = the (merged) map value at the peak. The flip
merge averages a map with the mirrored prediction of the mirrored input: merged = 0.5 * (a + f) with f
channel flip_index^-1[j], column w - 1 - x, the sum rounded to the maps' dtype as torch does, so the kernel
finds exactly the torch peaks.

Dtypes: the kernel reads float16/bfloat16/float32 maps of any strides and compares in float32 (exact for
these dtypes); coords and confidence come back in the maps' dtype, as from the torch reference.

Bytes: one read of the maps (two with the flip merge) and B*J*3 values written. The torch path also
writes and re-reads the mirrored, re-ordered and averaged [B, J, h, w] tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.kernels.checks import check_maps, check_same_shape, float_dtype
from models.kernels.runtime import check_launch, device_of, jit, tl, triton

_TILE = 4096  # pixels per loop step of a program (one program per map)


def heatmap_argmax(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer peak of each map: (peaks [B, J, 2] int64 (x, y), max values [B, J]).

    Ties go to the first maximum in row-major order (like numpy's argmax).
    """
    check_maps(heatmaps)
    b, j, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, j, h * w)
    idx = torch.argmax(flat, dim=-1)  # documented to return the first maximal index
    maxval = flat.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    peaks = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], dim=-1)
    return peaks, maxval


def decode_heatmaps_torch(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch reference of `models.heatmap.decode_heatmaps`: (coords [B, J, 2], confidence [B, J]);
    coords dtype: the heatmaps' float dtype."""
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
    dtype = float_dtype(heatmaps)
    coords = peaks.to(dtype) + 0.25 * torch.stack([sx, sy], dim=-1).to(dtype)
    return coords, conf


def inverse_permutation(flip_index: Sequence[int] | torch.Tensor, num_joints: int,
                        device: torch.device) -> torch.Tensor:
    """argsort(flip_index) as an int64 tensor on `device`, after checking that flip_index is a permutation
    of 0..J-1. Plain Python on a list (no data-dependent tensor op for torch.compile to break on)."""
    perm = [int(i) for i in (flip_index.flatten().tolist() if isinstance(flip_index, torch.Tensor) else flip_index)]
    if sorted(perm) != list(range(num_joints)):
        raise ValueError(f"flip_index must be a permutation of 0..{num_joints - 1}, got {perm}")
    inverse = [0] * num_joints
    for j, p in enumerate(perm):
        inverse[p] = j
    return torch.tensor(inverse, dtype=torch.long, device=device)


def flip_back(heatmaps_of_flipped_input: torch.Tensor,
              flip_index: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Heatmaps predicted on a horizontally mirrored input, brought back to the original frame.

    Mirrors along the width (column j -> w - 1 - j, no shift; see models/heatmap.py) and reorders
    channels: channel j of the mirrored prediction is joint flip_index[j] of the original
    (`Skeleton.flip_index`), so output channel flip_index[j] = mirrored channel j.
    """
    check_maps(heatmaps_of_flipped_input, "heatmaps_of_flipped_input")
    inv = inverse_permutation(flip_index, heatmaps_of_flipped_input.shape[1], heatmaps_of_flipped_input.device)
    return heatmaps_of_flipped_input.flip(-1).index_select(1, inv)


def flip_merge(heatmaps: torch.Tensor, heatmaps_of_flipped_input: torch.Tensor,
               flip_index: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Flip-test: the average of `heatmaps` and `flip_back(heatmaps_of_flipped_input, flip_index)`."""
    check_maps(heatmaps)
    check_same_shape("heatmaps", heatmaps, "heatmaps_of_flipped_input", heatmaps_of_flipped_input)
    return 0.5 * (heatmaps + flip_back(heatmaps_of_flipped_input, flip_index))


def decode_flip_merged_torch(heatmaps: torch.Tensor, flipped: torch.Tensor,
                             flip_index: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch reference of the fused flip-test decode: decode_heatmaps_torch(flip_merge(...))."""
    return decode_heatmaps_torch(flip_merge(heatmaps, flipped, flip_index))


@jit
def _round_to(v, dtype: tl.constexpr):
    """float32 v rounded to `dtype` (round to nearest even, as torch) and back to float32. bfloat16 by bit
    arithmetic, because Triton's interpreter truncates a float32 -> bfloat16 cast."""
    if dtype == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return tl.where(v != v, v, bits.to(tl.float32, bitcast=True))
    return v.to(dtype).to(tl.float32)


@jit
def _load_map(a_ptr, f_ptr, i, mask, sy, sx, fsy, fsx, W: tl.constexpr, MERGE: tl.constexpr):
    """float32 values of pixels i (row-major flat index) of a map, -inf where masked off; with MERGE the
    flip-merged value 0.5 * (a + mirrored f), the sum rounded to the maps' dtype like torch's."""
    y = i // W
    x = i % W
    v = tl.load(a_ptr + y * sy + x * sx, mask=mask, other=float("-inf")).to(tl.float32)
    if MERGE:
        f = tl.load(f_ptr + y * fsy + (W - 1 - x) * fsx, mask=mask, other=float("-inf")).to(tl.float32)
        v = _round_to(v + f, a_ptr.dtype.element_ty) * 0.5
    return v


@jit
def map_peak(a_ptr, f_ptr, n, sy, sx, fsy, fsx, W: tl.constexpr, MERGE: tl.constexpr, BLOCK: tl.constexpr):
    """(flat index, value) of the first maximum of a map, the first NaN if there is one (torch.argmax).

    Per lane: the first best value over the tiles (strictly greater replaces); then the smallest index
    among the lanes holding the maximum. Lanes start at (-inf, 0): an all -inf map gives index 0."""
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    best_i = tl.zeros([BLOCK], tl.int32)
    nan_i = tl.zeros([BLOCK], tl.int32) + n
    for start in range(0, n, BLOCK):
        i = start + tl.arange(0, BLOCK)
        v = _load_map(a_ptr, f_ptr, i, i < n, sy, sx, fsy, fsx, W, MERGE)
        nan_i = tl.minimum(nan_i, tl.where(v != v, i, n))
        better = v > best
        best = tl.where(better, v, best)
        best_i = tl.where(better, i, best_i)
    top = tl.max(best, axis=0)
    idx = tl.min(tl.where(best == top, best_i, n), axis=0)
    first_nan = tl.min(nan_i, axis=0)
    has_nan = first_nan < n
    return tl.where(has_nan, first_nan, idx), tl.where(has_nan, float("nan"), top)


@jit
def _shift(a_ptr, f_ptr, idx, step, valid, n, sy, sx, fsy, fsx, W: tl.constexpr, MERGE: tl.constexpr):
    """0.25 * sign(value[idx + step] - value[idx - step]) where valid, else 0 (NaN stays NaN, as torch.sign)."""
    after = _load_map(a_ptr, f_ptr, tl.minimum(idx + step, n - 1), True, sy, sx, fsy, fsx, W, MERGE)
    before = _load_map(a_ptr, f_ptr, tl.maximum(idx - step, 0), True, sy, sx, fsy, fsx, W, MERGE)
    d = after - before
    s = (d > 0).to(tl.float32) - (d < 0).to(tl.float32)
    s = tl.where(d != d, d, s)
    return tl.where(valid, 0.25 * s, 0.0)


@jit
def _decode_kernel(hm_ptr, fl_ptr, inv_ptr, coords_ptr, conf_ptr, J, n, h, sb, sj, sy, sx, fsb, fsj, fsy, fsx,
                   W: tl.constexpr, MERGE: tl.constexpr, BLOCK: tl.constexpr):
    m = tl.program_id(0)  # map index b * J + j
    b = (m // J).to(tl.int64)
    j = m % J
    a_ptr = hm_ptr + b * sb + j * sj
    f_ptr = a_ptr
    if MERGE:
        f_ptr = fl_ptr + b * fsb + tl.load(inv_ptr + j) * fsj
    idx, conf = map_peak(a_ptr, f_ptr, n, sy, sx, fsy, fsx, W, MERGE, BLOCK)
    px = idx % W
    py = idx // W
    dx = _shift(a_ptr, f_ptr, idx, 1, (px > 0) & (px < W - 1), n, sy, sx, fsy, fsx, W, MERGE)
    dy = _shift(a_ptr, f_ptr, idx, W, (py > 0) & (py < h - 1), n, sy, sx, fsy, fsx, W, MERGE)
    out_ty = coords_ptr.dtype.element_ty
    tl.store(coords_ptr + 2 * m, (px.to(tl.float32) + dx).to(out_ty))
    tl.store(coords_ptr + 2 * m + 1, (py.to(tl.float32) + dy).to(out_ty))
    tl.store(conf_ptr + m, conf.to(out_ty))


def decode_triton(heatmaps: torch.Tensor, flipped: torch.Tensor | None = None,
                  flip_index: Sequence[int] | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton kernel: decode_heatmaps_torch(heatmaps), or with `flipped` and `flip_index`
    decode_flip_merged_torch(heatmaps, flipped, flip_index), in one pass over the maps."""
    check_maps(heatmaps)
    b, j, h, w = heatmaps.shape
    merge = flipped is not None
    if merge:
        check_same_shape("heatmaps", heatmaps, "flipped", flipped)
        if flipped.dtype != heatmaps.dtype:
            raise ValueError(f"decode: flipped is {flipped.dtype}, heatmaps {heatmaps.dtype}; the kernel "
                             "merges maps of one dtype (use backend='torch')")
        inv = inverse_permutation(flip_index, j, heatmaps.device).to(torch.int32)
    check_launch("decode_heatmaps", heatmaps, *([flipped] if merge else []))
    coords = torch.empty(b, j, 2, dtype=heatmaps.dtype, device=heatmaps.device)
    conf = torch.empty(b, j, dtype=heatmaps.dtype, device=heatmaps.device)
    if b * j == 0:
        return coords, conf
    n = h * w
    other = flipped if merge else heatmaps
    with device_of(heatmaps):
        _decode_kernel[(b * j,)](heatmaps, other, inv if merge else coords, coords, conf, j, n, h,
                                 *heatmaps.stride(), *other.stride(),
                                 W=w, MERGE=merge, BLOCK=min(triton.next_power_of_2(n), _TILE))
    return coords, conf
