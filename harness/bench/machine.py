"""What a report says about the machine it ran on, and the device part of its file name."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _dali_version() -> str | None:
    for dist in ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110"):
        if _version(dist):
            return _version(dist)
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        return out.splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def machine_info(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "hostname": platform.node(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        # the vector ISA torch's CPU kernels dispatch to (AVX2, AVX512, ...): with the thread count, what decides
        # the float rounding of a CPU run, so what two CPU runs of one seed must share to agree bit for bit
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_avg_1m": os.getloadavg()[0],
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "driver": _driver() if cuda else None,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "dali": _dali_version(),
        "numpy": _version("numpy"),
        "opencv": _version("opencv-python-headless") or _version("opencv-python"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
    }


def device_slug(machine: dict) -> str:
    """'nvidia-h100-80gb-hbm3', 'cpu-amd-epyc', ...: the device part of a report's file name."""
    name = machine["gpu"] or "cpu " + re.sub(r"\((r|tm)\)|\bcpu\b|processor|@.*$", "", machine["cpu"], flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
