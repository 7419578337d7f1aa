"""Stacked masked heatmap MSE (intermediate supervision): the torch reference and a fused Triton
forward + backward.

    loss = sum over stacks s of mean over (B, J, h, w) of weight[b, j] * (outputs[s] - target)^2

Fused: the forward reads every stack's output and the target once, in one pass, with per-program partial
sums (no atomics: the result is deterministic); the backward (a torch.autograd.Function) writes every
stack's gradient 2 g w (o_s - t) / N in one more pass, and the target's (minus their sum) if it needs one.
No per-stack difference, square or product tensor is materialised. Up to MAX_STACKS outputs per pass;
more stacks take more passes (the target is then read once per pass).

Layout: any dense NCHW or channels_last tensors; those not in outputs[0]'s layout are copied to it (pass
the target in the outputs' layout to avoid that copy). Dtypes: float16/bfloat16/float32 outputs and
target, float32 compute and accumulation; the weight is rounded to the target's dtype as in the reference;
the loss comes back in the dtype torch would give, the gradients in their inputs' dtypes. The weight takes
no gradient here (models.kernels dispatches a weight that requires one to the torch reference).

Bytes (N = B*J*h*w elements of `itemsize`, S stacks): forward (S + 1) N itemsize, backward (S + 1) N
reads + S N writes (+ N with a target gradient), plus B*J weights. The torch reference makes four
elementwise passes per stack forward and about as many backward.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

from models.kernels.runtime import check_launch, device_of, jit, tl, triton

MAX_STACKS = 8  # outputs read per kernel pass
_BLOCK = 2048  # elements per program


def heatmap_mse_torch(outputs: Sequence[torch.Tensor], target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The torch reference (the formula of models.losses.heatmap_mse, one stack at a time)."""
    w = weight.to(target.dtype)[..., None, None]
    return sum(((out - target) ** 2 * w).mean() for out in outputs)


@jit
def _map_weight(w_ptr, offs, mask, J: tl.constexpr, STRIDE_B: tl.constexpr, STRIDE_J: tl.constexpr):
    """weight[b, j] of each flat element offset of a dense [B, J, h, w] tensor (NCHW or channels_last)."""
    return tl.load(w_ptr + (offs // STRIDE_B) * J + (offs // STRIDE_J) % J, mask=mask, other=0.0)


@jit
def _sq(o_ptr, offs, mask, t):
    d = tl.load(o_ptr + offs, mask=mask, other=0.0).to(tl.float32) - t
    return d * d


@jit
def _mse_fwd_kernel(t_ptr, w_ptr, part_ptr, o0, o1, o2, o3, o4, o5, o6, o7, numel,
                    J: tl.constexpr, STRIDE_B: tl.constexpr, STRIDE_J: tl.constexpr,
                    NUM: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    acc = _sq(o0, offs, mask, t)
    if NUM > 1:
        acc += _sq(o1, offs, mask, t)
    if NUM > 2:
        acc += _sq(o2, offs, mask, t)
    if NUM > 3:
        acc += _sq(o3, offs, mask, t)
    if NUM > 4:
        acc += _sq(o4, offs, mask, t)
    if NUM > 5:
        acc += _sq(o5, offs, mask, t)
    if NUM > 6:
        acc += _sq(o6, offs, mask, t)
    if NUM > 7:
        acc += _sq(o7, offs, mask, t)
    wt = _map_weight(w_ptr, offs, mask, J, STRIDE_B, STRIDE_J)
    tl.store(part_ptr + pid, tl.sum(acc * wt, axis=0))  # 0 * inf = NaN, as in the reference


@jit
def _grad(o_ptr, g_ptr, offs, mask, t, c):
    g = c * (tl.load(o_ptr + offs, mask=mask, other=0.0).to(tl.float32) - t)
    tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=mask)
    return g


@jit
def _mse_bwd_kernel(t_ptr, w_ptr, scale_ptr, gt_ptr, o0, o1, o2, o3, o4, o5, o6, o7,
                    g0, g1, g2, g3, g4, g5, g6, g7, numel, two_over_n,
                    J: tl.constexpr, STRIDE_B: tl.constexpr, STRIDE_J: tl.constexpr,
                    NUM: tl.constexpr, TARGET_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(scale_ptr) * two_over_n * _map_weight(w_ptr, offs, mask, J, STRIDE_B, STRIDE_J)
    gsum = _grad(o0, g0, offs, mask, t, c)
    if NUM > 1:
        gsum += _grad(o1, g1, offs, mask, t, c)
    if NUM > 2:
        gsum += _grad(o2, g2, offs, mask, t, c)
    if NUM > 3:
        gsum += _grad(o3, g3, offs, mask, t, c)
    if NUM > 4:
        gsum += _grad(o4, g4, offs, mask, t, c)
    if NUM > 5:
        gsum += _grad(o5, g5, offs, mask, t, c)
    if NUM > 6:
        gsum += _grad(o6, g6, offs, mask, t, c)
    if NUM > 7:
        gsum += _grad(o7, g7, offs, mask, t, c)
    if TARGET_GRAD:
        tl.store(gt_ptr + offs, (-gsum).to(gt_ptr.dtype.element_ty), mask=mask)


def _layout(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], int]:
    """The tensors in tensors[0]'s dense layout (NCHW or channels_last) and the flat stride of a joint."""
    first = tensors[0]
    channels_last = first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    h, w = first.shape[-2:]
    return [t.contiguous(memory_format=fmt) for t in tensors], 1 if channels_last else h * w


def _groups(n: int) -> list[range]:
    return [range(i, min(i + MAX_STACKS, n)) for i in range(0, n, MAX_STACKS)]


def _padded(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return tensors + [tensors[0]] * (MAX_STACKS - len(tensors))


class _StackedMSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, target: torch.Tensor, weight: torch.Tensor, *outputs: torch.Tensor) -> torch.Tensor:
        (*outputs, target), stride_j = _layout([*outputs, target])
        b, j, h, w = target.shape
        numel = target.numel()
        meta = {"J": j, "STRIDE_B": j * h * w, "STRIDE_J": stride_j, "BLOCK": _BLOCK}
        grid = (triton.cdiv(numel, _BLOCK),)
        wt = weight.to(target.dtype).to(torch.float32).contiguous()  # rounded as in the reference
        groups = _groups(len(outputs))
        partials = torch.empty(len(groups), grid[0], dtype=torch.float32, device=target.device)
        with device_of(target):
            for k, group in enumerate(groups):
                if numel:
                    _mse_fwd_kernel[grid](target, wt, partials[k], *_padded([outputs[i] for i in group]), numel,
                                          NUM=len(group), **meta)
        ctx.save_for_backward(target, wt, *outputs)
        ctx.meta = meta
        dtype = functools.reduce(torch.promote_types, [o.dtype for o in outputs], target.dtype)
        return (partials.sum() / numel).to(dtype)

    @staticmethod
    @once_differentiable  # the backward is a kernel: no double backward
    def backward(ctx, grad: torch.Tensor):
        target, wt, *outputs = ctx.saved_tensors
        numel = target.numel()
        target_grad = ctx.needs_input_grad[0]
        groups = _groups(len(outputs))
        grads = [torch.empty_like(o) for o in outputs]
        target_grads = [torch.empty_like(target) for _ in groups] if target_grad else []  # one per pass
        scale = grad.to(torch.float32).reshape(1)  # read on the device: no host sync
        grid = (triton.cdiv(numel, _BLOCK),)
        with device_of(target):
            for k, group in enumerate(groups):
                if numel:
                    _mse_bwd_kernel[grid](target, wt, scale, target_grads[k] if target_grad else target,
                                          *_padded([outputs[i] for i in group]), *_padded([grads[i] for i in group]),
                                          numel, 2.0 / numel, NUM=len(group), TARGET_GRAD=target_grad, **ctx.meta)
        gt = sum(target_grads[1:], target_grads[0]) if target_grad else None
        return (gt, None, *grads)


def heatmap_mse_triton(outputs: Sequence[torch.Tensor], target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The fused kernels: heatmap_mse_torch's value and gradients (module docstring). Shapes are checked
    here; models.losses.heatmap_mse gives the full error messages."""
    outputs = list(outputs)
    if not outputs or any(o.shape != target.shape for o in outputs) or target.dim() != 4:
        raise ValueError(f"heatmap_mse: outputs must be [B, J, h, w] tensors of the target's shape "
                         f"{tuple(target.shape)}, got {[tuple(o.shape) for o in outputs]}")
    if weight.shape != target.shape[:2]:
        raise ValueError(f"heatmap_mse: weight must be [B, J] = {tuple(target.shape[:2])}, got {tuple(weight.shape)}")
    if weight.requires_grad:
        raise ValueError("heatmap_mse: the triton kernel gives the weight no gradient (use backend='torch')")
    if target.numel() > 2**31 - 1 - _BLOCK:
        raise ValueError(f"heatmap_mse: {target.numel()} elements per stack exceed the kernel's int32 offsets "
                         "(use backend='torch')")
    check_launch("heatmap_mse", target, *outputs)
    return _StackedMSE.apply(target, weight.to(target.device), *outputs)
