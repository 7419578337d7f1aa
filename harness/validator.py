"""Held-out validation as a component of the loop: it decides when it is due, scores G with the official
protocol (PCK@0.2 / PCKh@0.5, or COCO's keypoint AP against the split's annotation file), keeps the best
score, and reports the result to the sinks."""

from __future__ import annotations

from typing import Any

from harness.config import Config
from harness.data import RunData
from harness.distributed import Runtime
from harness.evaluate import predict_dataset, score_records
from harness.sinks import Sinks


class Validator:
    def __init__(self, cfg: Config, data: RunData, rt: Runtime, sinks: Sinks, batch_size: int):
        self.cfg, self.data, self.rt, self.sinks = cfg, data, rt, sinks
        self.batch_size = batch_size
        self.best: dict[str, Any] = {"value": None, "step": None}
        self.last_step = -1  # step of the last validation
        self.last_result = None  # its PCKResult or CocoKeypointResult (rank 0; None elsewhere)

    def due(self, step: int, epoch_end: bool = False) -> bool:
        """Every `train.val_every` steps (else at every epoch end), and always at the last step."""
        t = self.cfg.train
        if step == self.last_step:
            return False
        if step >= t.max_steps:
            return True
        return bool(t.val_every and step % t.val_every == 0) if not epoch_end else t.val_every is None

    def run(self, generator, step: int) -> bool:
        """Validate G at `step`; True on every rank when the score is the best so far."""
        c = self.cfg
        preds = predict_dataset(generator, self.data.val_loader(self.batch_size), self.rt.device, self.data.skeleton,
                                flip_test=c.train.flip_test, precision=c.train.precision, infer=c.infer,
                                channels_last=c.train.channels_last, compile_backend=c.train.compile_backend)
        self.last_step = step
        is_best = False
        if self.rt.is_main:
            result = score_records(self.data.val_records, preds, c.data.name,
                                   coco_annotations=self.data.val_annotations)
            self.last_result = result
            h = result.headline()
            is_best = bool(self.best["value"] is None or h["value"] > self.best["value"])
            if is_best:
                self.best = {"value": float(h["value"]), "step": step}
            self.sinks.record("val", {"step": step, "metric": h["metric"], "value": h["value"], "auc": h["auc"],
                                      "per_joint": h["per_joint"]})
            auc = "" if h["auc"] is None else f" AUC={h['auc']:.2f}"
            self.sinks.info(f"val step={step} {h['metric']}={h['value']:.2f}{auc} "
                            f"best={self.best['value']:.2f}@{self.best['step']}")
        return self.rt.any(is_best)
