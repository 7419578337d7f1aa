"""model-info: parameter counts of the generator against the published stacked-hourglass sizes, and the
FLOP convention (1 multiply-add = 2 FLOPs, only convolutions and matmuls) against analytic formulas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.commands.model_info import count_flops, count_params, model_info
from models.discriminator import PoseDiscriminator
from models.hourglass import StackedHourglass, cancelled_bias_count

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stacks, low, high",
                         [(1, 3.4, 3.6), (2, 6.6, 6.7), (4, 12.9, 13.0), (8, 25.4, 25.6)])
def test_generator_parameter_counts(stacks, low, high):
    """The published counts are those of the reference implementation, whose convolutions all have biases: the
    model's count plus the biases BatchNorm cancels (which this model drops) reproduces them."""
    with torch.device("meta"):  # shapes only: instant even for 8 stacks
        model = StackedHourglass(num_stacks=stacks, num_joints=16, features=256)
    params, cancelled = count_params(model), cancelled_bias_count(model)
    assert low * 1e6 <= params + cancelled <= high * 1e6
    assert params == sum(p.numel() for p in StackedHourglass(stacks, 16, 256).parameters())  # real CPU model
    info = model_info(stacks=stacks, joints=16)
    assert (info["params"], info["params_reference"]) == (params, params + cancelled)


def test_cancelled_biases_are_those_of_convolutions_feeding_batchnorm():
    """Per residual: the 1x1 and 3x3 convolutions before BatchNorm (mid channels each); per conv-BN-ReLU: its
    output channels; the last 1x1 of a residual, the skips, heads and remaps keep theirs."""
    model = StackedHourglass(num_stacks=1, num_joints=16, features=8, depth=1)
    kept = {name for name, p in model.named_parameters() if name.endswith(".bias") and p.dim() == 1}
    assert "stem.1.body.8.bias" in kept and "heads.0.bias" in kept and "stem.1.skip.bias" in kept
    assert not any(n.endswith(("body.2.bias", "body.5.bias")) for n in kept)
    # stem conv (4 = min(128, F) // 2) + 4 stem residuals (mid 4, 8, 8, 4) + depth-1 hourglass (4 residuals) +
    # features_out residual (mid 4 each) + features_out conv-BN-ReLU (8)
    residual_mids = [4, 4, 4, 4] + [4] * 4 + [4]
    assert cancelled_bias_count(model) == 4 + 2 * sum(residual_mids) + 8


def _conv_flops(cin, cout, k, h_out, w_out):
    return 2 * cin * cout * k * k * h_out * w_out


def test_flops_of_a_single_conv_match_the_analytic_formula():
    x = torch.zeros(1, 5, 32, 48)
    assert count_flops(nn.Conv2d(5, 7, 3, padding=1), x) == _conv_flops(5, 7, 3, 32, 48)
    assert count_flops(nn.Conv2d(5, 7, 3, stride=2, padding=1), x) == _conv_flops(5, 7, 3, 16, 24)
    assert count_flops(nn.Linear(48, 10), x) == 2 * (1 * 5 * 32) * 48 * 10  # matmul: 2 * M * K * N
    # BatchNorm, ReLU and pooling are not counted
    conv_bn = nn.Sequential(nn.Conv2d(5, 7, 1), nn.BatchNorm2d(7), nn.ReLU(), nn.MaxPool2d(2))
    assert count_flops(conv_bn, x) == _conv_flops(5, 7, 1, 32, 48)


def test_meta_device_counts_equal_a_real_forward():
    small = dict(stacks=1, joints=16, features=32)
    info = model_info(**small)
    real = StackedHourglass(num_stacks=1, num_joints=16, features=32)
    assert info["flops"] == count_flops(real, torch.rand(1, 3, 256, 256))
    assert info["params"] == count_params(real)
    d_info = model_info(**small, discriminator=True)
    d_real = PoseDiscriminator(num_joints=16, num_stacks=1, features=32)
    assert d_info["flops"] == count_flops(d_real, torch.rand(1, 16, 64, 64), torch.rand(1, 3, 256, 256))
    assert d_info["input_shape"] == {"heatmaps": [1, 16, 64, 64], "image": [1, 3, 256, 256]}


def test_discriminator_conditioning_adds_the_rgb_input_weights():
    cond = model_info(stacks=1, joints=16, discriminator=True)
    uncond = model_info(stacks=1, joints=16, discriminator=True, conditional=False)
    # the only difference: 3 more input channels of the 7x7 stem conv (64 output channels at F=256)
    assert cond["params"] - uncond["params"] == 3 * 7 * 7 * 64
    assert cond["flops"] - uncond["flops"] == _conv_flops(3, 64, 7, 64, 64)
    assert uncond["input_shape"] == {"heatmaps": [1, 16, 64, 64]}


def test_cli_json():
    proc = subprocess.run([sys.executable, "-m", "harness", "model-info", "--stacks", "2", "--joints", "16",
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    ref = model_info(stacks=2, joints=16)
    assert out["params"] == ref["params"] == count_params(StackedHourglass(2, 16, 256))
    assert out["params_m"] == pytest.approx(out["params"] / 1e6)
    assert out["gflops"] == pytest.approx(ref["flops"] / 1e9) and out["gflops"] > 1
    assert "2 FLOPs" in out["flop_convention"] and out["input_shape"] == {"image": [1, 3, 256, 256]}


def test_cli_errors():
    for args, fragment in ((["--stacks", "0", "--joints", "16"], "stacks=0"),
                           (["--stacks", "1", "--joints", "16", "--unconditional"], "--discriminator")):
        proc = subprocess.run([sys.executable, "-m", "harness", "model-info", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
