"""Helpers shared by test modules (import as `from helpers import ...`; tests/ is on sys.path)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn


def require(module: str, why: str = ""):
    """Import an optional package for a test: a failure under CI (which installs every extra), a skip
    elsewhere. The one place that decides this, so no test can pass in CI by skipping."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        msg = f"{module} is not installed{': ' + why if why else ''} ({exc})"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def randomise_batchnorms(model: nn.Module, seed: int = 0) -> None:
    """Every BatchNorm2d's running statistics and affine parameters drawn far from (0, 1), in its own dtype:
    folding or migrating a default BatchNorm proves little."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n, dt = m.num_features, m.running_mean.dtype
                m.running_mean.copy_(torch.randn(n, generator=gen, dtype=dt) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen, dtype=dt) * 2 + 0.1)
                m.weight.copy_(torch.randn(n, generator=gen, dtype=dt))
                m.bias.copy_(torch.randn(n, generator=gen, dtype=dt) * 0.3)
