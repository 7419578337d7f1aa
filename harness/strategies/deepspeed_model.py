"""The DeepSpeed strategy as the training step sees it: `DeepSpeedModel` (a harness.step.Model driven by an
engine) and `wrap_pair`, which harness.build.wrap_models calls for distributed.strategy=deepspeed."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from harness.step import Model
from harness.strategies.deepspeed_engine import EngineHandle, build_engine
from harness.strategies.deepspeed_state import export_optimizer_state, import_optimizer_state, sync_master_weights

# ------------------------------------------------------------------------- harness.step integration

class EngineOptimizer:
    """What the trainer sees as `Model.optimizer`: the live param_groups (lr is set there) and torch-format
    state_dict/load_state_dict. load_state_dict also refreshes ZeRO's fp32 master copy from the module,
    which the trainer loads first. Both are collective under ZeRO-1."""

    def __init__(self, handle: EngineHandle):
        self.handle = handle

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.handle.base_optimizer.param_groups

    def state_dict(self) -> dict[str, Any]:
        sd = export_optimizer_state(self.handle)
        scaler = self.handle.grad_scaler
        if scaler is not None:
            sd["grad_scaler"] = scaler.state_dict()
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        sync_master_weights(self.handle)
        import_optimizer_state(self.handle, state_dict)
        scaler = self.handle.grad_scaler
        if scaler is not None and state_dict.get("grad_scaler"):
            scaler.load_state_dict(state_dict["grad_scaler"])


class DeepSpeedModel(Model):
    """`harness.step.Model` driven by a DeepSpeed engine: forward through `module` (the engine), one
    `backward(loss / grad_accum)` per micro-batch, then one `step()`."""

    def __init__(self, handle: EngineHandle):
        super().__init__(module=handle.engine, optimizer=EngineOptimizer(handle), scaler=None,
                         engine=handle.engine)
        self.handle = handle
        self._micro = 0

    def backward(self, loss: torch.Tensor) -> None:
        n = self.handle.grad_accum
        if self._micro == n:
            raise RuntimeError(f"backward called {n + 1} times before step() with grad_accum={n}")
        self._micro += 1
        self.engine.set_gradient_accumulation_boundary(self._micro == n)
        self.engine.backward(loss, scale_wrt_gas=False)  # the caller already divided by grad_accum

    def step(self) -> None:
        n = self.handle.grad_accum
        if self._micro != n:
            raise RuntimeError(f"step() after {self._micro} backward calls; grad_accum={n} expects {n}")
        self.engine.step()
        self._micro = 0

    def no_sync(self, skip: bool):
        return contextlib.nullcontext()  # backward() sets DeepSpeed's accumulation boundary itself


def wrap_pair(cfg, rt, micro_batch: int, g: nn.Module,
              d: nn.Module | None) -> tuple[DeepSpeedModel, DeepSpeedModel | None]:
    """The DeepSpeed strategy of harness.build.wrap_models: an engine for G and one for D, with the run's
    optimizers (harness.optim)."""
    from harness.optim import build_optimizer

    common = dict(micro_batch=micro_batch, grad_accum=cfg.train.grad_accum, world_size=rt.world_size,
                  precision=cfg.train.precision, zero_stage=cfg.distributed.zero_stage)
    t = cfg.train
    gm = DeepSpeedModel(build_engine(g, build_optimizer(g.parameters(), t.generator, t.fused_optimizer), **common))
    dm = (DeepSpeedModel(build_engine(d, build_optimizer(d.parameters(), t.discriminator, t.fused_optimizer),
                                      **common)) if d is not None else None)
    return gm, dm
