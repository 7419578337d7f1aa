"""Numeric precision of a run: fp32; bf16 or fp16 autocast (mixed precision; fp16 with a GradScaler per
model, GPU only); fp64 weights and inputs, for numerical checks such as data-parallel equivalence."""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

PARAM_DTYPE = {"fp32": torch.float32, "bf16": torch.float32, "fp16": torch.float32, "fp64": torch.float64}


def autocast(device: torch.device, precision: str):
    """The autocast region of a forward pass (a no-op for fp32 and fp64)."""
    if precision in ("fp32", "fp64"):
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def param_dtype(precision: str) -> torch.dtype:
    """dtype of the weights and of the float inputs fed to the models."""
    return PARAM_DTYPE[precision]


def set_numerics(device: torch.device, deterministic: bool) -> None:
    """Process-wide numerics of a run. Deterministic: deterministic algorithms everywhere, and on CUDA no TF32
    and no cuDNN autotuning, so a resumed run equals an uninterrupted one and fp32 matches the CPU to rounding
    (cuBLAS also needs CUBLAS_WORKSPACE_CONFIG, set here before its first use). Otherwise, on CUDA, cuDNN picks
    the fastest algorithms for the fixed input shapes (cudnn.benchmark) and TF32 is allowed."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
