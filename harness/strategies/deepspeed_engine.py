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
- G/D rule: in G's pass call D through `engine.module` with D's parameters frozen (requires_grad False).
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
from harness.step import Model

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

def _deepspeed():
    """Import deepspeed for this process: CPU accelerator when CUDA is absent (gloo unless oneCCL is
    installed) and no JIT build of the shared-memory all-reduce op (used by DeepSpeed inference only;
    compiling it takes about a minute and needs a C++ compiler)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError as exc:
        raise UserError("distributed.strategy=deepspeed needs the deepspeed package: "
                        "pip install 'satpose[deepspeed]'") from exc
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
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
    deepspeed = _deepspeed()
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
    deepspeed = _deepspeed()
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                           config=config, dist_init_required=False)
    expected = "DeepSpeedZeroOptimizer" if zero_stage > 0 else type(optimizer).__name__
    if type(engine.optimizer).__name__ != expected:  # the state helpers below know these two only
        raise RuntimeError(f"DeepSpeed {deepspeed.__version__} wrapped the optimizer as "
                           f"{type(engine.optimizer).__name__}, expected {expected}")
    return EngineHandle(engine, groups, precision, zero_stage, grad_accum, config)


# --------------------------------------------------------------------------------------- state dicts

def _cpu_copy(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cpu_copy(v) for v in value)
    return value


def _group_hyper(group: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _cpu_copy(v) for k, v in group.items() if k != "params"}


def _zero_partitions(handle: EngineHandle):
    """(flat fp32 partition, the group's parameters as ZeRO holds them) for each group, in order."""
    zopt = handle.engine.optimizer
    flats = zopt.single_partition_of_fp32_groups
    if len(flats) != len(handle.param_groups):
        raise RuntimeError(f"ZeRO has {len(flats)} parameter groups, the client optimizer had "
                           f"{len(handle.param_groups)}")
    for i, (flat, lp_params) in enumerate(zip(flats, zopt.bit16_groups)):
        if (handle.base_optimizer.param_groups[i]["params"][0] is not flat
                or [id(p) for p in lp_params] != [id(p) for p in handle.param_groups[i]]):
            raise RuntimeError(f"ZeRO group {i} does not match the client optimizer's group (DeepSpeed "
                               f"{_deepspeed().__version__} changed its layout)")
    return list(zip(flats, zopt.bit16_groups))


def export_optimizer_state(handle: EngineHandle) -> dict[str, Any]:
    """The optimizer state in torch's format, full (not sharded), tensors copied to CPU.

    Keys of "state" count the client optimizer's parameters group by group, exactly as
    `torch.optim.Optimizer.state_dict()` does, so a DDP run with the same optimizer can load it.
    ZeRO-1: collective (every rank calls it; each gets the full state). ZeRO keeps one scalar state
    (e.g. Adam's step) per group; it is repeated for every parameter of the group.
    """
    if handle.zero_stage == 0:
        return _cpu_copy(handle.base_optimizer.state_dict())
    from deepspeed.utils import safe_get_full_optimizer_state

    base = handle.base_optimizer
    state: dict[int, dict[str, Any]] = {}
    groups = []
    index = 0
    for (flat, _), params, group in zip(_zero_partitions(handle), handle.param_groups, base.param_groups):
        flat_state = base.state.get(flat, {})
        tensor_keys = sorted(k for k, v in flat_state.items() if torch.is_tensor(v) and v.shape == flat.shape)
        scalars = {k: v for k, v in flat_state.items() if k not in tensor_keys}
        ids = []
        for p in params:
            ids.append(index)
            if flat_state:
                entry = _cpu_copy(scalars)
                for key in tensor_keys:  # all_reduce of the fragments: same call order on every rank
                    entry[key] = safe_get_full_optimizer_state(p, key).detach().to("cpu", copy=True)
                state[index] = entry
            index += 1
        groups.append({**_group_hyper(group), "params": ids})
    return {"state": state, "param_groups": groups}


def _sync_master_weights(handle: EngineHandle) -> None:
    """ZeRO-1 keeps its own fp32 copy of this rank's partition: refresh it from the module's parameters
    (after loading a model state dict into the module)."""
    if handle.zero_stage == 0:
        return
    from deepspeed.utils import safe_set_full_fp32_param

    for params in handle.param_groups:
        for p in params:
            safe_set_full_fp32_param(p, p.detach().float())


def import_optimizer_state(handle: EngineHandle, state_dict: Mapping[str, Any]) -> None:
    """Load a torch-format optimizer state dict (from `export_optimizer_state`, a DDP run or a plain
    torch optimizer over the same parameter groups). ZeRO-1: every rank calls it with the full dict."""
    saved_groups = state_dict.get("param_groups")
    if not isinstance(saved_groups, list) or "state" not in state_dict:
        raise UserError("optimizer state dict needs 'state' and 'param_groups'")
    sizes = [len(g) for g in handle.param_groups]
    saved_sizes = [len(g.get("params", ())) for g in saved_groups]
    if sizes != saved_sizes:
        raise UserError(f"optimizer state has groups of {saved_sizes} parameters, this model's optimizer "
                        f"has {sizes}")
    if handle.zero_stage == 0:
        handle.base_optimizer.load_state_dict(dict(state_dict))
        return
    from deepspeed.utils import lazy_init_hp_params_optimizer_state, safe_set_full_optimizer_state

    zopt, base = handle.engine.optimizer, handle.base_optimizer
    saved_state = state_dict["state"]
    writes = []
    for gi, ((flat, lp_params), params, saved) in enumerate(
            zip(_zero_partitions(handle), handle.param_groups, saved_groups)):
        entries = [saved_state.get(i) for i in saved["params"]]
        base.param_groups[gi].update({k: v for k, v in saved.items() if k != "params"})
        if all(e is None for e in entries):
            base.state.pop(flat, None)  # a fresh optimizer: DeepSpeed relinks after its first step
            zopt._hp_optimizer_states_linked = False
            continue
        if any(e is None for e in entries):
            raise UserError(f"optimizer group {gi}: some parameters have state and some do not; ZeRO keeps "
                            "one state for the whole group (load with zero_stage 0)")
        keys = set(entries[0])
        tensor_keys = {k for k in keys if torch.is_tensor(entries[0][k]) and
                       entries[0][k].shape == params[0].shape and entries[0][k].dim() > 0}
        for i, (p, e) in enumerate(zip(params, entries)):
            if set(e) != keys:
                raise UserError(f"optimizer group {gi}: parameter {i} has state keys {sorted(e)}, "
                                f"expected {sorted(keys)}")
            for k in keys - tensor_keys:
                if not torch.equal(torch.as_tensor(e[k]), torch.as_tensor(entries[0][k])):
                    raise UserError(f"optimizer group {gi}: '{k}' differs between parameters; ZeRO keeps one "
                                    "per group (load with zero_stage 0)")
            for k in tensor_keys:
                if tuple(e[k].shape) != tuple(p.shape):
                    raise UserError(f"optimizer group {gi}, parameter {i}: '{k}' has shape "
                                    f"{tuple(e[k].shape)}, the parameter {tuple(p.shape)}")
                writes.append((p, k, e[k]))
        flat_state = base.state[flat]
        for k in tensor_keys:
            if k not in flat_state or flat_state[k].shape != flat.shape:
                flat_state[k] = torch.zeros_like(flat)
        for k in keys - tensor_keys:
            value = entries[0][k]
            if torch.is_tensor(value):
                on_device = base.param_groups[gi].get("capturable") or base.param_groups[gi].get("fused")
                value = value.detach().to(flat.device if on_device else "cpu", copy=True)
            flat_state[k] = value
        lazy_init_hp_params_optimizer_state(lp_params, flat, base.state)
    if all(flat in base.state for flat, _ in _zero_partitions(handle)):
        zopt._hp_optimizer_states_linked = True
    for p, key, value in writes:
        safe_set_full_optimizer_state(p, value.to(p.device, torch.float32), key)


def export_state(handle: EngineHandle) -> dict[str, Any]:
    """{"model", "optimizer", "lr_scheduler", "grad_scaler"}: plain state dicts (tensors on CPU), loadable
    with torch.load(weights_only=True). ZeRO-1: collective; every rank gets the full state."""
    scheduler, scaler = handle.engine.lr_scheduler, handle.grad_scaler
    return {"model": _cpu_copy(handle.module.state_dict()),
            "optimizer": export_optimizer_state(handle),
            "lr_scheduler": scheduler.state_dict() if scheduler is not None else None,
            "grad_scaler": scaler.state_dict() if scaler is not None else None}


def import_state(handle: EngineHandle, state: Mapping[str, Any]) -> None:
    """Inverse of `export_state` (every rank calls it with the same full state)."""
    handle.module.load_state_dict(state["model"])
    _sync_master_weights(handle)
    import_optimizer_state(handle, state["optimizer"])
    if state.get("lr_scheduler") is not None:
        if handle.engine.lr_scheduler is None:
            raise UserError("state has an lr_scheduler, this engine has none")
        handle.engine.lr_scheduler.load_state_dict(state["lr_scheduler"])
    scaler = handle.grad_scaler
    if scaler is not None and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])


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
        _sync_master_weights(self.handle)
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
