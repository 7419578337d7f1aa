"""`bench kernels`: every fused op of models/kernels/cases.py against its torch reference.

Per case: the torch reference's time and the Triton kernel's (CUDA), achieved GB/s = the case's minimal bytes
(every input read once, every output written once) / time, and time / floor, the floor being those bytes at
the device's peak bandwidth (peaks.py; on CPU a measured copy). The kernel's output is compared with the
reference's (largest relative error over the outputs).

On CPU the Triton kernels run only under Triton's interpreter (TRITON_INTERPRET=1, set here before
models.kernels is first imported): their results are checked, never timed - interpreter time says nothing
about a GPU. The torch references are timed on the CPU.
"""

from __future__ import annotations

import os
import sys

import torch

from harness.bench.peaks import peak
from harness.bench.timing import best_time_s


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)] if isinstance(out, (tuple, list)) else []


def rel_error(out, ref, floor: float = 0.0) -> float:
    """max over outputs of ||out - ref|| / max(||ref||, floor) (float64); inf when shapes differ or values are
    not finite. `floor` keeps tensors that are zero in exact arithmetic from being judged on their rounding."""
    worst = 0.0
    for a, b in zip(_flat(out), _flat(ref), strict=True):
        if a.shape != b.shape:
            return float("inf")
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        if not torch.isfinite(a).all():
            return float("inf")
        worst = max(worst, float((a - b).norm() / b.norm().clamp_min(max(floor, 1e-30))))
    return worst


def run(kernel_batch: int | None, repeats: int, tolerance: float = 1e-4) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and "models.kernels.runtime" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from models.kernels.cases import CASES, KernelSize, fused_available
    from models.kernels.runtime import INTERPRETER

    size = KernelSize(batch=kernel_batch or (64 if device.type == "cuda" else 8))
    pk = peak(device, "fp32")
    fused_ok = fused_available(device)
    rows = []
    for case in CASES:
        inputs = case.make_inputs(size, device)
        nbytes = case.min_bytes(*inputs)
        floor_s = nbytes / (pk["tbs"] * 1e12) if pk["tbs"] else None
        ref = case.reference(*inputs)
        backends = [("torch", case.reference, True)]
        if fused_ok:
            backends.append(("triton", case.fused, device.type == "cuda"))
        for backend, fn, timed in backends:
            row = {"key": f"{case.name}/{backend}", "op": case.name, "backend": backend, "metric": "ms",
                   "higher_is_better": False, "timed": timed, "min_bytes": nbytes, "value": None}
            if backend == "triton":
                row["rel_error"] = rel_error(fn(*inputs), ref)
                row["correct"] = row["rel_error"] <= tolerance
            if timed:
                t = best_time_s(lambda fn=fn, inputs=inputs: fn(*inputs), device, rounds=max(repeats, 3))
                row.update(value=t * 1e3, gbs=nbytes / t / 1e9, x_floor=t / floor_s if floor_s else None)
            rows.append(row)
    notes = [f"case size: batch {size.batch}, {size.joints} joints, {size.height}x{size.width} maps, "
             f"{size.stacks} stacks, {str(size.dtype).replace('torch.', '')}; correct = relative error <= "
             f"{tolerance:g}"]
    if device.type == "cpu":
        notes.append("CPU: torch references timed on this CPU; the Triton kernels "
                     + ("ran under Triton's interpreter (TRITON_INTERPRET=1): results checked, NOT timed"
                        if fused_ok and INTERPRETER else "did not run (triton missing or interpreter not active)"))
    return {"rows": rows, "runtime": {"device": str(device), "world_size": 1}, "peak": pk, "notes": notes}
