"""The training loop: data -> G/D step -> (validation, checkpoint, preemption: each decides if it is due).

Resumability is by construction: the sample order of an epoch is a function of (seed, epoch), every
sample's augmentation of (seed, epoch, index), the learning rate of the step number, and everything else
(weights, optimizer moments, scalers, BatchNorm buffers, k_t, RNG) is in the checkpoint. So a run that is
stopped and resumed on CPU ends with the same weights as one that was not, bit for bit.

The step keeps its values on the device; the loop reads them back every `train.log_every` steps (one
transfer), which is also when a non-finite loss is noticed and reported with the step where it first appeared.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from data_pipelines.errors import UserError
from harness import checkpoint as ckpt
from harness.build import build_models, wrap_models
from harness.config import Config
from harness.data import RunData
from harness.distributed import Runtime, device_notes, fix_threads, init_runtime
from harness.evaluate import PROTOCOL_OF
from harness.files import write_json
from harness.graphed_step import WARMUP_STEPS, graphed_step
from harness.objectives import build_objective
from harness.optim import lr_at, set_lr
from harness.precision import set_numerics
from harness.preemption import EXIT_PREEMPTED, Preempted, Preemption
from harness.sinks import Sinks, build_sinks
from harness.step import synchronized_step, unwrap
from harness.validator import Validator

__all__ = ["EXIT_PREEMPTED", "Preempted", "Trainer"]


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, resume: str | None = None,
                 interactive: bool | None = None, sinks: Sinks | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.rt: Runtime = init_runtime(cfg.train.device, cfg.distributed.backend)
        t = cfg.train
        fix_threads(t.threads)
        set_numerics(self.rt.device, t.deterministic)
        if t.precision == "fp16" and self.rt.device.type != "cuda":
            raise UserError("train.precision=fp16 needs a GPU (GradScaler); use bf16 or fp32 on CPU")
        per_step = self.rt.world_size * t.grad_accum
        if t.batch_size % per_step:
            raise UserError(f"train.batch_size ({t.batch_size}) must be divisible by world size x grad_accum "
                            f"({self.rt.world_size} x {t.grad_accum})")
        self.micro_batch = t.batch_size // per_step
        self.sinks = sinks if sinks is not None else build_sinks(cfg, self.rt.rank, self.run_dir, interactive)
        for note in device_notes(t.device, self.rt, self.micro_batch, cfg.distributed.sync_batchnorm, t.precision):
            self.sinks.info(note)  # the device; CPU fallback beside GPUs; small per-process BatchNorm; slow bf16
        self.data = RunData(cfg, self.rt.rank, self.rt.world_size)
        self.generator, self.discriminator = build_models(cfg, self.data.skeleton.num_joints, self.rt)
        self.g, self.d = wrap_models(cfg, self.rt, self.generator, self.discriminator, self.micro_batch)
        self.objective = build_objective(cfg, self.data.skeleton.torso, self.rt.device)
        self.graphed, why_not = graphed_step(cfg, self.rt, self.g, self.d, self.objective)
        if self.graphed is not None:
            self.sinks.info(f"train.cuda_graphs: the step is captured after {WARMUP_STEPS} eager warm-up steps")
        elif why_not is not None:
            self.sinks.info(f"train.cuda_graphs: stepping eagerly: {why_not}")
        self.validator = Validator(cfg, self.data, self.rt, self.sinks, max(self.micro_batch, 8))
        self.preemption = Preemption(self.rt, t.log_every)
        self.ckpts = ckpt.CheckpointManager(self.run_dir / "checkpoints", t.keep_last)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.skipped_files: set[str] = set()
        self.images, self.train_time, self.steps_this_run = 0, 0.0, 0
        self.time_up = False  # train.max_minutes reached (agreed by every rank)
        self._nonfinite_step = torch.full((), -1, dtype=torch.long, device=self.rt.device)
        resumed = ckpt.resolve_resume(resume, self.ckpts, warn=self.sinks.info)
        if resumed is not None:
            self._load_state(resumed[1])
            self.sinks.info(f"resumed from {resumed[0]} at step {self.step}")

    # -- state -------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        def sd(x):
            return x.state_dict() if x is not None else {}
        dev = self.rt.device
        return {
            "generator": self.generator.state_dict(),
            "discriminator": sd(self.discriminator),
            "optim_g": sd(self.g.optimizer),
            "optim_d": sd(self.d.optimizer if self.d else None),
            "scaler_g": sd(self.g.scaler),
            "scaler_d": sd(self.d.scaler if self.d else None),
            "objective": self.objective.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            # This process's generators only: a checkpoint resumes on any number of visible GPUs.
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None},
            "best": dict(self.validator.best),
            "config": self.cfg.to_dict(),
        }

    def _load_state(self, s: dict[str, Any]) -> None:
        try:
            for model, handle, key in ((self.generator, self.g, "generator"),
                                       (self.discriminator, self.d, "discriminator")):
                if model is not None:
                    model.load_state_dict(s[key])
                    handle.optimizer.load_state_dict(
                        ckpt.upgrade_optimizer_state(s[f"optim_{key[0]}"], s[key], model))
            for model, key in ((self.g, "scaler_g"), (self.d, "scaler_d")):
                if model is not None and model.scaler is not None and s.get(key):
                    model.scaler.load_state_dict(s[key])
            if s.get("objective"):
                self.objective.load_state_dict(s["objective"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"checkpoint does not fit this config (model size/objective changed?): {exc}") \
                from None
        self.step = int(s["step"])
        self.epoch, self.batch_in_epoch = int(s["epoch"]), int(s.get("batch_in_epoch", 0))
        self.validator.best = dict(s.get("best") or self.validator.best)
        torch.set_rng_state(s["rng"]["torch"])
        if isinstance(s["rng"].get("cuda"), torch.Tensor) and self.rt.device.type == "cuda":
            torch.cuda.set_rng_state(s["rng"]["cuda"], self.rt.device)

    def save(self, is_best: bool = False) -> Path | None:
        """Checkpoint on every rank's call (gathering ZeRO-1's sharded optimizer state is collective); rank 0
        writes the file."""
        t0 = time.perf_counter()
        state = self.state()
        path = self.ckpts.save(state, is_best) if self.rt.is_main else None
        if path is not None:
            self.sinks.record("checkpoint", {"step": self.step, "path": str(path), "best": is_best,
                                             "seconds": round(time.perf_counter() - t0, 4)})
        self.rt.barrier()
        return path

    # -- loop --------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self.preemption.install()
        self.sinks.record("start", {"config": cfg.to_dict(), "world_size": self.rt.world_size,
                                    "rank": self.rt.rank, "device": str(self.rt.device), "resumed_step": self.step,
                                    "run_dir": str(self.run_dir), "objective": cfg.adversarial.objective})
        self.sinks.info(f"training {cfg.adversarial.objective} G={cfg.model.stacks}x{cfg.model.features} on "
                        f"{cfg.data.name} ({len(self.data.train_records)} train / {len(self.data.val_records)} "
                        f"val), {self.rt.world_size} process(es) on {self.rt.device}, "
                        f"{self.data.steps_per_epoch} steps/epoch")
        first_step, t_start = self.step, time.time()
        try:
            while not self.done():
                self._run_epoch()
            if self.validator.last_step != self.step:  # the last step is always scored
                self._validate()
            self.steps_this_run = self.step - first_step
            return self._summary(time.time() - t_start)
        finally:
            self.sinks.close()

    def done(self) -> bool:
        """The run's budget is spent: train.max_steps, or train.max_minutes of this run's training time
        (checked every step; in a data-parallel run every train.log_every steps, where the ranks agree)."""
        return self.step >= self.cfg.train.max_steps or self.time_up

    def _run_epoch(self) -> None:
        """The steps of the current epoch from `batch_in_epoch` on, until it ends or the budget is spent."""
        loader = self.data.train_loader(self.micro_batch, self.epoch, self.batch_in_epoch)
        try:
            epoch_done = self._run_steps(loader)
        finally:
            self.skipped_files.update(loader.skipped_files)
        if epoch_done:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            if not self.done() and self.validator.due(self.step, epoch_end=True):
                self._validate()

    def _run_steps(self, loader) -> bool:
        """Steps over `loader`'s batches; True when the epoch ran to its end."""
        t = self.cfg.train
        micro: list[dict] = []
        t_wait = time.perf_counter()
        for batch in loader:
            self._report_skipped(batch)
            micro.append(batch)
            if len(micro) < t.grad_accum:
                continue
            data_s = time.perf_counter() - t_wait
            if not self._all_ranks_have_samples(micro):
                micro, self.batch_in_epoch = [], batch["batch_index"] + 1
                continue
            self._train_step(micro, data_s)
            micro, self.batch_in_epoch = [], batch["batch_index"] + 1
            if self.validator.due(self.step):
                self._validate()
            elif t.checkpoint_every and self.step % t.checkpoint_every == 0:
                self.save()
            if self.preemption.requested(self.step):
                self.save()
                self.sinks.info(f"preemption signal ({self.preemption.signal or 'on another rank'}): checkpoint "
                                f"at step {self.step} written, exiting {EXIT_PREEMPTED}")
                raise Preempted()
            if self.done():  # stopped inside the epoch: a resumed run continues it
                return self.batch_in_epoch >= loader.sampler.batches_per_epoch
            t_wait = time.perf_counter()
        return True

    def _train_step(self, micro: list[dict], data_s: float) -> None:
        t, dev = self.cfg.train, self.rt.device
        t0 = time.perf_counter()
        for model, c in ((self.g, t.generator), (self.d, t.discriminator)):
            if model is not None:
                set_lr(model.optimizer, c, self.step, self.data.steps_per_epoch)
        # uint8 crops -> colour jitter, normalisation and targets on the device
        micro = [self.data.to_device(b, dev, t.channels_last) for b in micro]
        log_now = (self.step + 1) % t.log_every == 0 or self.step == 0
        if self.graphed is not None:
            reduced = self.graphed(micro)
        else:
            reduced = synchronized_step(micro, self.g, self.d, self.objective, self.rt, t.precision, log_now)
        finite = torch.stack(list(reduced.values())).isfinite().all()
        self._nonfinite_step = torch.where(finite | (self._nonfinite_step >= 0), self._nonfinite_step,
                                           torch.full_like(self._nonfinite_step, self.step + 1))
        self.step += 1
        n_img = sum(int(b["num_samples"]) for b in micro) * self.rt.world_size
        step_s = time.perf_counter() - t0 + data_s
        self.images += n_img
        self.train_time += step_s
        self.sinks.step(self.step, {"images": n_img, "images_rank": n_img // self.rt.world_size,
                                    "step_s": step_s, "data_s": data_s})
        if t.max_minutes is not None and not self.time_up and (not self.rt.distributed
                                                                or self.step % t.log_every == 0):
            self.time_up = self.rt.any(self.train_time >= 60.0 * t.max_minutes)
        if log_now:
            self._log(reduced, n_img / max(step_s, 1e-9))

    def _log(self, reduced: dict[str, torch.Tensor], images_per_s: float) -> None:
        """The one read-back of device values: every log_every steps."""
        names = list(reduced)
        host = torch.stack([reduced[k] for k in names] + [self._nonfinite_step.double()]).tolist()
        values, bad_step = dict(zip(names, host[:-1])), int(host[-1])
        if bad_step >= 0:
            raise UserError(f"non-finite loss at step {bad_step} (seen at step {self.step}): {values}; "
                            f"checkpoints in {self.ckpts.dir} hold the last good states")
        t, per_epoch = self.cfg.train, self.data.steps_per_epoch
        values["lr_g"] = lr_at(t.generator, self.step - 1, per_epoch)  # the rate this step ran with
        if self.d is not None:
            values["lr_d"] = lr_at(t.discriminator, self.step - 1, per_epoch)
        values["images_per_s"] = images_per_s
        self.sinks.record("train", {"step": self.step, "epoch": self.epoch, **values})

    def _validate(self) -> None:
        is_best = self.validator.run(unwrap(self.g.module), self.step)
        self.save(is_best)

    def _report_skipped(self, batch: dict) -> None:
        for file, reason in zip(batch["skipped"], batch["skipped_reasons"]):
            self.sinks.record("skipped", {"file": file, "reason": reason, "epoch": self.epoch})

    def _all_ranks_have_samples(self, micro: list[dict]) -> bool:
        """Data-parallel only: False on every rank when some rank's micro-batch held only bad samples. That
        rank cannot run the step and its peers would wait for it in the gradient all-reduce until the
        process-group timeout, so all ranks skip this step together (the bad files are logged and counted
        by the loader; the step counter does not advance)."""
        if not self.rt.distributed or not self.rt.any(any(int(b["num_samples"]) == 0 for b in micro)):
            return True
        self.sinks.info(f"epoch {self.epoch} batch {micro[-1]['batch_index']}: a rank's micro-batch held only "
                        f"unreadable samples; every rank skips this step")
        return False

    def _summary(self, wall: float) -> dict[str, Any]:
        skipped = sorted(self.skipped_files)
        if self.rt.distributed:
            parts: list = [None] * self.rt.world_size
            torch.distributed.all_gather_object(parts, skipped)
            skipped = sorted({f for part in parts for f in part})
        result = self.validator.last_result
        if not self.rt.is_main:
            return {}
        summary = {
            **result.headline(),  # metric, value, auc, per_joint, groups
            "best": self.validator.best,
            "steps": self.step,
            "steps_this_run": self.steps_this_run,
            "wall_s": round(wall, 2),
            "images_per_s": round(self.images / self.train_time, 2) if self.train_time else None,
            "objective": self.cfg.adversarial.objective,
            "dataset": self.cfg.data.name,
            "protocol": PROTOCOL_OF.get(self.cfg.data.name, "lsp"),
            "world_size": self.rt.world_size,
            "device": str(self.rt.device),
            "skipped_samples": skipped,
        }
        write_json(self.run_dir / "summary.json", summary)
        self.sinks.record("summary", summary)
        self.sinks.table(result.render())
        return summary
