"""Peak rates MFU and bandwidth floors are measured against.

GPUs: dense (no structured sparsity) tensor-core TFLOP/s per dtype and memory bandwidth, from the vendor
datasheets (sparsity figures halved):
  H100 SXM / PCIe / NVL: NVIDIA H100 Tensor Core GPU datasheet (2023); the bf16 figures are also torchtitan's
    `get_peak_flops` (torchtitan/tools/utils.py: 989e12, 756e12, 835e12)
  H200: NVIDIA H200 datasheet (same compute as H100 SXM, 4.8 TB/s HBM3e; torchtitan: 989e12)
  A100: NVIDIA A100 datasheet (80GB SXM: 2.039 TB/s; 40GB: 1.555 TB/s)
  L40S: NVIDIA L40S datasheet; L4: NVIDIA L4 datasheet; A10: NVIDIA A10 datasheet; V100: V100 SXM2 datasheet
"fp32" training on a GPU runs its convolutions in TF32 by default (torch.backends.cudnn.allow_tf32), so its
peak is the tf32 one unless TF32 is off. fp64 is the non-tensor rate.

CPU: no table - the peak is measured in the same process: the best fp32 (or bf16) matrix product seen during
the run with the process's threads (sample_cpu_peak), and the bandwidth a large copy reaches. MFU against it
says how close the step comes to this machine's own matmul rate.
"""

from __future__ import annotations

import time

import torch

# name match (in order: first hit wins) -> {dtype: dense TFLOP/s, "tbs": memory TB/s}
GPU_PEAKS: tuple[tuple[tuple[str, ...], dict[str, float]], ...] = (
    (("H100", "PCIE"), {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2, "fp64": 25.6, "tbs": 2.0}),
    (("H100", "NVL"), {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0, "fp64": 30.0, "tbs": 3.9}),
    (("H100",), {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9, "fp64": 33.5, "tbs": 3.35}),
    (("H200",), {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9, "fp64": 33.5, "tbs": 4.8}),
    (("A100", "40GB"), {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5, "fp64": 9.7, "tbs": 1.555}),
    (("A100",), {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5, "fp64": 9.7, "tbs": 2.039}),
    (("L40S",), {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6, "fp64": 1.4, "tbs": 0.864}),
    (("L4",), {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3, "fp64": 0.49, "tbs": 0.3}),
    (("A10",), {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2, "fp64": 0.98, "tbs": 0.6}),
    (("V100",), {"fp16": 125.0, "fp32": 15.7, "tf32": 15.7, "fp64": 7.8, "tbs": 0.9}),
)


def compute_dtype(precision: str, device: torch.device) -> str:
    """The dtype whose peak a run of `precision` is held against."""
    if precision == "fp32" and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return {"bf16": "bf16", "fp16": "fp16", "fp64": "fp64"}.get(precision, "fp32")


def gpu_entry(name: str) -> dict[str, float] | None:
    upper = name.upper()
    for keys, entry in GPU_PEAKS:
        if all(k in upper for k in keys):
            return entry
    return None


# A device-to-device copy through PyTorch (bytes read + written) on this workplace's lent machines: what memory-
# bound kernels can reach in practice, beside the datasheet figure (/work/.library/device/KINDS.md: H100 80GB
# HBM3 2026-11-13 "about 3.0 TB/s"; H200 2026-10-28 and 2026-11-04 "about 4.3 TB/s").
MEASURED_COPY_TBS: tuple[tuple[tuple[str, ...], float], ...] = ((("H100", "HBM3"), 3.0), (("H200",), 4.3))


def bandwidth(device: torch.device, override_gbps: float | None = None) -> dict:
    """{"tbs", "copy_tbs", "source"}: the memory bandwidth a step's bytes are held against. GPUs: the datasheet
    table (GPU_PEAKS), with the copy rate measured on such a machine where one is known; CPUs: unknown (None)
    unless given (--peak-gbps), since a single process's copy does not measure a shared machine's bandwidth."""
    if override_gbps:
        return {"tbs": override_gbps / 1e3, "copy_tbs": None, "source": "--peak-gbps"}
    if device.type != "cuda":
        return {"tbs": None, "copy_tbs": None, "source": "CPU: unknown (pass --peak-gbps)"}
    name = torch.cuda.get_device_name(device)
    upper = name.upper()
    tbs = (gpu_entry(name) or {}).get("tbs")
    copy = next((v for keys, v in MEASURED_COPY_TBS if all(k in upper for k in keys)), None)
    source = (f"datasheet table (harness/bench/peaks.py) for {name}" if tbs else f"no table entry for {name}: "
              "pass --peak-gbps") + (f"; a device copy measured {copy} TB/s on such a machine" if copy else "")
    return {"tbs": tbs, "copy_tbs": copy, "source": source}


_measured: dict[tuple, float] = {}  # the best rate seen in this process, per measurement


def sample_cpu_peak(dtype: torch.dtype, n: int = 1024, seconds: float = 0.3) -> float:
    """Multiply n x n matrices for `seconds` and keep the best rate seen so far in this process (TFLOP/s). On a
    machine shared with other work one sample can land in a busy moment: the suites sample again before every
    timed block, so the peak is the best moment of the run (still a lower bound of the idle machine's, which
    makes MFU an upper bound there)."""
    key = ("mm", dtype, torch.get_num_threads())
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    best, end = _measured.get(key, 0.0), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e12)
    _measured[key] = best
    return best


def _copy_tbs(n_bytes: int = 1 << 27, rounds: int = 5) -> float:
    if "copy" not in _measured:
        src = torch.ones(n_bytes // 4)
        dst = torch.empty_like(src)
        best = 0.0
        for _ in range(rounds):
            t = time.perf_counter()
            dst.copy_(src)
            best = max(best, 2 * n_bytes / (time.perf_counter() - t))  # read + write
        _measured["copy"] = best / 1e12
    return _measured["copy"]


def peak(device: torch.device, precision: str, override_tflops: float | None = None) -> dict:
    """{"tflops", "tbs", "dtype", "source"} for `device` running `precision`."""
    dtype = compute_dtype(precision, device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        entry = gpu_entry(name) or {}
        tflops, source = entry.get(dtype), f"datasheet table (harness/bench/peaks.py) for {name}"
        if tflops is None:
            source = f"no table entry for {name} / {dtype}: pass --peak-tflops"
        tbs = entry.get("tbs")
    else:
        mm_dtype = torch.bfloat16 if dtype == "bf16" else torch.float64 if dtype == "fp64" else torch.float32
        key = ("mm", mm_dtype, torch.get_num_threads())
        tflops = _measured[key] if key in _measured else sample_cpu_peak(mm_dtype)
        tbs = _copy_tbs()
        source = (f"measured here: best 1024^3 {dtype} matmul with {torch.get_num_threads()} thread(s) over "
                  "the run; bandwidth: best 128 MiB copy (read + write)")
    if override_tflops:
        tflops, source = override_tflops, "--peak-tflops"
    return {"tflops": tflops, "tbs": tbs, "dtype": dtype, "source": source}
