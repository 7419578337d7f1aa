"""The Gaussian-target kernel (models/kernels/gaussian.py) against its torch reference and a float64
reference (the loop reference of the torch renderer is in tests/test_heatmap.py)."""

from __future__ import annotations

import pytest
import torch

from models.kernels.gaussian import render_gaussian_torch, render_gaussian_triton, target_weight

# (B, J), (h, w), sigma: square, odd and degenerate grids, non-power-of-two widths and tiles
CASES = [((2, 5), (16, 16), 1.0), ((3, 4), (17, 13), 2.0), ((1, 4), (1, 1), 1.0), ((1, 5), (7, 5), 1.5),
         ((2, 2), (5, 70), 0.7)]
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def keypoints(B, J, h, w, sigma, g):
    """Random keypoints (some outside the crop) and visibility codes, then in flat order: NaN, on a border
    pixel centre, far outside (no map), exactly on the 3-sigma bounds (a map)."""
    kp = torch.rand(B, J, 2, generator=g) * torch.tensor([w + 12.0, h + 12.0]) - 6.0
    vis = torch.randint(0, 3, (B, J), generator=g)
    special = torch.tensor([[float("nan"), 0.0], [w - 1.0, 0.0], [w + 40.0, -40.0], [w - 1 + 3 * sigma, -3 * sigma]])
    kp.view(-1, 2)[:4] = special
    vis.view(-1)[:4] = 2
    return kp, vis


@pytest.mark.parametrize("dtype", list(TOL))
def test_kernel_matches_torch_and_float64(triton_device, dtype):
    g = torch.Generator().manual_seed(0)
    for (B, J), size, sigma in CASES:
        kp, vis = keypoints(B, J, *size, sigma, g)
        kp = kp.to(dtype)
        ref = render_gaussian_torch(kp, vis, size, sigma)
        ref64 = render_gaussian_torch(kp.double(), vis, size, sigma)
        got = render_gaussian_triton(kp.to(triton_device), vis.to(triton_device), size, sigma).cpu()
        assert got.dtype == dtype and got.shape == ref.shape
        assert (got.float() - ref.float()).abs().max() <= TOL[dtype], (size, sigma)
        assert (got.double() - ref64).abs().max() <= TOL[dtype], (size, sigma)
        off = target_weight(kp, vis, size, sigma) == 0  # NaN, invisible, or far outside: all-zero maps
        assert off.view(-1)[:4].tolist() == [True, False, True, False] and not torch.isnan(got).any()
        torch.testing.assert_close((got == 0).all(-1).all(-1), off, rtol=0, atol=0)  # bounds as in torch
        if size != (1, 1):
            assert got.view(-1, *size)[1].float().max() > 0.99  # the border keypoint peaks on its pixel


def test_integer_keypoints_empty_batch_and_float64(triton_device):
    ik = torch.tensor([[[3, 4], [0, 9]]])
    got = render_gaussian_triton(ik.to(triton_device), torch.ones(1, 2, device=triton_device), (8, 10))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), render_gaussian_torch(ik, torch.ones(1, 2), (8, 10)), rtol=0, atol=1e-6)
    empty = render_gaussian_triton(torch.zeros(0, 4, 2, device=triton_device), torch.zeros(0, 4), (8, 8))
    assert empty.shape == (0, 4, 8, 8)
    with pytest.raises(ValueError, match="backend='torch'"):
        render_gaussian_triton(torch.zeros(1, 1, 2, dtype=torch.float64, device=triton_device),
                               torch.ones(1, 1), (8, 8))
