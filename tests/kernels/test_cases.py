"""models/kernels/cases.py, the library of `bench kernels`: every case builds its inputs, runs its
reference, counts its bytes, and its fused callable equals the reference."""

from __future__ import annotations

import torch

from models.kernels.cases import CASES, KernelSize

TINY = KernelSize(batch=2, joints=3, height=7, width=5, stacks=2)


def flat(result):
    return [result] if isinstance(result, torch.Tensor) else list(result)


def test_cases_are_distinct_realistic_and_count_their_bytes():
    assert len({c.name for c in CASES}) == len(CASES) >= 7
    assert KernelSize() == KernelSize(64, 16, 64, 64, 4, torch.float32)
    n = 2 * 3 * 7 * 5 * 4  # bytes of one float32 [B, J, h, w] tensor at TINY
    by_name = {c.name: c for c in CASES}
    want = {"gaussian_targets": n + 2 * 3 * (2 * 4 + 8),  # maps written; float32 keypoints, int64 visibility
            "stacked_mse_forward": 3 * n + 2 * 3 * 4,  # 2 stacks + target read, weights
            "stacked_mse_forward_backward": 3 * n + 3 * n + 2 * n + 2 * 2 * 3 * 4,
            "decode": n + 3 * 2 * 3 * 4,
            "decode_flip_merged": 2 * n + 3 * 2 * 3 * 4,
            "d_fake_heatmap": 2 * n + 2 * 3 * 4,
            "d_fake_torso": 2 * n + 2 * 3 * 4 + 2 * 2 * 7 * 5 * 4}
    for name, count in want.items():
        case = by_name[name]
        inputs = case.make_inputs(TINY, torch.device("cpu"))
        assert case.min_bytes(*inputs) == count, name
        assert all(t.isfinite().all() for t in flat(case.reference(*inputs)) if t.is_floating_point())


def test_fused_equals_reference(triton_device):
    for case in CASES:
        inputs = case.make_inputs(TINY, triton_device)
        for got, want in zip(flat(case.fused(*inputs)), flat(case.reference(*inputs)), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=case.name)
