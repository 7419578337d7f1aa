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


def cpu_has_bf16_kernels() -> bool:
    """Whether oneDNN has bf16 convolution kernels on this CPU (AVX512 and up; native with AVX512-BF16 or AMX).
    Without them (an AVX2 CPU) a bf16 autocast step runs a reference path: measured here with the ISA capped at
    AVX2 (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2), lsp-tta-tiny's SAT step ran at 16.9 img/s in bf16
    against 76.9 in fp32; with AVX512-BF16, 131 against 79."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(probe()) if probe is not None else True


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
