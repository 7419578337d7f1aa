"""Triton when it is installed: the optional import, the backend choice, and the checks before a launch.

Every kernel module imports triton through here, so the package and its torch references import on a
machine without triton (`jit` then leaves the kernel functions undecorated and nothing launches them).
With TRITON_INTERPRET=1 in the environment when this module is first imported, `triton.jit` builds
interpreted kernels that run on CPU tensors (slow; for tests): `INTERPRETER` records that choice.
"""

from __future__ import annotations

import contextlib
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

HAVE_TRITON = triton is not None
INTERPRETER = HAVE_TRITON and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what the kernels read (they compute in fp32)
BACKENDS = ("auto", "torch", "triton")


def jit(fn):
    """`triton.jit` where triton is installed; the plain function otherwise."""
    return triton.jit(fn) if HAVE_TRITON else fn


def use_triton(tensor: torch.Tensor, backend: str) -> bool:
    """The dispatch rule: 'triton' and 'torch' force a backend; 'auto' takes Triton for a CUDA tensor of a
    dtype in TRITON_DTYPES when triton imports, torch otherwise. A plain Python check on device and dtype,
    so torch.compile traces the torch branch on CPU without a graph break."""
    if backend == "auto":
        return HAVE_TRITON and tensor.is_cuda and tensor.dtype in TRITON_DTYPES
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    return backend == "triton"


def check_launch(op: str, *tensors: torch.Tensor) -> None:
    """One clear error before a Triton launch that cannot work: triton missing, a dtype the kernels do not
    read, CPU tensors without the interpreter, or tensors on different devices."""
    if not HAVE_TRITON:
        raise RuntimeError(f"{op}: backend='triton' needs the triton package (pip install '.[triton]'); "
                           "use backend='torch'")
    for t in tensors:
        if t.dtype not in TRITON_DTYPES:
            raise ValueError(f"{op}: the triton kernel reads {TRITON_DTYPES}, got {t.dtype} (use backend='torch')")
        if t.device != tensors[0].device:
            raise ValueError(f"{op}: tensors on different devices ({tensors[0].device}, {t.device})")
    if not tensors[0].is_cuda and not INTERPRETER:
        raise ValueError(f"{op}: the triton kernel needs CUDA tensors (got {tensors[0].device}), or "
                         "TRITON_INTERPRET=1 set before models.kernels is imported (the CPU interpreter)")


def device_of(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make t's GPU current for a launch (Triton launches on the current device); nothing on CPU."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
