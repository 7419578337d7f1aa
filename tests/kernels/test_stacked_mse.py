"""The fused stacked masked MSE (models/kernels/stacked_mse.py): value and gradients against the torch
reference in the same dtype and against float64 (the reference itself is checked against a loop in
tests/test_losses.py)."""

from __future__ import annotations

import pytest
import torch

from models.kernels.stacked_mse import MAX_STACKS, heatmap_mse_torch, heatmap_mse_triton

SHAPES = [(2, 3, 7, 5), (1, 3, 1, 1), (2, 4, 9, 16)]  # odd maps, J=3, B=1, non-power-of-two sizes


def inputs(shape, stacks, g, device, dtype=torch.float32, target_grad=False):
    outs = [torch.randn(shape, generator=g).to(device, dtype).requires_grad_() for _ in range(stacks)]
    target = torch.randn(shape, generator=g).to(device, dtype).requires_grad_(target_grad)
    weight = (torch.rand(shape[:2], generator=g) > 0.3).to(device, dtype)
    weight[0, 0] = 0  # a zero-weight joint
    return outs, target, weight


def loss_and_grads(fn, outs, target, weight):
    loss = fn(outs, target, weight)
    leaves = outs + ([target] if target.requires_grad else [])
    return loss, torch.autograd.grad(loss, leaves)


def as64(ts):
    return [t.detach().double().requires_grad_(t.requires_grad) for t in ts]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stacks", [1, 4, MAX_STACKS + 1])  # MAX_STACKS + 1 takes two passes
def test_value_and_gradients_match_torch_and_float64(triton_device, shape, stacks):
    g = torch.Generator().manual_seed(stacks)
    outs, target, weight = inputs(shape, stacks, g, triton_device, target_grad=stacks == 4)
    loss, grads = loss_and_grads(heatmap_mse_triton, outs, target, weight)
    ref, ref_grads = loss_and_grads(heatmap_mse_torch, outs, target, weight)
    ref64, grads64 = loss_and_grads(heatmap_mse_torch, as64(outs), as64([target])[0], weight.double())
    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss, ref, rtol=2e-6, atol=0)
    torch.testing.assert_close(loss.double(), ref64, rtol=2e-6, atol=0)
    assert len(grads) == len(ref_grads) == stacks + (stacks == 4)
    for got, want, want64 in zip(grads, ref_grads, grads64):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got.double(), want64, rtol=1e-5, atol=1e-7)
        assert got[0, 0].abs().sum() == 0  # zero-weight joint: no gradient


def test_channels_last_outputs_and_bfloat16(triton_device):
    g = torch.Generator().manual_seed(5)
    outs, target, weight = inputs((2, 3, 7, 5), 3, g, triton_device)
    cl = [o.detach().to(memory_format=torch.channels_last).requires_grad_() for o in outs]
    loss, grads = loss_and_grads(heatmap_mse_triton, cl, target, weight)  # target NCHW, outputs NHWC
    ref, ref_grads = loss_and_grads(heatmap_mse_torch, outs, target, weight)
    torch.testing.assert_close(loss, ref, rtol=2e-6, atol=0)
    for got, want in zip(grads, ref_grads):
        assert got.is_contiguous(memory_format=torch.channels_last)  # computed in the outputs' layout
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # bf16 outputs against an fp32 target, as G's autocast outputs would be: fp32 loss, bf16 gradients
    bf = [o.detach().bfloat16().requires_grad_() for o in outs]
    loss, grads = loss_and_grads(heatmap_mse_triton, bf, target, weight)
    ref, ref_grads = loss_and_grads(heatmap_mse_torch, bf, target, weight)
    assert loss.dtype == torch.float32 and all(gr.dtype == torch.bfloat16 for gr in grads)
    torch.testing.assert_close(loss, ref, rtol=2e-6, atol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.float(), want.float(), rtol=8e-3, atol=1e-6)


def test_zero_weights_and_non_finite_outputs(triton_device):
    g = torch.Generator().manual_seed(6)
    outs, target, weight = inputs((1, 3, 7, 5), 2, g, triton_device)
    loss, grads = loss_and_grads(heatmap_mse_triton, outs, target, torch.zeros_like(weight))
    assert loss == 0 and all(gr.abs().sum() == 0 for gr in grads)
    with torch.no_grad():
        outs[1][0, 0, 2, 2] = float("nan")  # on a zero-weight joint: 0 * NaN is NaN, as in the reference
    assert torch.isnan(heatmap_mse_triton(outs, target, weight)) and torch.isnan(heatmap_mse_torch(outs, target,
                                                                                                      weight))


def test_refuses_what_it_cannot_do(triton_device):
    g = torch.Generator().manual_seed(7)
    outs, target, weight = inputs((1, 3, 7, 5), 2, g, triton_device)
    with pytest.raises(ValueError, match="backend='torch'"):
        heatmap_mse_triton(outs, target, weight.clone().requires_grad_())
    with pytest.raises(ValueError, match="target's shape"):
        heatmap_mse_triton([outs[0][:, :2]], target, weight)
    with pytest.raises(ValueError, match="backend='torch'"):
        heatmap_mse_triton([o.double() for o in outs], target.double(), weight)
