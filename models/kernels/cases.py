"""The cases of `bench kernels`: every fused op beside its torch reference, with the bytes it must move.

Contract (for the bench command and scripts/gpu_check.sh):

* `CASES` is a plain tuple of `KernelCase`; iterate it, do not look names up by string.
* `case.make_inputs(size, device)` returns a tuple of input tensors (seeded, so every call gives the same
  values), realistic for training or evaluation at `size` (default `KernelSize()`: B=64, J=16, 64x64 maps,
  4 stacks, float32): rendered Gaussians plus noise as heatmaps, keypoints partly outside the crop.
* `case.reference(*inputs)` runs the torch reference and `case.fused(*inputs)` the Triton kernel on the
  same inputs; both return tensors (a tuple for several) and are equal within the tests' tolerances
  (tests/kernels). Forward+backward cases return the gradients (torch.autograd.grad, so repeated calls
  do not accumulate into .grad).
* `case.min_bytes(*inputs)` is the least traffic the op needs: every input read once and every output
  written once (the fused kernels' design point). achieved GB/s = min_bytes / time for either callable,
  and min_bytes / the device's peak bandwidth is the floor a kernel is compared with.
* `fused_available(device)`: whether `fused` can run there - CUDA with triton, or CPU under
  TRITON_INTERPRET=1 (the interpreter: correct but not meaningful to time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from models.kernels import d_fake_targets, decode_flip_merged, decode_heatmaps, heatmap_mse, render_gaussian
from models.kernels.gaussian import target_weight
from models.kernels.runtime import HAVE_TRITON, INTERPRETER


@dataclass(frozen=True)
class KernelSize:
    batch: int = 64
    joints: int = 16
    height: int = 64
    width: int = 64
    stacks: int = 4
    dtype: torch.dtype = torch.float32


@dataclass(frozen=True)
class KernelCase:
    name: str
    make_inputs: Callable[[KernelSize, torch.device], tuple]
    reference: Callable[..., object]
    fused: Callable[..., object]
    min_bytes: Callable[..., int]


def fused_available(device: torch.device | str) -> bool:
    return HAVE_TRITON and (torch.device(device).type == "cuda" or INTERPRETER)


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _keypoints(s: KernelSize, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints in heatmap coordinates, about 10% outside the crop, and visibility codes 0/1/2."""
    margin = 0.05 * max(s.height, s.width)
    span = torch.tensor([s.width - 1 + 2 * margin, s.height - 1 + 2 * margin])
    kp = torch.rand(s.batch, s.joints, 2, generator=g) * span - margin
    return kp, torch.randint(0, 3, (s.batch, s.joints), generator=g)


def _maps(s: KernelSize, g: torch.Generator, noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian maps (sigma 1) of random keypoints plus noise, and their target weights (float32, CPU)."""
    kp, vis = _keypoints(s, g)
    maps = render_gaussian(kp, vis, (s.height, s.width), backend="torch")
    return maps + noise * torch.randn(maps.shape, generator=g), target_weight(kp, vis, (s.height, s.width))


def _gaussian_inputs(s: KernelSize, device: torch.device) -> tuple:
    kp, vis = _keypoints(s, torch.Generator().manual_seed(0))
    return kp.to(device, s.dtype), vis.to(device), (s.height, s.width)


def _gaussian_bytes(kp: torch.Tensor, vis: torch.Tensor, size: tuple[int, int]) -> int:
    return _nbytes(kp, vis) + kp.shape[0] * kp.shape[1] * size[0] * size[1] * kp.element_size()


def _mse_inputs(s: KernelSize, device: torch.device, grad: bool = False) -> tuple:
    g = torch.Generator().manual_seed(1)
    target, weight = _maps(s, g, noise=0.0)
    outputs = [(target + 0.1 * torch.randn(target.shape, generator=g)).to(device, s.dtype).requires_grad_(grad)
               for _ in range(s.stacks)]
    return outputs, target.to(device, s.dtype), weight.to(device, s.dtype)


def _mse_bytes(outputs: list[torch.Tensor], target: torch.Tensor, weight: torch.Tensor) -> int:
    return _nbytes(*outputs, target, weight)


def _mse_grad_bytes(outputs: list[torch.Tensor], target: torch.Tensor, weight: torch.Tensor) -> int:
    # forward reads S + 1 maps; backward reads S + 1 and writes S gradients
    return 2 * _nbytes(*outputs, target, weight) + _nbytes(*outputs)


def _mse_grads(backend: str) -> Callable[..., tuple]:
    def run(outputs, target, weight):
        return torch.autograd.grad(heatmap_mse(outputs, target, weight, backend=backend), outputs)
    return run


def _decode_inputs(s: KernelSize, device: torch.device) -> tuple:
    maps, _ = _maps(s, torch.Generator().manual_seed(2))
    return (maps.to(device, s.dtype),)


def _flip_inputs(s: KernelSize, device: torch.device) -> tuple:
    g = torch.Generator().manual_seed(3)
    maps, flipped = _maps(s, g)[0], _maps(s, g)[0]
    return maps.to(device, s.dtype), flipped.to(device, s.dtype), torch.randperm(s.joints, generator=g).tolist()


def _dfake_inputs(s: KernelSize, device: torch.device) -> tuple:
    g = torch.Generator().manual_seed(4)
    target, prediction = _maps(s, g, noise=0.0)[0], _maps(s, g)[0]
    return prediction.to(device, s.dtype), target.to(device, s.dtype)


def _decode_bytes(maps: torch.Tensor) -> int:
    return _nbytes(maps) + 3 * maps.shape[0] * maps.shape[1] * maps.element_size()  # coords and confidence


def _flip_bytes(maps: torch.Tensor, flipped: torch.Tensor, flip_index: list[int]) -> int:
    return _decode_bytes(maps) + _nbytes(flipped)


def _dfake_bytes(prediction: torch.Tensor, target: torch.Tensor, torso: bool = False) -> int:
    b, j, h, w = target.shape
    extra = 2 * b * h * w * target.element_size() if torso else 0  # the torso maps, read again
    return _nbytes(prediction, target) + b * j * prediction.element_size() + extra


CASES: tuple[KernelCase, ...] = (
    KernelCase("gaussian_targets", _gaussian_inputs,
               lambda kp, vis, size: render_gaussian(kp, vis, size, backend="torch"),
               lambda kp, vis, size: render_gaussian(kp, vis, size, backend="triton"), _gaussian_bytes),
    KernelCase("stacked_mse_forward", _mse_inputs,
               lambda o, t, w: heatmap_mse(o, t, w, backend="torch"),
               lambda o, t, w: heatmap_mse(o, t, w, backend="triton"), _mse_bytes),
    KernelCase("stacked_mse_forward_backward", lambda s, d: _mse_inputs(s, d, grad=True),
               _mse_grads("torch"), _mse_grads("triton"), _mse_grad_bytes),
    KernelCase("decode", _decode_inputs,
               lambda m: decode_heatmaps(m, backend="torch"),
               lambda m: decode_heatmaps(m, backend="triton"), _decode_bytes),
    KernelCase("decode_flip_merged", _flip_inputs,
               lambda m, f, fi: decode_flip_merged(m, f, fi, backend="torch"),
               lambda m, f, fi: decode_flip_merged(m, f, fi, backend="triton"), _flip_bytes),
    KernelCase("d_fake_heatmap", _dfake_inputs,
               lambda p, t: d_fake_targets(p, t, 0.003, "heatmap", backend="torch"),
               lambda p, t: d_fake_targets(p, t, 0.003, "heatmap", backend="triton"), _dfake_bytes),
    KernelCase("d_fake_torso", _dfake_inputs,
               lambda p, t: d_fake_targets(p, t, 0.5, "torso", (0, 1), backend="torch"),
               lambda p, t: d_fake_targets(p, t, 0.5, "torso", (0, 1), backend="triton"),
               lambda p, t: _dfake_bytes(p, t, torso=True)),
)
