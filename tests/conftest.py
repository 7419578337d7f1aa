"""Shared fixtures. The real datasets live in ../shared/datasets (never copied into the repo).

Tests that need them fail (not skip) when CI=true and the folder is missing, so a CI run can never pass
by silently skipping the real-data tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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

