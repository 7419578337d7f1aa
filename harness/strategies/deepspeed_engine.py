"""DeepSpeed strategy: one DeepSpeed engine per model (G and D), ZeRO stage 0 or 1, on CPU (gloo) or CUDA.

`deepspeed` is imported lazily (first call of `_deepspeed()`), so the harness imports without it; the
config builder `deepspeed_config` is pure. docs/deepspeed.md has the evidence for every rule below.

Conventions
- The optimizer is always a torch optimizer handed to `deepspeed.initialize` (no "optimizer" config
  section), so DeepSpeed never builds FusedAdam/CPUAdam ops.
- precision "bf16"/"fp16" is DeepSpeed's `torch_autocast` section: parameters, gradients, optimizer
  state and gradient all-reduces stay fp32 (`lower_precision_safe_modules: []`), forward runs under
  torch.autocast like the DDP path; "fp16" adds DeepSpeed's GradScaler. DeepSpeed's native "bf16"/"fp16"
  sections are not used: they cast the module's parameters (not its BatchNorm buffers) to 16 bit, which
  fails on CPU in F.batch_norm ("expected scalar type BFloat16 but found Float"). fp16 runs with stage 0
  only (FP16_ZERO_REFUSAL).
- ZeRO stage 0 (plain data parallel) or 1 (optimizer state sharded); 2 and 3 are refused, see
  ZERO_STAGE_REFUSAL.
- G/D rule: a pass of D whose output G's gradient is taken through (harness/step.py: autograd.grad to D's
  input) calls D through `engine.module`, never the engine; any G loss through D keeps D frozen or out of it.
  A stage-0 D engine called as `engine(...)` inside G's loss raises ("Direct calls to tensor.backward()
  are not supported ... ZeRO stage 0"), and an unfrozen D keeps G-loss gradients that the next D step
  adds in silently (stages 0/1) or asserts on ("has already been reduced", stage 1 with overlap_comm).
- Gradient accumulation in the harness's step (`harness.step.train_step`): the caller divides each
  micro-batch loss by grad_accum, calls backward once per micro-batch and step once. `DeepSpeedModel`
  maps that onto DeepSpeed: the config says gradient_accumulation_steps=grad_accum, every backward
  sets the accumulation boundary explicitly (True on the last micro-batch only) and passes
  scale_wrt_gas=False. (With gradient_accumulation_steps=1 and no explicit boundary, stage 0 is still
  right but ZeRO-1 keeps only the last micro-batch's gradient.)
- State import/export uses the torch optimizer format over the client optimizer's parameter order, so a
  checkpoint is interchangeable with a plain/DDP one. Under ZeRO-1 the export is collective (all_reduce
  per tensor) and the import writes each rank's own shard: every rank must call both.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from data_pipelines.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")
ZERO_STAGES = (0, 1)
ZERO_STAGE_REFUSAL = (
    "ZeRO stage {stage} is refused for a G/D pair: G's loss runs through D, a second engine. Stage 2 "
    "partitions gradients in backward hooks and asserts ('parameter ... has already been reduced') as soon "
    "as D produces a gradient outside D's own backward; stage 3 partitions D's parameters, so outside D's "
    "forward hooks D's weights and state_dict are empty tensors (shape [0]) and every G step all-gathers "
    "D. Neither saves memory that matters for these models (<= 26M parameters), and the harness's "
    "checkpoint format is only verified for stages 0 and 1. Use distributed.zero_stage 0 or 1.")

FP16_ZERO_REFUSAL = (
    "precision fp16 with ZeRO stage 1 is refused: with DeepSpeed's torch_autocast GradScaler, ZeRO skips an "
    "overflowing step ('OVERFLOW! Skipping step') without lowering the scale, so every later step overflows "
    "too and the model stops training; and gradient clipping there uses the still-scaled norm. Use bf16, "
    "or fp16 with zero_stage 0.")

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
               "rmsprop": torch.optim.RMSprop}
# Element-wise optimizers: their update of one element needs only that element's state, so they are
# exact on ZeRO's flat fp32 partitions. DeepSpeed lists Adam/AdamW as tested and wants
# zero_allow_untested_optimizer for the others.
_ZERO_SAFE_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.RMSprop)
_ZERO_TESTED_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW)


def check_zero_stage(stage: int) -> int:
    if isinstance(stage, bool) or stage not in ZERO_STAGES:
        if isinstance(stage, int) and stage in (2, 3):
            raise UserError(ZERO_STAGE_REFUSAL.format(stage=stage))
        raise UserError(f"DeepSpeed zero_stage must be 0 or 1, got {stage!r}")
    return stage


def deepspeed_config(*, micro_batch: int, grad_accum: int = 1, world_size: int = 1, precision: str = "fp32",
                     zero_stage: int = 0, gradient_clipping: float = 0.0,
                     allow_untested_optimizer: bool = False) -> dict[str, Any]:
    """The DeepSpeed config dict for one engine (no deepspeed import).

    micro_batch: samples per rank per backward; the global batch is micro_batch * grad_accum * world_size.
    gradient_clipping: max global L2 norm of the averaged gradient, 0 = off (DeepSpeed's convention).
    """
    for name, value in (("micro_batch", micro_batch), ("grad_accum", grad_accum), ("world_size", world_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"DeepSpeed {name} must be a positive integer, got {value!r}")
    if precision not in PRECISIONS:
        raise UserError(f"DeepSpeed precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    check_zero_stage(zero_stage)
    if precision == "fp16" and zero_stage > 0:
        raise UserError(FP16_ZERO_REFUSAL)
    if not float(gradient_clipping) >= 0.0:  # also rejects NaN
        raise UserError(f"DeepSpeed gradient_clipping must be >= 0 (0 = off), got {gradient_clipping!r}")
    config: dict[str, Any] = {
        "train_batch_size": micro_batch * grad_accum * world_size,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": float(gradient_clipping),
        "zero_optimization": {"stage": zero_stage},
        "steps_per_print": 2**62,  # the harness logs; DeepSpeed's progress lines are off
        "wall_clock_breakdown": False,
    }
    if precision != "fp32":
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16" if precision == "bf16" else "float16",
                                    # [] = no parameter gets a 16-bit all-reduce dtype: gradients are
                                    # reduced in fp32 as under DDP (the default list is Linear/Conv).
                                    "lower_precision_safe_modules": []}
    if zero_stage > 0 and allow_untested_optimizer:
        config["zero_allow_untested_optimizer"] = True
    return config


# ------------------------------------------------------------------------------------ deepspeed runtime

def _deepspeed(device: torch.device | str | None = None):
    """Import deepspeed for this process with the accelerator of the run's device: DeepSpeed picks CUDA whenever
    it is available, so a CPU run on a GPU machine must say "cpu" before the import (DS_ACCELERATOR). The CPU
    accelerator uses gloo unless oneCCL is installed, and skips the JIT build of the shared-memory all-reduce op
    (used by DeepSpeed inference only; compiling it takes about a minute and needs a C++ compiler)."""
    wanted = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if wanted == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"
    try:
        import deepspeed
    except ImportError as exc:
        raise UserError("distributed.strategy=deepspeed needs the deepspeed package: "
                        "pip install 'satpose[deepspeed]'") from exc
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != wanted:
        raise UserError(f"DeepSpeed in this process already uses the {get_accelerator().device_name()} "
                        f"accelerator, but the run's device is {wanted}")
    if wanted == "cpu":
        with contextlib.suppress(AttributeError, TypeError):
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_distributed(device: torch.device | str = "cpu") -> None:
    """Make sure torch.distributed and DeepSpeed's comm layer are up (idempotent).

    Under torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set) the group is created from the
    environment; a single process started without a launcher gets a one-rank group on a free localhost
    port. gloo on CPU, nccl on CUDA. DeepSpeed also needs LOCAL_RANK, which is set to 0 for that case.
    """
    deepspeed = _deepspeed(device)
    import torch.distributed as dist

    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if not dist.is_initialized():
        if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
            dist.init_process_group(backend)
        elif int(os.environ.get("WORLD_SIZE", "1")) == 1:
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
                                    world_size=1)
        else:
            raise UserError("DeepSpeed needs RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for "
                            f"WORLD_SIZE={os.environ['WORLD_SIZE']}; start it with torchrun")
    if "LOCAL_RANK" not in os.environ:
        if dist.get_world_size() != 1:
            raise UserError("DeepSpeed needs LOCAL_RANK in the environment; start it with torchrun")
        os.environ["LOCAL_RANK"] = "0"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, dist_init_required=False)


# ------------------------------------------------------------------------------------------- engines

@dataclass
class EngineHandle:
    """A DeepSpeed engine plus what the state helpers need.

    param_groups: the client optimizer's parameter groups as given (before DeepSpeed flattens them);
    their concatenated order defines the integer keys of the torch-format optimizer state dict.
    """
    engine: Any
    param_groups: list[list[nn.Parameter]]
    precision: str
    zero_stage: int
    grad_accum: int
    config: dict[str, Any] = field(repr=False)

    @property
    def module(self) -> nn.Module:
        return self.engine.module

    @property
    def base_optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer that updates (ZeRO-1: this rank's flat fp32 partition of) the parameters."""
        opt = self.engine.optimizer
        return opt.optimizer if self.zero_stage > 0 else opt

    @property
    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """DeepSpeed's GradScaler for precision fp16 (stage 0: the engine's, stage 1: ZeRO's)."""
        if self.zero_stage == 0:
            return getattr(self.engine, "torch_autocast_z0_gradscaler", None)
        return getattr(self.engine.optimizer, "torch_autocast_gradscaler", None)


OptimizerSpec = Mapping[str, Any]  # {"type": "adam" | "adamw" | "sgd" | "rmsprop", **torch kwargs}


def make_optimizer(params, spec: OptimizerSpec) -> torch.optim.Optimizer:
    kwargs = dict(spec)
    name = str(kwargs.pop("type", "")).lower()
    if name not in _OPTIMIZERS:
        raise UserError(f"optimizer spec: type must be one of {', '.join(_OPTIMIZERS)}, got {spec.get('type')!r}")
    try:
        return _OPTIMIZERS[name](params, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"optimizer spec {dict(spec)}: {exc}") from None


def build_engine(model: nn.Module, optimizer: torch.optim.Optimizer | OptimizerSpec, *, micro_batch: int,
                 grad_accum: int = 1, world_size: int = 1, precision: str = "fp32", zero_stage: int = 0,
                 gradient_clipping: float = 0.0,
                 lr_scheduler: Any | Callable[[torch.optim.Optimizer], Any] | None = None) -> EngineHandle:
    """Wrap `model` (already on its device) in a DeepSpeed engine.

    optimizer: a torch optimizer over (a subset of) model's parameters, or a spec for one over all of them.
    lr_scheduler: a torch scheduler on that optimizer, or a callable optimizer -> scheduler, or None;
    the engine steps it once per optimizer step. Calls `ensure_distributed` first; `world_size` must be
    the process group's size.
    """
    check_zero_stage(zero_stage)
    if not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = make_optimizer(model.parameters(), optimizer)
    model_params = {id(p) for p in model.parameters()}
    groups = [list(g["params"]) for g in optimizer.param_groups if len(g["params"]) > 0]
    stray = [i for i, g in enumerate(groups) for p in g if id(p) not in model_params]
    if stray:
        raise UserError(f"optimizer group(s) {sorted(set(stray))} hold tensors that are not parameters of "
                        f"{type(model).__name__}")
    frozen = [i for i, g in enumerate(groups) for p in g if not p.requires_grad]
    if frozen and zero_stage > 0:
        raise UserError("ZeRO drops parameters with requires_grad=False at build time from its partitions; "
                        "unfreeze them before build_engine (freeze D only around G's pass)")
    untested = False
    if zero_stage > 0 and not isinstance(optimizer, _ZERO_TESTED_OPTIMIZERS):
        if not isinstance(optimizer, _ZERO_SAFE_OPTIMIZERS):
            raise UserError(f"{type(optimizer).__name__} is not element-wise, so it is not exact on ZeRO's "
                            "flat partitions; use adam, adamw, sgd or rmsprop, or zero_stage 0")
        untested = True
    config = deepspeed_config(micro_batch=micro_batch, grad_accum=grad_accum, world_size=world_size,
                              precision=precision, zero_stage=zero_stage, gradient_clipping=gradient_clipping,
                              allow_untested_optimizer=untested)
    device = next(model.parameters()).device
    ensure_distributed(device)
    import torch.distributed as dist

    if dist.get_world_size() != world_size:
        raise UserError(f"DeepSpeed world_size={world_size} but the process group has "
                        f"{dist.get_world_size()} ranks")
    deepspeed = _deepspeed(device)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                           config=config, dist_init_required=False)
    expected = "DeepSpeedZeroOptimizer" if zero_stage > 0 else type(optimizer).__name__
    if type(engine.optimizer).__name__ != expected:  # the state helpers below know these two only
        raise RuntimeError(f"DeepSpeed {deepspeed.__version__} wrapped the optimizer as "
                           f"{type(engine.optimizer).__name__}, expected {expected}")
    return EngineHandle(engine, groups, precision, zero_stage, grad_accum, config)
