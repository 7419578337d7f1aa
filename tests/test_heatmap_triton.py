"""The Triton heatmap kernel against the torch renderer.

On CPU the kernel runs in Triton's interpreter, which is chosen when `triton.jit` decorates the kernel,
i.e. when models.heatmap_triton is imported with TRITON_INTERPRET=1 in the environment. The comparison
therefore runs in a fresh subprocess with that variable set (robust whatever this process imported).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from models.heatmap import render_gaussian

REPO = Path(__file__).resolve().parents[1]
HAVE_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed (pip install '.[triton]')")

COMPARE = textwrap.dedent("""
    import torch
    import triton.runtime.interpreter as interp
    import models.heatmap_triton as ht
    from models.heatmap import render_gaussian

    assert isinstance(ht._gaussian_kernel, interp.InterpretedFunction), type(ht._gaussian_kernel)
    g = torch.Generator().manual_seed(0)
    TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
    cases = 0
    for (B, J), size, sigma in [((2, 5), (64, 64), 1.0), ((3, 4), (17, 13), 2.0), ((1, 3), (1, 1), 1.0),
                                ((2, 3), (40, 41), 1.5), ((1, 2), (5, 70), 0.7)]:
        h, w = size
        kp = torch.rand(B, J, 2, generator=g) * torch.tensor([w + 12.0, h + 12.0]) - 6.0
        kp[0, 0] = float("nan")
        kp[0, 1] = torch.tensor([w - 1.0, 0.0])  # on a border pixel centre
        vis = torch.randint(0, 3, (B, J), generator=g)
        vis[0, 1] = 2
        for dtype, tol in TOL.items():
            ref = render_gaussian(kp.to(dtype), vis, size, sigma, backend="torch")
            got = ht.render_gaussian_triton(kp.to(dtype), vis, size, sigma)
            assert got.dtype == dtype and got.shape == ref.shape, (got.dtype, got.shape)
            err = (got.float() - ref.float()).abs().max().item()
            assert err <= tol, f"{size} sigma={sigma} {dtype}: max error {err}"
            assert not torch.isnan(got).any()
            cases += 1
        via = render_gaussian(kp, vis > 0, size, sigma, backend="triton")
        assert torch.allclose(via, render_gaussian(kp, vis, size, sigma, backend="torch"), atol=1e-6, rtol=0)
        assert via[0, 1].max() > 0.99 and via[0, 0].abs().sum() == 0
    # integer keypoints, an empty batch, and float64 refused with a pointer to the torch backend
    ik = torch.tensor([[[3, 4], [0, 9]]])
    assert torch.allclose(ht.render_gaussian_triton(ik, torch.ones(1, 2), (8, 10)),
                          render_gaussian(ik, torch.ones(1, 2), (8, 10), backend="torch"), atol=1e-6)
    assert ht.render_gaussian_triton(torch.zeros(0, 4, 2), torch.zeros(0, 4), (8, 8)).shape == (0, 4, 8, 8)
    try:
        ht.render_gaussian_triton(kp.double(), vis, (8, 8))
    except ValueError as e:
        assert "backend='torch'" in str(e)
    else:
        raise AssertionError("float64 was accepted")
    print("OK", cases)
""")


@needs_triton
def test_triton_kernel_matches_torch_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", COMPARE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"interpreter comparison failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    assert proc.stdout.split()[:2] == ["OK", "15"], proc.stdout


def test_auto_backend_on_cpu_is_torch_and_bad_backend_is_refused():
    kp = torch.tensor([[[2.5, 3.0]]])
    vis = torch.ones(1, 1)
    auto = render_gaussian(kp, vis, (6, 6))
    torch.testing.assert_close(auto, render_gaussian(kp, vis, (6, 6), backend="torch"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="backend"):
        render_gaussian(kp, vis, (6, 6), backend="cuda")


@needs_triton
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"), reason="interpreter is on")
def test_triton_backend_on_cpu_without_interpreter_says_what_to_do():
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        render_gaussian(torch.zeros(1, 1, 2), torch.ones(1, 1), (4, 4), backend="triton")


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_kernel_matches_torch_on_cuda():
    g = torch.Generator().manual_seed(1)
    kp = (torch.rand(8, 16, 2, generator=g) * 76 - 6).cuda()
    vis = torch.randint(0, 3, (8, 16), generator=g).cuda()
    for dtype, tol in [(torch.float32, 1e-6), (torch.float16, 1e-3), (torch.bfloat16, 8e-3)]:
        ref = render_gaussian(kp.to(dtype), vis, (64, 64), 1.0, backend="torch")
        got = render_gaussian(kp.to(dtype), vis, (64, 64), 1.0)  # auto picks triton on CUDA
        assert got.dtype == dtype
        assert (got.float() - ref.float()).abs().max().item() <= tol
