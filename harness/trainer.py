"""The training loop: data -> G/D step -> validation -> checkpoints, on one process or many.

Resumability is by construction: the sample order of an epoch is a function of (seed, epoch), every
sample's augmentation of (seed, epoch, index), the learning rate of the step number, and everything else
(weights, optimizer moments, scalers, BatchNorm buffers, k_t, RNG) is in the checkpoint. So a run that is
stopped and resumed on CPU ends with the same weights as one that was not, bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_pipelines.errors import UserError
from harness import checkpoint as ckpt
from harness import metrics
from harness.config import Config
from harness.data import RunData
from harness.distributed import Runtime, init_runtime
from harness.evaluate import PROTOCOL_OF, predict_dataset, score_records
from harness.optim import build_optimizer, lr_at
from harness.precision import param_dtype
from harness.runlog import RunLog
from harness.step import Model, StepSettings, train_step, unwrap
from models import losses
from models.discriminator import PoseDiscriminator
from models.hourglass import StackedHourglass
from models.sync_batchnorm import convert_sync_batchnorm

# Exit code of a run that checkpointed on a preemption signal and wants to be requeued (slurm/train.sh).
EXIT_PREEMPTED = 85


class Preempted(Exception):
    """Raised after the preemption checkpoint is written; the CLI exits with EXIT_PREEMPTED."""


def build_generator(cfg: Config, num_joints: int) -> StackedHourglass:
    return StackedHourglass(num_stacks=cfg.model.stacks, num_joints=num_joints, features=cfg.model.features,
                            num_residual=cfg.model.residuals)


def build_discriminator(cfg: Config, num_joints: int) -> PoseDiscriminator | None:
    if cfg.adversarial.objective == "none":
        return None
    c = cfg.discriminator
    return PoseDiscriminator(num_joints=num_joints, num_stacks=c.stacks, features=c.features,
                             num_residual=c.residuals, conditional=c.conditional)


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, resume: str | None = None,
                 interactive: bool | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.rt: Runtime = init_runtime(cfg.train.device, cfg.distributed.backend)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        t = cfg.train
        if t.precision == "fp16" and self.rt.device.type != "cuda":
            raise UserError("train.precision=fp16 needs a GPU (GradScaler); use bf16 or fp32 on CPU")
        per_step = self.rt.world_size * t.grad_accum
        if t.batch_size % per_step:
            raise UserError(f"train.batch_size ({t.batch_size}) must be divisible by world size x grad_accum "
                            f"({self.rt.world_size} x {t.grad_accum})")
        self.micro_batch = t.batch_size // per_step
        self.log = RunLog(self.run_dir, enabled=self.rt.is_main, total_steps=t.max_steps,
                          interactive=interactive)
        self._build_data()
        self._build_models()
        self.ckpts = ckpt.CheckpointManager(self.run_dir / "checkpoints", t.keep_last)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best: dict[str, Any] = {"value": None, "step": None}
        self._validated_step = -1
        self.skipped_files: set[str] = set()
        self._stop_signal: str | None = None
        resumed = ckpt.resolve_resume(resume, self.ckpts, warn=self.log.info)
        if resumed is not None:
            self._load_state(resumed[1])
            self.log.info(f"resumed from {resumed[0]} at step {self.step}")

    # -- construction ------------------------------------------------------------------------------
    def _build_data(self) -> None:
        self.data = RunData(self.cfg, self.rt.rank, self.rt.world_size)
        self.skeleton = self.data.skeleton
        self.train_records, self.val_records = self.data.train_records, self.data.val_records
        self.train_set, self.val_set = self.data.train_set, self.data.val_set
        self.steps_per_epoch = self.data.steps_per_epoch

    def _loader(self, dataset, epoch: int, train: bool, start_batch: int = 0):
        if train:
            return self.data.train_loader(self.micro_batch, epoch, start_batch)
        return self.data.val_loader(max(self.micro_batch, 8))

    def _build_models(self) -> None:
        cfg, dev = self.cfg, self.rt.device
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        J = self.skeleton.num_joints
        g, d = build_generator(cfg, J), build_discriminator(cfg, J)
        if cfg.distributed.sync_batchnorm and self.rt.distributed:
            g = convert_sync_batchnorm(g, self.rt.device)
            d = convert_sync_batchnorm(d, self.rt.device) if d is not None else None
        dtype = param_dtype(cfg.train.precision)
        g.to(dev, dtype)
        if d is not None:
            d.to(dev, dtype)
        self.generator, self.discriminator = g, d  # unwrapped modules: the checkpointed state
        scaler = (lambda: torch.amp.GradScaler("cuda")) if cfg.train.precision == "fp16" else (lambda: None)
        if cfg.distributed.strategy == "deepspeed":
            from harness.strategies.deepspeed_engine import wrap_pair
            self.g, self.d = wrap_pair(self, g, d)
        else:
            wrap = self._ddp if self.rt.distributed else (lambda m: m)
            self.g = Model(wrap(g), build_optimizer(g.parameters(), cfg.train.generator), scaler())
            self.d = (Model(wrap(d), build_optimizer(d.parameters(), cfg.train.discriminator), scaler())
                      if d is not None else None)
        a = cfg.adversarial
        self.balance = (losses.BEGANBalance(k=a.sat.k0, gamma=a.sat.gamma, lambda_k=a.sat.lambda_k)
                        if a.objective == "sat" else None)
        self.settings = StepSettings(objective=a.objective, precision=cfg.train.precision,
                                     lambda_g=a.sat.lambda_g, alpha=a.cgan.alpha, delta=a.cgan.delta,
                                     distance=a.cgan.distance, torso=self.skeleton.torso)

    def _ddp(self, module: nn.Module) -> nn.Module:
        dev = self.rt.device
        # Buffers (BatchNorm running stats) are broadcast from rank 0 at every forward: DDP's default.
        return nn.parallel.DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None)

    # -- state -------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        def sd(x):
            return x.state_dict() if x is not None else {}
        return {
            "generator": self.generator.state_dict(),
            "discriminator": sd(self.discriminator),
            "optim_g": sd(self.g.optimizer),
            "optim_d": sd(self.d.optimizer if self.d else None),
            "scaler_g": sd(self.g.scaler),
            "scaler_d": sd(self.d.scaler if self.d else None),
            "balance": self.balance.state_dict() if self.balance else {},
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "best": dict(self.best),
            "config": self.cfg.to_dict(),
        }

    def _load_state(self, s: dict[str, Any]) -> None:
        try:
            self.generator.load_state_dict(s["generator"])
            if self.discriminator is not None:
                self.discriminator.load_state_dict(s["discriminator"])
            self.g.optimizer.load_state_dict(s["optim_g"])
            if self.d is not None:
                self.d.optimizer.load_state_dict(s["optim_d"])
            for model, key in ((self.g, "scaler_g"), (self.d, "scaler_d")):
                if model is not None and model.scaler is not None and s.get(key):
                    model.scaler.load_state_dict(s[key])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"checkpoint does not fit this config (model size/objective changed?): {exc}") \
                from None
        if self.balance is not None and s.get("balance"):
            self.balance.load_state_dict(s["balance"])
        self.step = int(s["step"])
        self.epoch, self.batch_in_epoch = int(s["epoch"]), int(s.get("batch_in_epoch", 0))
        self.best = dict(s.get("best") or self.best)
        torch.set_rng_state(s["rng"]["torch"])
        if s["rng"].get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["rng"]["cuda"])

    def save(self, is_best: bool = False) -> Path | None:
        state = self.state()  # on every rank: gathering ZeRO-1's sharded optimizer state is collective
        path = self.ckpts.save(state, is_best) if self.rt.is_main else None
        self.rt.barrier()
        return path

    # -- signals -----------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            self._stop_signal = signal.Signals(signum).name
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, handler)

    # -- loop --------------------------------------------------------------------------------------
    def validate(self) -> Any:
        c = self.cfg
        loader = self._loader(self.val_set, epoch=0, train=False)
        preds = predict_dataset(unwrap(self.g.module), loader, self.rt.device, self.skeleton,
                                flip_test=c.train.flip_test, precision=c.train.precision)
        return score_records(self.val_records, preds, c.data.name) if self.rt.is_main else None

    def _after_validation(self, result) -> None:
        self._validated_step = self.step
        value = result.mean if result is not None else None
        is_best = False
        if self.rt.is_main:
            is_best = self.best["value"] is None or value > self.best["value"]
            if is_best:
                self.best = {"value": float(value), "step": self.step}
            self.log.record("val", step=self.step, metric=f"{result.metric}@{result.threshold:g}",
                            value=value, auc=result.auc, per_joint=result.to_json()["per_joint"])
            self.log.info(f"val step={self.step} {result.metric}@{result.threshold:g}={value:.2f} "
                          f"AUC={result.auc:.2f} best={self.best['value']:.2f}@{self.best['step']}")
        is_best = self.rt.any(is_best)
        self.save(is_best)

    def _set_lr(self) -> None:
        t = self.cfg.train
        for model, c in ((self.g, t.generator), (self.d, t.discriminator)):
            if model is not None:
                for group in model.optimizer.param_groups:
                    group["lr"] = lr_at(c, self.step, self.steps_per_epoch)

    def _train_step(self, micro: list[dict]) -> dict[str, float]:
        t0 = time.time()
        self._set_lr()
        values = train_step(micro, self.g, self.d, self.settings, self.balance, self.rt.device)
        names = sorted(values)
        reduced = self.rt.mean(torch.tensor([values[k] for k in names], dtype=torch.float64,
                                            device=self.rt.device)).tolist()
        values = dict(zip(names, reduced))
        if self.balance is not None:  # k_t from rank-averaged losses: identical on every rank
            values["convergence"] = self.balance.convergence(values["l_real"], values["l_fake"])
            values["k"] = self.balance.update(values["l_real"], values["l_fake"])
        self.step += 1
        n_img = sum(int(b["num_samples"]) for b in micro) * self.rt.world_size
        self._images += n_img
        self._train_time += time.time() - t0
        values["lr_g"] = self.g.optimizer.param_groups[0]["lr"]
        values["images_per_s"] = n_img / max(time.time() - t0, 1e-9)
        if not all(math.isfinite(v) for v in values.values()):
            self.save()
            raise UserError(f"non-finite loss at step {self.step}: {values}; last state saved in {self.ckpts.dir}")
        return values

    def fit(self) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        self._install_signal_handlers()
        self.log.record("start", config=cfg.to_dict(), world_size=self.rt.world_size,
                        device=str(self.rt.device), resumed_step=self.step)
        self.log.info(f"training {cfg.adversarial.objective} G={cfg.model.stacks}x{cfg.model.features} on "
                      f"{cfg.data.name} ({len(self.train_set)} train / {len(self.val_set)} val), "
                      f"{self.rt.world_size} process(es) on {self.rt.device}, "
                      f"{self.steps_per_epoch} steps/epoch")
        self._images, self._train_time, last_result = 0, 0.0, None
        first_step = self.step
        t_start = time.time()
        self.log.start(self.step)
        try:
            while self.step < t.max_steps:
                loader = self._loader(self.train_set, self.epoch, True, start_batch=self.batch_in_epoch)
                micro: list[dict] = []
                epoch_done = True
                for batch in loader:
                    micro.append(batch)
                    if len(micro) < t.grad_accum:
                        continue
                    if self._skip_empty_step(micro):
                        micro = []
                        self.batch_in_epoch = batch["batch_index"] + 1
                        continue
                    values = self._train_step(micro)
                    micro = []
                    self.batch_in_epoch = batch["batch_index"] + 1
                    show = self.step % t.log_every == 0 or self.step == 1
                    if show:
                        self.log.record("train", step=self.step, epoch=self.epoch, **values)
                    self.log.step(self.step, values, show)
                    last_result = self._checkpoint_if_due(last_result)
                    if self.step >= t.max_steps:
                        epoch_done = self.batch_in_epoch >= loader.sampler.batches_per_epoch
                        break
                self.skipped_files.update(loader.skipped_files)
                if epoch_done:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    if t.val_every is None and self.step < t.max_steps:
                        last_result = self.validate()
                        self._after_validation(last_result)
        finally:
            self.log.stop()
        if self._validated_step != self.step:  # (rank-independent: last_result is None off rank 0)
            last_result = self.validate()
            self._after_validation(last_result)
        self._steps_this_run = self.step - first_step
        return self._summary(last_result, time.time() - t_start)

    def _skip_empty_step(self, micro: list[dict]) -> bool:
        """Data-parallel only: True on every rank when some rank's micro-batch held only bad samples. That
        rank cannot run the step and its peers would wait for it in the gradient all-reduce until the
        process-group timeout, so all ranks skip this step together (the bad files are logged and counted
        by the loader; the step counter does not advance)."""
        if not self.rt.distributed:
            return False
        if not self.rt.any(any(int(b["num_samples"]) == 0 for b in micro)):
            return False
        self.log.info(f"epoch {self.epoch} batch {micro[-1]['batch_index']}: a rank's micro-batch held only "
                      f"unreadable samples; every rank skips this step")
        return True

    def _checkpoint_if_due(self, last_result):
        t = self.cfg.train
        if (t.val_every and self.step % t.val_every == 0) or self.step == t.max_steps:
            last_result = self.validate()
            self._after_validation(last_result)
        elif t.checkpoint_every and self.step % t.checkpoint_every == 0:
            self.save()
        if self.rt.any(self._stop_signal is not None):
            self.save()
            self.log.info(f"preemption signal ({self._stop_signal or 'on another rank'}): checkpoint at "
                          f"step {self.step} written, exiting {EXIT_PREEMPTED}")
            raise Preempted()
        return last_result

    def _summary(self, result, wall: float) -> dict[str, Any]:
        skipped = sorted(self.skipped_files)
        if self.rt.distributed:
            parts: list = [None] * self.rt.world_size
            torch.distributed.all_gather_object(parts, skipped)
            skipped = sorted({f for part in parts for f in part})
        if not self.rt.is_main:
            return {}
        j = result.to_json()
        summary = {
            "metric": f"{result.metric}@{result.threshold:g}",
            "value": result.mean,
            "auc": result.auc,
            "per_joint": j["per_joint"],
            "groups": j["groups"],
            "best": self.best,
            "steps": self.step,
            "steps_this_run": self._steps_this_run,
            "wall_s": round(wall, 2),
            "images_per_s": round(self._images / self._train_time, 2) if self._train_time else None,
            "objective": self.cfg.adversarial.objective,
            "dataset": self.cfg.data.name,
            "protocol": PROTOCOL_OF.get(self.cfg.data.name, "lsp"),
            "world_size": self.rt.world_size,
            "device": str(self.rt.device),
            "skipped_samples": skipped,
        }
        path = self.run_dir / "summary.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, path)
        self.log.record("summary", **summary)
        self.log.table(metrics.render(result))
        return summary
