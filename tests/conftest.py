"""Shared fixtures. The real datasets live in ../shared/datasets (never copied into the repo).

Tests that need them fail (not skip) when CI=true and the folder is missing, so a CI run can never pass
by silently skipping the real-data tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# CPU tests say so, all of them: the suite runs with every GPU hidden (CUDA_VISIBLE_DEVICES=""), set here
# before any test module is imported and before CUDA is initialised, so `train.device=auto` resolves to the
# CPU in this process and in every subprocess (torchrun workers, sbatch jobs inherit it). On a GPU machine
# the 2-process torchrun tests would otherwise put both ranks on one GPU. Tests that need CUDA are marked
# `gpu` and start their GPU work in a subprocess with `gpu_env` (the caller's original setting).
# scripts/gpu_check.sh runs tests/kernels in this process on the GPU: SATPOSE_KEEP_GPUS=1 leaves them visible.
REAL_CUDA_VISIBLE_DEVICES = os.environ.get("CUDA_VISIBLE_DEVICES")
KEEP_GPUS = os.environ.get("SATPOSE_KEEP_GPUS") == "1"
if not KEEP_GPUS:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def _cuda_device_count() -> int:
    import subprocess
    import sys

    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                           env=gpu_environment(), capture_output=True, text=True, timeout=300)
    return int(probe.stdout.strip() or 0) if probe.returncode == 0 else 0


def gpu_environment() -> dict[str, str]:
    """os.environ with the GPUs the test run was started with (for subprocesses of `gpu` tests)."""
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if REAL_CUDA_VISIBLE_DEVICES is not None:
        env["CUDA_VISIBLE_DEVICES"] = REAL_CUDA_VISIBLE_DEVICES
    return env


@pytest.fixture(scope="session")
def cuda_devices() -> int:
    """GPUs a subprocess would see; a `gpu` test without any is skipped (failed with SATPOSE_REQUIRE_GPU=1)."""
    n = _cuda_device_count()
    if n == 0:
        msg = "no CUDA device (gpu test)"
        if os.environ.get("SATPOSE_REQUIRE_GPU") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return n


@pytest.fixture
def gpu_env(cuda_devices) -> dict[str, str]:
    return gpu_environment()


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request):
    """Every test not marked `gpu` sees no GPU; a `gpu` test must use `gpu_env` (it cannot forget to)."""
    if request.node.get_closest_marker("gpu") is not None:
        if "gpu_env" not in request.fixturenames:
            pytest.fail("a test marked gpu runs its CUDA work in a subprocess with the gpu_env fixture")
    elif not KEEP_GPUS:
        assert os.environ.get("CUDA_VISIBLE_DEVICES") == "", "a test un-hid the GPUs (CUDA_VISIBLE_DEVICES)"


def _datasets_dir() -> Path:
    return Path(os.environ.get("SATPOSE_DATASETS", REPO.parent / "shared" / "datasets"))


def _need(path: Path) -> Path:
    if not path.exists():
        msg = f"real dataset not found at {path} (set SATPOSE_DATASETS)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def lsp_root() -> Path:
    """../shared/datasets/lsp: images/im0001.jpg..im2000.jpg and joints.mat (3 x 14 x 2000)."""
    return _need(_datasets_dir() / "lsp")


@pytest.fixture(scope="session")
def mpii_root() -> Path:
    """../shared/datasets/mpii: valid_gt_with_reference_preds.mat and annotations_sample.json."""
    return _need(_datasets_dir() / "mpii")


@pytest.fixture(scope="module")
def single_torch_thread():
    """torch single-threaded for a module's tests, as in DataLoader workers; on a 2-core machine that is also
    far faster for small per-sample ops than the default thread pool. Modules ask for it with
    `pytestmark = pytest.mark.usefixtures("single_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
