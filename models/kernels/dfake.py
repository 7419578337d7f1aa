"""cGAN d_fake labels: the torch reference and a fused Triton kernel.

    d_j = |argmax(prediction_j) - argmax(target_j)| / norm,    d_fake_j = 1 if d_j < delta else 0

Peaks are integer (x, y) heatmap pixels, the first maximum on ties (a NaN counts as the maximum, as in
torch.argmax); the distance is Euclidean. norm is the heatmap side max(h, w) ('heatmap'), or the
ground-truth torso length, the distance between the target peaks of the joint pair `torso` ('torso'),
falling back to the side where that length is 0 or either torso map has no positive value.

Dtypes: float16/bfloat16/float32 maps for the kernel (float64 goes to the reference); the distance, its
ratio (correctly rounded sqrt and division) and the comparison with delta are float32, as in the reference
for these dtypes, so the labels are equal, not close. Labels come back in the prediction's dtype and take
no gradient.

Bytes: one read of both [B, J, h, w] tensors (plus two target maps per sample for 'torso') and B*J labels
written. The kernel runs one program per map (a small first pass computes the torso norms); the torch
reference also writes and re-reads argmax indices, peaks and distances.
"""

from __future__ import annotations

import math

import torch

from models.kernels.checks import check_maps, check_same_shape
from models.kernels.decode import heatmap_argmax, map_peak
from models.kernels.runtime import check_launch, device_of, jit, tl, triton

_TILE = 4096  # pixels per loop step of a program (one program per map)


def check_d_fake_args(prediction: torch.Tensor, target: torch.Tensor, delta: float, normalize: str,
                      torso: tuple[int, int] | None) -> None:
    check_maps(target, "target")
    check_same_shape("target", target, "prediction", prediction)
    if not (math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be a positive finite number, got {delta}")
    if normalize not in ("heatmap", "torso"):
        raise ValueError(f"normalize must be 'heatmap' or 'torso', got {normalize!r}")
    j = target.shape[1]
    if normalize == "torso" and (torso is None or len(torso) != 2 or not all(0 <= int(t) < j for t in torso)):
        raise ValueError(f"normalize='torso' needs a pair of joint indices in [0, {j}), got {torso}")


def d_fake_targets_torch(prediction: torch.Tensor, target: torch.Tensor, delta: float, normalize: str = "heatmap",
                         torso: tuple[int, int] | None = None) -> torch.Tensor:
    """The torch reference: labels [B, J] (module docstring)."""
    check_d_fake_args(prediction, target, delta, normalize, torso)
    b, j, h, w = target.shape
    side = float(max(h, w))
    with torch.no_grad():
        pred_peak, _ = heatmap_argmax(prediction.detach())
        gt_peak, gt_max = heatmap_argmax(target.detach())
        dtype = prediction.dtype if prediction.is_floating_point() else torch.float32
        cdt = torch.promote_types(dtype, torch.float32)
        dist = (pred_peak - gt_peak).to(cdt).norm(dim=-1)  # [B, J]
        if normalize == "heatmap":
            norm = torch.full((b, 1), side, dtype=cdt, device=dist.device)
        else:
            a, c = int(torso[0]), int(torso[1])
            length = (gt_peak[:, a] - gt_peak[:, c]).to(cdt).norm(dim=-1)
            valid = (length > 0) & (gt_max[:, a] > 0) & (gt_max[:, c] > 0)
            norm = torch.where(valid, length, torch.full_like(length, side)).unsqueeze(1)
        return (dist / norm < delta).to(dtype)


@jit
def _distance(i, k, W: tl.constexpr):
    """Euclidean distance between flat pixel indices i and k of a row-major map of width W, float32."""
    dx = (i % W - k % W).to(tl.float32)
    dy = (i // W - k // W).to(tl.float32)
    return tl.sqrt_rn(dx * dx + dy * dy)


@jit
def _torso_kernel(gt_ptr, norm_ptr, a, c, n, side, sb, sj, sy, sx, W: tl.constexpr, BLOCK: tl.constexpr):
    base = gt_ptr + tl.program_id(0).to(tl.int64) * sb
    ia, va = map_peak(base + a * sj, base, n, sy, sx, sy, sx, W, False, BLOCK)
    ic, vc = map_peak(base + c * sj, base, n, sy, sx, sy, sx, W, False, BLOCK)
    length = _distance(ia, ic, W)
    valid = (length > 0) & (va > 0) & (vc > 0)
    tl.store(norm_ptr + tl.program_id(0), tl.where(valid, length, side))


@jit
def _dfake_kernel(pred_ptr, gt_ptr, norm_ptr, out_ptr, J, n, side, delta,
                  psb, psj, psy, psx, gsb, gsj, gsy, gsx,
                  W: tl.constexpr, TORSO: tl.constexpr, BLOCK: tl.constexpr):
    m = tl.program_id(0)  # map index b * J + j
    b = (m // J).to(tl.int64)
    j = m % J
    p = pred_ptr + b * psb + j * psj
    g = gt_ptr + b * gsb + j * gsj
    ip, _ = map_peak(p, p, n, psy, psx, psy, psx, W, False, BLOCK)
    ig, _ = map_peak(g, g, n, gsy, gsx, gsy, gsx, W, False, BLOCK)
    norm = side
    if TORSO:
        norm = tl.load(norm_ptr + b)
    label = tl.where(tl.div_rn(_distance(ip, ig, W), norm) < delta, 1.0, 0.0)
    tl.store(out_ptr + m, label.to(out_ptr.dtype.element_ty))


def d_fake_targets_triton(prediction: torch.Tensor, target: torch.Tensor, delta: float,
                          normalize: str = "heatmap", torso: tuple[int, int] | None = None) -> torch.Tensor:
    """The Triton kernel: d_fake_targets_torch's labels (module docstring)."""
    check_d_fake_args(prediction, target, delta, normalize, torso)
    check_launch("d_fake_targets", prediction, target)
    prediction, target = prediction.detach(), target.detach()
    b, j, h, w = target.shape
    out = torch.empty(b, j, dtype=prediction.dtype, device=prediction.device)
    if out.numel() == 0:
        return out
    n, side = h * w, float(max(h, w))
    block = min(triton.next_power_of_2(n), _TILE)
    use_torso = normalize == "torso"
    norm = torch.empty(b, dtype=torch.float32, device=target.device)  # read only for 'torso'
    with device_of(target):
        if use_torso:
            _torso_kernel[(b,)](target, norm, int(torso[0]), int(torso[1]), n, side, *target.stride(),
                                W=w, BLOCK=block)
        _dfake_kernel[(b * j,)](prediction, target, norm, out, j, n, side, float(delta),
                                *prediction.stride(), *target.stride(), W=w, TORSO=use_torso, BLOCK=block)
    return out
