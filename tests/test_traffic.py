"""harness/bench/traffic.py: the eager-kernel byte count against counts by hand, its split into per-image and
fixed bytes, the op kinds, and the profiler's time by kind."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.bench.traffic import KINDS, at_batch, count_bytes, count_traffic, op_kind, profile_kinds, roofline


def test_each_op_reads_its_inputs_and_writes_its_outputs_once():
    x, y = torch.randn(1000), torch.randn(1000)
    assert count_bytes(lambda: x + y).total == 3 * 4000
    assert count_bytes(lambda: x * x).total == 2 * 4000  # one distinct input
    z = x.clone()
    assert count_bytes(lambda: z.add_(y)).by_kind == {"elementwise": 3 * 4000}  # read z, y; write z
    assert count_bytes(lambda: x.view(10, 100).t()).total == 0  # views move nothing
    assert count_bytes(lambda: x.to(torch.bfloat16)).by_kind == {"copy/cast": 4000 + 2000}
    assert count_bytes(lambda: x.sum()).by_kind == {"reduction": 4000 + 4}


def test_a_conv_bn_relu_forward_by_hand():
    conv, bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8).eval()
    x = torch.randn(2, 3, 10, 10)
    counted = count_bytes(lambda: torch.relu(bn(conv(x))))
    act_in, act = x.numel() * 4, 2 * 8 * 10 * 10 * 4
    assert counted.by_kind["convolution"] == act_in + conv.weight.numel() * 4 + act
    # eval BatchNorm: input, weight, bias, running mean and var in; its output (and empty saved statistics) out
    assert act + act + 4 * 8 * 4 <= counted.by_kind["batchnorm"] <= act + act + 6 * 8 * 4
    assert counted.by_kind["elementwise"] == 2 * act


def test_per_image_and_fixed_bytes_are_split_exactly():
    w = torch.randn(64, 64)  # fixed: read once per call whatever the batch

    def prepare(b):
        x = torch.randn(b, 64)
        return lambda: x @ w

    t = count_traffic(prepare)
    assert sum(t["per_image"].values()) == 64 * 4 + 64 * 4  # one row in, one row out
    assert sum(t["fixed"].values()) == 64 * 64 * 4
    r = at_batch(t, 8)
    assert r["at_batch"] == pytest.approx(2 * 64 * 4 + 64 * 64 * 4 / 8)
    assert sum(r["by_kind"].values()) == pytest.approx(r["at_batch"])
    row = roofline(r, 1000.0, {"tbs": 2.0, "copy_tbs": 1.0, "source": "test"})
    assert row["achieved_tbs_per_device"] == pytest.approx(r["at_batch"] * 1000 / 1e12)
    assert row["bandwidth_share"] == pytest.approx(row["achieved_tbs_per_device"] / 2.0)
    assert row["bandwidth_share_of_copy"] == pytest.approx(2 * row["bandwidth_share"])
    assert roofline(r, 1000.0, {"tbs": None, "copy_tbs": None, "source": "cpu"})["bandwidth_share"] is None


@pytest.mark.parametrize("name,kind", [
    ("aten::convolution_backward", "convolution"), ("aten::mkldnn_convolution", "convolution"),
    ("aten::native_batch_norm_backward", "batchnorm"), ("aten::cudnn_batch_norm", "batchnorm"),
    ("add_.Tensor", "elementwise"), ("aten::threshold_backward", "elementwise"), ("relu_", "elementwise"),
    ("aten::sum", "reduction"), ("aten::_to_copy", "copy/cast"), ("aten::copy_", "copy/cast"),
    ("aten::_foreach_addcdiv_", "optimizer"), ("aten::_fused_adam_", "optimizer"),
    ("aten::_foreach_norm", "reduction"), ("aten::max_pool2d_with_indices", "other"),
    ("aten::upsample_nearest2d", "other")])
def test_op_kinds(name, kind):
    assert op_kind(name) == kind


def test_profile_kinds_adds_up():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 32, 32)
    p = profile_kinds(lambda: torch.relu(conv(x)).sum(), 2, torch.device("cpu"))
    assert set(p["by_kind"]) == set(KINDS)
    assert sum(v["share"] for v in p["by_kind"].values()) == pytest.approx(1.0)
    assert p["by_kind"]["convolution"]["ms"] > 0 and p["ms_per_call"] > 0
    assert p["top_ops"] and all(kind in KINDS for _, _, kind in p["top_ops"])
