"""The dispatch of models.kernels through the public entry points (models.heatmap.render_gaussian /
decode_heatmaps / decode_flip_merged, models.losses.heatmap_mse / d_fake_targets): the torch reference
on CPU, bit for bit; Triton on CUDA; a checked backend argument; torch.compile without graph breaks on
CPU; and a working torch path where triton is not installed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from models import heatmap, losses
from models.kernels import runtime, use_triton
from models.kernels.decode import decode_flip_merged_torch, decode_heatmaps_torch
from models.kernels.dfake import d_fake_targets_torch
from models.kernels.gaussian import render_gaussian_torch
from models.kernels.stacked_mse import heatmap_mse_torch

REPO = Path(__file__).resolve().parents[2]
FLIP = [0, 2, 1]


def sample(device="cpu", g=None):
    g = g or torch.Generator().manual_seed(0)
    kp = torch.rand(2, 3, 2, generator=g) * 8
    vis = torch.ones(2, 3)
    target = render_gaussian_torch(kp, vis, (7, 5))
    outs = [(target + 0.1 * torch.randn(target.shape, generator=g)).requires_grad_() for _ in range(2)]
    weight = torch.tensor([[1.0, 0, 1], [1, 1, 1]])
    return [t.to(device) if i < 3 else t for i, t in enumerate((kp, vis, target))] + [
        [o.detach().to(device).requires_grad_() for o in outs], weight.to(device)]


def public_calls(kp, vis, target, outs, weight, backend="auto"):
    """Every public entry point on one sample (torch.compile traces this)."""
    return (heatmap.render_gaussian(kp, vis, (7, 5), backend=backend),
            *heatmap.decode_heatmaps(outs[0], backend=backend),
            *heatmap.decode_flip_merged(outs[0], outs[1], FLIP, backend=backend),
            losses.heatmap_mse(outs, target, weight) if backend == "auto" else None,
            losses.d_fake_targets(outs[1], target, 0.3, "torso", (0, 1)) if backend == "auto" else None)


def test_auto_on_cpu_is_the_torch_reference_bit_for_bit():
    kp, vis, target, outs, weight = sample()
    assert not use_triton(target, "auto") and not use_triton(target, "torch") and use_triton(target, "triton")
    got = public_calls(kp, vis, target, outs, weight)
    want = (render_gaussian_torch(kp, vis, (7, 5)), *decode_heatmaps_torch(outs[0]),
            *decode_flip_merged_torch(outs[0], outs[1], FLIP), heatmap_mse_torch(outs, target, weight),
            d_fake_targets_torch(outs[1], target, 0.3, "torso", (0, 1)))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_backend_argument_is_checked():
    kp, vis, target, outs, weight = sample()
    with pytest.raises(ValueError, match="backend must be"):
        heatmap.render_gaussian(kp, vis, (7, 5), backend="cuda")
    with pytest.raises(ValueError, match="backend must be"):
        heatmap.decode_heatmaps(target, backend="fused")


@pytest.mark.skipif(runtime.INTERPRETER, reason="the interpreter is on")
def test_triton_on_cpu_without_the_interpreter_says_what_to_do(needs_triton):
    kp, vis, target, outs, weight = sample()
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        public_calls(kp, vis, target, outs, weight, backend="triton")


def test_compiles_on_cpu_without_graph_breaks():
    kp, vis, target, outs, weight = sample()
    compiled = torch.compile(public_calls, backend="eager", fullgraph=True)  # fullgraph: a break raises
    for a, b in zip(compiled(kp, vis, target, outs, weight), public_calls(kp, vis, target, outs, weight)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_auto_takes_triton_for_cuda_tensors_of_kernel_dtypes(triton_device):
    if triton_device.type == "cpu":  # under the interpreter 'auto' still means torch on CPU
        assert not use_triton(torch.zeros(1), "auto")
        return
    for dtype in runtime.TRITON_DTYPES:
        assert use_triton(torch.zeros(1, dtype=dtype, device="cuda"), "auto")
    assert not use_triton(torch.zeros(1, dtype=torch.float64, device="cuda"), "auto")
    kp, vis, target, outs, weight = sample("cuda")
    got = public_calls(kp, vis, target, outs, weight)
    want = public_calls(*sample("cpu"))
    for a, b in zip(got[:5], want[:5]):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=1e-6)
    torch.testing.assert_close(got[5].cpu(), want[5], rtol=2e-6, atol=0)
    torch.testing.assert_close(got[6].cpu(), want[6], rtol=0, atol=0)


NO_TRITON = textwrap.dedent("""
    import sys
    sys.modules["triton"] = None  # makes `import triton` raise ImportError, as on a machine without it
    import torch
    from models import heatmap, losses
    from models.kernels import cases, runtime
    assert not runtime.HAVE_TRITON and not cases.fused_available("cuda")
    kp = torch.tensor([[[2.0, 3.0], [1.0, 1.0]]]); vis = torch.ones(1, 2)
    maps = heatmap.render_gaussian(kp, vis, (6, 6))
    assert heatmap.decode_heatmaps(maps)[0].tolist() == [[[2.0, 3.0], [1.0, 1.0]]]
    heatmap.decode_flip_merged(maps, maps, [1, 0])
    losses.heatmap_mse([maps.clone().requires_grad_()], maps, vis).backward()
    assert losses.d_fake_targets(maps, maps).tolist() == [[1.0, 1.0]]
    for case in cases.CASES:
        case.reference(*case.make_inputs(cases.KernelSize(2, 3, 8, 8, 2), torch.device("cpu")))
    try:
        heatmap.render_gaussian(kp, vis, (6, 6), backend="triton")
    except RuntimeError as e:
        assert "triton package" in str(e), e
    else:
        raise AssertionError("backend='triton' without triton was accepted")
    print("OK")
""")


def test_without_triton_everything_imports_and_the_torch_path_runs():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", NO_TRITON], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stdout + proc.stderr[-3000:]
