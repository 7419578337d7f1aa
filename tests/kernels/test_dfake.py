"""The d_fake kernel (models/kernels/dfake.py): labels equal to the torch reference (itself checked
against a loop in tests/test_losses.py) and to the float64 reference, for both normalisations."""

from __future__ import annotations

import pytest
import torch

from models.kernels.dfake import d_fake_targets_torch, d_fake_targets_triton

SHAPES = [(3, 3, 6, 6), (2, 3, 7, 5), (1, 3, 1, 1), (1, 2, 70, 90)]  # incl. odd, 1x1, more than one tile
SETTINGS = [("heatmap", 0.003), ("heatmap", 0.2), ("torso", 0.5), ("torso", 1.2)]


def pair(shape, g, quantised):
    """(prediction, target): peaks sometimes agree, sometimes not; ties when quantised; unannotated and
    coincident torso joints; a NaN prediction map."""
    gt = torch.rand(shape, generator=g)
    pred = gt + 0.6 * torch.rand(shape, generator=g)
    if quantised:
        gt, pred = (gt * 3).round(), (pred * 3).round()
    if shape[0] > 1:
        gt[1, 0] = 0  # unannotated torso joint -> the heatmap side
    if shape[0] > 2:
        gt[2, :2] = 0
        gt[2, :2, 0, 0] = 1  # coincident torso joints -> zero length -> the heatmap side
    pred[0, -1].view(-1)[1 % pred[0, -1].numel()] = float("nan")
    return pred, gt


@pytest.mark.parametrize(("shape", "dtype"), [(s, torch.float32) for s in SHAPES] + [
    (SHAPES[1], torch.float16), (SHAPES[1], torch.bfloat16)])
def test_labels_equal_torch_and_float64(triton_device, shape, dtype):
    g = torch.Generator().manual_seed(3)
    ones = 0
    for quantised in (False, True):
        pred, gt = (t.to(dtype) for t in pair(shape, g, quantised))
        for normalize, delta in SETTINGS:
            got = d_fake_targets_triton(pred.to(triton_device), gt.to(triton_device), delta, normalize, (0, 1))
            assert got.dtype == dtype and got.shape == shape[:2] and not got.requires_grad
            want = d_fake_targets_torch(pred, gt, delta, normalize, (0, 1))
            torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)
            want64 = d_fake_targets_torch(pred.double(), gt.double(), delta, normalize, (0, 1))
            torch.testing.assert_close(got.cpu().double(), want64, rtol=0, atol=0)
            ones += int(want.sum())
    if shape[2] > 1:
        assert 0 < ones < 2 * len(SETTINGS) * shape[0] * shape[1]  # the cases are not degenerate


def test_bad_arguments_are_named(triton_device):
    maps = torch.zeros(1, 3, 4, 4, device=triton_device)
    with pytest.raises(ValueError, match="torso"):
        d_fake_targets_triton(maps, maps, 0.1, "torso")
    with pytest.raises(ValueError, match="normalize"):
        d_fake_targets_triton(maps, maps, 0.1, "pixels")
    with pytest.raises(ValueError, match="delta"):
        d_fake_targets_triton(maps, maps, float("nan"))
    with pytest.raises(ValueError, match="prediction"):
        d_fake_targets_triton(maps[:, :2], maps, 0.1)
