"""Helpers shared by test modules (import as `from helpers import ...`; tests/ is on sys.path)."""

from __future__ import annotations

import os

import pytest


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
