"""Single-file checkpoints: atomic writes, `torch.load(weights_only=True)`-loadable, last K + best kept.

A checkpoint is one dict of tensors and plain Python values:
  generator, discriminator          model state dicts ({} when the objective has no D)
  optim_g, optim_d, scaler_g, scaler_d
  balance                           the SAT k_t controller state ({} for other objectives)
  step, epoch                       optimizer steps done; epoch the next step belongs to
  rng                               torch / CUDA RNG states
  best                              {"value": float | None, "step": int | None}
  config                            the resolved config as a plain dict
Files: <dir>/step-00001234.pt for each save, <dir>/best.pt for the best validation score so far.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_pipelines.errors import UserError
from models.legacy import cancelled_bias_keys, drop_from_optimizer_state

REQUIRED_KEYS = ("generator", "discriminator", "optim_g", "optim_d", "step", "epoch", "config")
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; UserError naming the file if it is missing, torn or not ours."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torn/corrupt file, or a pickle with non-tensor objects
        refused = re.search(r"WeightsUnpickler error: (.*?)(?:\. Please|\n|$)", str(exc))
        if isinstance(exc, pickle.UnpicklingError) and refused:  # torch's text is many lines and says how to
            # load it anyway (weights_only=False): one line instead, and no such advice
            raise UserError(f"checkpoint {path} is refused: it holds pickled Python objects, which could run "
                            f"code when loaded ({refused.group(1)}); only tensors and plain values are read") \
                from None
        raise UserError(f"checkpoint {path} could not be loaded: {type(exc).__name__}: {exc}") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f"checkpoint {path} is missing {', '.join(missing)}")
    return state


def upgrade_optimizer_state(optim_state: dict[str, Any], model_state: dict[str, Any], model: nn.Module
                            ) -> dict[str, Any]:
    """The optimizer state of `model_state` (a saved state dict of `model`'s class) for `model`: a checkpoint written
    while convolutions before a BatchNorm still had biases lists them among its parameters (models/legacy.py folds
    the biases themselves when the model loads); their entries are dropped and the rest renumbered."""
    expected, params = model.state_dict().keys(), dict(model.named_parameters())
    removed = {bias for bias, _ in cancelled_bias_keys(model_state) if bias not in expected}
    old_names = [k for k in model_state if k in params or k in removed]
    return drop_from_optimizer_state(optim_state, old_names, removed)


class CheckpointManager:
    """Keeps the newest `keep_last` step checkpoints plus best.pt in one folder."""

    def __init__(self, directory: str | Path, keep_last: int = 3):
        self.dir = Path(directory)
        self.keep_last = keep_last

    def step_files(self) -> list[Path]:
        """Step checkpoints, newest first."""
        if not self.dir.is_dir():
            return []
        files = [p for p in self.dir.iterdir() if _STEP_FILE.match(p.name)]
        return sorted(files, key=lambda p: int(_STEP_FILE.match(p.name).group(1)), reverse=True)

    def save(self, state: dict[str, Any], is_best: bool = False) -> Path:
        path = self.dir / f"step-{int(state['step']):08d}.pt"
        save_atomic(state, path)
        if is_best:
            save_atomic(state, self.dir / "best.pt")
        for old in self.step_files()[self.keep_last:]:
            old.unlink(missing_ok=True)
        return path

    def latest_valid(self, warn=print) -> tuple[Path, dict[str, Any]] | None:
        """The newest step checkpoint that loads; torn or corrupt ones are reported and passed over."""
        for path in self.step_files():
            try:
                return path, load(path)
            except UserError as exc:
                warn(f"warning: skipping unusable checkpoint: {exc}")
        return None


def resolve_resume(resume: str | None, manager: CheckpointManager, warn=print
                   ) -> tuple[Path, dict[str, Any]] | None:
    """`--resume auto`: newest valid checkpoint of the run (None if there is none yet);
    `--resume PATH`: that file, which must load."""
    if resume is None:
        return None
    if resume == "auto":
        return manager.latest_valid(warn)
    return Path(resume), load(resume)
