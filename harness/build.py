"""Builders: G and D from the config, placed on the run's device, and their training handles (optimizer,
GradScaler, DDP or DeepSpeed wrap). The trainer, `eval`, `predict`, `model-info`, `bench` and the sweeps build
models here and nowhere else."""

from __future__ import annotations

import torch
from torch import nn

from data_pipelines.errors import UserError
from harness.compiling import compile_model
from harness.config import Config
from harness.distributed import Runtime
from harness.graphed_step import refusal as graph_refusal
from harness.optim import build_optimizer
from harness.precision import param_dtype
from harness.step import Model
from models.discriminator import PoseDiscriminator
from models.hourglass import StackedHourglass
from models.sync_batchnorm import CrossRankBatchNorm2d, convert_sync_batchnorm


def build_generator(cfg: Config, num_joints: int) -> StackedHourglass:
    m = cfg.model
    return StackedHourglass(num_stacks=m.stacks, num_joints=num_joints, features=m.features,
                            num_residual=m.residuals, depth=m.depth)


def build_discriminator(cfg: Config, num_joints: int) -> PoseDiscriminator | None:
    """D, or None for the plain hourglass (objective `none`)."""
    if cfg.adversarial.objective == "none":
        return None
    c = cfg.discriminator
    return PoseDiscriminator(num_joints=num_joints, num_stacks=c.stacks, features=c.features,
                             num_residual=c.residuals, conditional=c.conditional, depth=cfg.model.depth)


def build_models(cfg: Config, num_joints: int, rt: Runtime) -> tuple[nn.Module, nn.Module | None]:
    """G and D with identical initial weights on every rank (seeded by train.seed), cross-rank BatchNorm when
    asked for, on the run's device in the precision's parameter dtype."""
    torch.manual_seed(cfg.train.seed)
    g, d = build_generator(cfg, num_joints), build_discriminator(cfg, num_joints)
    if cfg.distributed.sync_batchnorm and rt.distributed:
        g = convert_sync_batchnorm(g, rt.device)
        d = convert_sync_batchnorm(d, rt.device) if d is not None else None
    t = cfg.train
    for m in (g, d):
        if m is None:
            continue
        m.to(rt.device, param_dtype(t.precision))
        if t.channels_last:
            m.to(memory_format=torch.channels_last)
        if t.compile:  # in place: DDP and DeepSpeed run the compiled forward
            compile_model(m, t.compile_scope, t.compile_backend)
    return g, d


def ddp_keeps_buffer_versions() -> bool:
    """Whether this torch's DDP broadcasts buffers without bumping their autograd version counters
    (pytorch/pytorch#175851, Feb 2026; present in torch 2.13). Without it, a module with plain BatchNorm
    that DDP runs twice before one backward (D on real and on fake) fails in cuDNN's BatchNorm backward with
    "modified by an inplace operation" on every rank but 0 (pytorch/pytorch#175024)."""
    import inspect

    return "_unsafe_preserve_version_counter" in inspect.getsource(nn.parallel.DistributedDataParallel._sync_buffers)


def _ddp(module: nn.Module, rt: Runtime) -> nn.Module:
    """DDP. Synchronised BatchNorm (torch's SyncBatchNorm, CrossRankBatchNorm2d) gives every rank the same
    running statistics, so no buffer broadcast (three per micro-batch for D). Plain BatchNorm: rank 0's
    buffers are broadcast at every forward (DDP's default), which needs a torch with #175851 on CUDA."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    synced = bool(bns) and all(isinstance(m, (nn.SyncBatchNorm, CrossRankBatchNorm2d)) for m in bns)
    if bns and not synced and rt.device.type == "cuda" and not ddp_keeps_buffer_versions():
        raise UserError(f"torch {torch.__version__}: DDP's buffer broadcast breaks plain BatchNorm when D runs "
                        f"twice per step (pytorch/pytorch#175024, fixed by #175851 as in torch 2.13): install "
                        f"torch>=2.13 (scripts/setup.sh) or set distributed.sync_batchnorm=true")
    return nn.parallel.DistributedDataParallel(module, device_ids=[rt.device.index] if rt.device.type == "cuda"
                                               else None, forward_sync_buffers=not synced)


def wrap_models(cfg: Config, rt: Runtime, g: nn.Module, d: nn.Module | None,
                micro_batch: int) -> tuple[Model, Model | None]:
    """Training handles for G and D under the configured strategy: plain modules (one process), DDP, or one
    DeepSpeed engine per model; each with its optimizer and, for fp16, its own GradScaler."""
    t = cfg.train
    if cfg.distributed.strategy == "deepspeed":
        from harness.strategies.deepspeed_model import wrap_pair

        return wrap_pair(cfg, rt, micro_batch, g, d)

    capturable = t.cuda_graphs and graph_refusal(cfg, rt) is None  # the step will be one CUDA graph

    def handle(module: nn.Module, opt_cfg) -> Model:
        scaler = torch.amp.GradScaler("cuda") if t.precision == "fp16" else None
        wrapped = _ddp(module, rt) if rt.distributed else module
        return Model(wrapped, build_optimizer(module.parameters(), opt_cfg, t.fused_optimizer, capturable), scaler)

    return handle(g, t.generator), (handle(d, t.discriminator) if d is not None else None)
