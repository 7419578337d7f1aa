"""Numeric precision of a run: fp32; bf16 or fp16 autocast (mixed precision; fp16 with a GradScaler per
model, GPU only); fp64 weights and inputs, for numerical checks such as data-parallel equivalence."""

from __future__ import annotations

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
