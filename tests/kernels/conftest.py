"""The device the Triton kernel tests run on.

Triton chooses its interpreter when `triton.jit` decorates a kernel, i.e. when models.kernels is first
imported with TRITON_INTERPRET=1 in the environment. So on CPU the kernel tests run in a separate process
that tests/kernels/test_interpreter.py starts with that variable set (which fails unless every one of them
passes); in the main process they run on a CUDA GPU when one is visible (scripts/gpu_check.sh sets
SATPOSE_KEEP_GPUS=1 and SATPOSE_REQUIRE_GPU=1), and are deselected otherwise - they ran in the interpreter
process, so they are not reported as skipped. A missing triton fails under CI=true (it is in the dev extra)
and skips elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from models.kernels import runtime

INTERPRETER_SKIP = "no GPU: the Triton kernels run on CPU in test_interpreter.py's TRITON_INTERPRET=1 process"


@pytest.fixture
def needs_triton() -> None:
    """Skip without triton (fail under CI=true)."""
    if not runtime.HAVE_TRITON:
        msg = "triton is not installed (pip install '.[dev]')"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def triton_device(needs_triton) -> torch.device:
    """cpu under the interpreter (whose kernels must then be interpreted ones), else cuda, else skip."""
    if runtime.INTERPRETER:
        from triton.runtime.interpreter import InterpretedFunction

        from models.kernels import decode

        assert isinstance(decode._decode_kernel, InterpretedFunction), type(decode._decode_kernel)
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("SATPOSE_REQUIRE_GPU") == "1":
        pytest.fail("SATPOSE_REQUIRE_GPU=1 but no CUDA device is visible to the kernel tests")
    pytest.skip(INTERPRETER_SKIP)


def pytest_collection_modifyitems(config, items):
    """Under the interpreter (the process test_interpreter.py starts) only this folder's kernel tests run;
    its torch-only tests ran in the main process already."""
    here = Path(__file__).parent
    if not runtime.INTERPRETER:
        # without a GPU the kernel tests run only in test_interpreter.py's process (deselected here)
        if torch.cuda.is_available() or os.environ.get("SATPOSE_REQUIRE_GPU") == "1" or not runtime.HAVE_TRITON:
            return
        drop = [it for it in items if here in it.path.parents and "triton_device" in it.fixturenames]
    else:
        drop = [it for it in items if here in it.path.parents and "triton_device" not in it.fixturenames]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [it for it in items if it not in drop]
