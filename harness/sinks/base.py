"""The output interface of a run: `Sink` and the `Sinks` container (torchtitan's `metrics.py` pattern).

The trainer reports every event to one `Sinks` object and never asks who listens. Which rank gets which sink
is decided in one place, `build_sinks`: the JSON-lines file and the console on rank 0, Prometheus (when
enabled) on every rank.

Events, by `kind` of `Sink.record(kind, fields)` (host values only; the trainer has already read them back):
  "start"       config (dict), world_size, rank, device, resumed_step, run_dir, objective
  "train"       at logging cadence: step, epoch, loss_g, loss_mse and, per objective, loss_adv, loss_d, l_real,
                l_fake, k, convergence, d_fake; lr_g (lr_d), grad_norm_g (grad_norm_d), images_per_s
  "val"         step, metric ("PCK@0.2", "PCKh@0.5", "AP (OKS)"), value, auc and per_joint (None for COCO)
  "checkpoint"  step, path, seconds (write time), best (bool)
  "skipped"     file, reason, epoch: one unreadable/unusable sample (on the rank that met it)
  "summary"     the run's summary.json dict
`Sink.step(step, fields)` is called after EVERY optimizer step with host-side timings only (no device value,
so no host synchronisation): images (global images of this step), images_rank, step_s (wall seconds of the
step), data_s (seconds waiting for the batch).
`info(text)` is a human message, `table(renderable)` a rich renderable (the result table), `close()` the end.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class Sink:
    """Base class: every method is optional and does nothing by default."""

    def record(self, kind: str, fields: dict[str, Any]) -> None:
        pass

    def step(self, step: int, fields: dict[str, float]) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def table(self, renderable: Any) -> None:
        pass

    def close(self) -> None:
        pass


class Sinks(Sink):
    """Fans every event out to its sinks, in order."""

    def __init__(self, sinks: Iterable[Sink] = ()):
        self.sinks = list(sinks)

    def record(self, kind: str, fields: dict[str, Any]) -> None:
        for s in self.sinks:
            s.record(kind, fields)

    def step(self, step: int, fields: dict[str, float]) -> None:
        for s in self.sinks:
            s.step(step, fields)

    def info(self, message: str) -> None:
        for s in self.sinks:
            s.info(message)

    def table(self, renderable: Any) -> None:
        for s in self.sinks:
            s.table(renderable)

    def close(self) -> None:
        for s in self.sinks:
            s.close()
