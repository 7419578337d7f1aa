"""Every test of tests/kernels on CPU under Triton's interpreter, in a fresh process started with
TRITON_INTERPRET=1 (see conftest.py): every test that takes the `triton_device` fixture must run and pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_kernels_under_the_interpreter(needs_triton):
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "pytest", "tests/kernels", "-q", "-rs", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr[-4000:]
    assert proc.returncode == 0, f"interpreter run failed:\n{out}"
    lines = proc.stdout.splitlines()
    assert " passed" in lines[-1] and "skipped" not in lines[-1], f"a kernel test did not run:\n{out}"
