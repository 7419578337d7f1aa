"""Prometheus metrics of one rank: a `Sink` whose values come from the trainer's events only.

Per step (`Sink.step`, host timings the trainer has anyway) it adds to two counters and two histograms;
every other value is set at logging cadence from the "train", "val", "checkpoint" and "skipped" events,
so the sink adds no host-device synchronisation. Each rank has its own `CollectorRegistry` served by
`harness.telemetry.Exporter`; every series carries the labels job, node, rank, objective and run.
The metric list is `METRICS` (docs/telemetry.md documents it and a test keeps the two equal).
"""

from __future__ import annotations

import platform
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import prometheus_client
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from data_pipelines.errors import UserError
from harness import telemetry
from harness.files import write_json
from harness.sinks.base import Sink

# name (as exposed) -> help text; the sink creates exactly these.
METRICS = {
    "satpose_images_total": "Images this rank trained on (this process)",
    "satpose_steps_total": "Optimizer steps this process ran",
    "satpose_step": "Last optimizer step number (counts on across resumes)",
    "satpose_step_seconds": "Wall time of one optimizer step, data wait included",
    "satpose_data_wait_seconds": "Time one optimizer step waited for its batch",
    "satpose_generator_loss": "Generator loss at the last logged step, by term (mse, adversarial, total)",
    "satpose_discriminator_loss": "Discriminator loss at the last logged step, by term (real, fake, total)",
    "satpose_k_t": "SAT balance k_t at the last logged step",
    "satpose_convergence": "SAT convergence measure at the last logged step",
    "satpose_d_fake_ratio": "cGAN: fraction of joints labelled d_fake = 1 at the last logged step",
    "satpose_learning_rate": "Learning rate at the last logged step, by model",
    "satpose_grad_norm": "Global L2 gradient norm at the last logged step, by model",
    "satpose_device_memory_allocated_bytes": "CUDA memory held by tensors at the last logged step",
    "satpose_device_memory_peak_bytes": "Peak CUDA memory held by tensors since the start",
    "satpose_skipped_samples_total": "Samples skipped as unreadable or unusable, by reason",
    "satpose_checkpoint_write_seconds": "Time to write one checkpoint (rank 0)",
    "satpose_validation_score": "Last held-out score in percent, by metric (rank 0)",
    "satpose_validation_auc": "Area under the last held-out PCK curve, by metric (rank 0)",
    "satpose_build_info": "Versions and git commit of the running harness",
}

_STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_CHECKPOINT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# "train" event field -> label value of its gauge
_G_LOSS = {"loss_mse": "mse", "loss_adv": "adversarial", "loss_g": "total"}
_D_LOSS = {"l_real": "real", "l_fake": "fake", "loss_d": "total"}
_PER_MODEL = {"lr_g": "generator", "lr_d": "discriminator", "grad_norm_g": "generator",
              "grad_norm_d": "discriminator"}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def reason_label(reason: Any) -> str:
    """A skip reason as a label value: its text up to the first parenthesis or colon ("cannot decode",
    "file not found"), so that file names and exception texts never multiply the series."""
    return re.split(r"[(:]", str(reason or ""), maxsplit=1)[0].strip()[:60] or "unknown"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


class PrometheusSink(Sink):
    """Metrics of rank `rank`, served from the moment it is built (after the process group is up: the ranks
    exchange their exporter addresses, and rank 0 writes the service-discovery file)."""

    def __init__(self, cfg, rank: int, run_dir: str | Path):
        self.tcfg = cfg.telemetry
        run_dir = Path(run_dir)
        self.labels = telemetry.run_labels(run_dir.name, rank, cfg.adversarial.objective, run_dir.name)
        # The _created series prometheus_client adds to counters and histograms double their series; nothing
        # here reads them (process-wide switch; this process has no other registry).
        prometheus_client.disable_created_metrics()
        self.registry = CollectorRegistry()
        self._build_metrics()
        self._cuda: torch.device | None = None
        exporter, error = None, None
        try:
            exporter = telemetry.Exporter(self.registry, self.tcfg)
        except UserError as exc:
            error = str(exc)
        # Every rank learns every address (and every error: all ranks fail together instead of waiting for a
        # peer that is gone).
        entries = telemetry.gather({"error": error} if error else {"target": exporter.target, "labels": self.labels})
        errors = [e["error"] for e in entries if e.get("error")]
        if errors:
            if exporter is not None:
                exporter.close()
            raise UserError(errors[0])
        self.exporter = exporter
        self.sd_files: list[Path] = []
        if rank == 0:
            if not telemetry.is_loopback(self.tcfg.bind):
                telemetry.warn(f"telemetry.bind={self.tcfg.bind}: the metrics exporters listen beyond loopback; "
                               f"anyone who can reach this node can read them (docs/security.md)")
            self.sd_files = [run_dir / telemetry.SD_FILE]
            if self.tcfg.sd_dir is not None:
                self.sd_files.append(Path(self.tcfg.sd_dir) / telemetry.sd_copy_name(self.labels))
            for path in self.sd_files:
                write_json(path, telemetry.sd_groups(entries))  # atomic: Prometheus re-reads it on change

    @property
    def port(self) -> int:
        return self.exporter.port

    def _build_metrics(self) -> None:
        names, r = list(self.labels), self.registry

        def make(kind, name: str, *extra: str, **kwargs):
            base = name.removesuffix("_total") if kind is Counter else name.removesuffix("_info")
            return kind(base, METRICS[name], names + list(extra), registry=r, **kwargs)

        # Per-step series exist from the start (at 0); a gauge appears with its first value.
        self.images = make(Counter, "satpose_images_total").labels(**self.labels)
        self.steps = make(Counter, "satpose_steps_total").labels(**self.labels)
        self.step_seconds = make(Histogram, "satpose_step_seconds", buckets=_STEP_BUCKETS).labels(**self.labels)
        self.data_wait = make(Histogram, "satpose_data_wait_seconds", buckets=_WAIT_BUCKETS).labels(**self.labels)
        self.step_number = make(Gauge, "satpose_step")
        self.g_loss = make(Gauge, "satpose_generator_loss", "term")
        self.d_loss = make(Gauge, "satpose_discriminator_loss", "term")
        self.k_t = make(Gauge, "satpose_k_t")
        self.convergence = make(Gauge, "satpose_convergence")
        self.d_fake = make(Gauge, "satpose_d_fake_ratio")
        self.per_model = {"lr": make(Gauge, "satpose_learning_rate", "model"),
                          "grad_norm": make(Gauge, "satpose_grad_norm", "model")}
        self.mem_allocated = make(Gauge, "satpose_device_memory_allocated_bytes")
        self.mem_peak = make(Gauge, "satpose_device_memory_peak_bytes")
        self.skipped = make(Counter, "satpose_skipped_samples_total", "reason")
        self.checkpoint_seconds = make(Histogram, "satpose_checkpoint_write_seconds", buckets=_CHECKPOINT_BUCKETS
                                       ).labels(**self.labels)
        self.val_score = make(Gauge, "satpose_validation_score", "metric")
        self.val_auc = make(Gauge, "satpose_validation_auc", "metric")
        make(Info, "satpose_build_info").labels(**self.labels).info({
            "version": _version("satpose"), "torch": torch.__version__, "python": platform.python_version(),
            "prometheus_client": _version("prometheus-client"), "git_commit": telemetry.git_commit()})

    # -- events ------------------------------------------------------------------------------------
    def step(self, step: int, fields: dict[str, float]) -> None:
        self.images.inc(fields.get("images_rank", 0))
        self.steps.inc()
        self._set(self.step_number, step)
        for histogram, key in ((self.step_seconds, "step_s"), (self.data_wait, "data_s")):
            if (value := _number(fields.get(key))) is not None:
                histogram.observe(value)

    def _set(self, gauge: Gauge, value: Any, **extra: str) -> None:
        """Set this rank's series of `gauge` (with `extra` labels) if `value` is a number."""
        if (number := _number(value)) is not None:
            gauge.labels(**self.labels, **extra).set(number)

    def record(self, kind: str, fields: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(fields)

    def _on_start(self, fields: dict[str, Any]) -> None:
        device = torch.device(fields.get("device", "cpu"))
        self._cuda = device if device.type == "cuda" else None
        self._set(self.step_number, fields.get("resumed_step"))

    def _on_train(self, fields: dict[str, Any]) -> None:
        for table, gauge in ((_G_LOSS, self.g_loss), (_D_LOSS, self.d_loss)):
            for key, term in table.items():
                self._set(gauge, fields.get(key), term=term)
        for key, gauge in (("k", self.k_t), ("convergence", self.convergence), ("d_fake", self.d_fake)):
            self._set(gauge, fields.get(key))
        for key, model in _PER_MODEL.items():
            self._set(self.per_model[key.rsplit("_", 1)[0]], fields.get(key), model=model)
        if self._cuda is not None:  # allocator counters: host values, no device synchronisation
            self._set(self.mem_allocated, torch.cuda.memory_allocated(self._cuda))
            self._set(self.mem_peak, torch.cuda.max_memory_allocated(self._cuda))

    def _on_val(self, fields: dict[str, Any]) -> None:
        metric = str(fields.get("metric"))
        for key, gauge in (("value", self.val_score), ("auc", self.val_auc)):
            self._set(gauge, fields.get(key), metric=metric)

    def _on_checkpoint(self, fields: dict[str, Any]) -> None:
        if (seconds := _number(fields.get("seconds"))) is not None:
            self.checkpoint_seconds.observe(seconds)

    def _on_skipped(self, fields: dict[str, Any]) -> None:
        self.skipped.labels(**self.labels, reason=reason_label(fields.get("reason"))).inc()

    def close(self) -> None:
        """Serve until one more scrape has seen the final values (at most telemetry.linger_s), then stop and
        take this run out of a shared discovery folder."""
        self.exporter.close(self.tcfg.linger_s)
        for path in self.sd_files[1:]:
            path.unlink(missing_ok=True)
