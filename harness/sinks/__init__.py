"""Where a run's numbers go: the sinks of harness/sinks/base.py, and the one place that decides which rank
gets which (JSON lines, console and, when `telemetry.tensorboard` is set, TensorBoard on rank 0; Prometheus on
every rank when telemetry is enabled)."""

from __future__ import annotations

from harness.sinks.base import Sink, Sinks

__all__ = ["Sink", "Sinks", "build_sinks"]


def build_sinks(cfg, rank: int, run_dir, interactive: bool | None = None) -> Sinks:
    """The sinks of this rank: the one place that decides which rank writes what."""
    from harness.sinks.console import ConsoleSink
    from harness.sinks.jsonl import JsonlSink

    sinks: list[Sink] = []
    if rank == 0:
        sinks += [JsonlSink(run_dir), ConsoleSink(cfg.train.max_steps, interactive)]
        if cfg.telemetry.tensorboard:
            from harness.sinks.tensorboard import TensorBoardSink
            sinks.append(TensorBoardSink(run_dir))
    if cfg.telemetry.enabled:  # every rank; needs the process group up (the ranks exchange addresses)
        from harness.sinks.prometheus import PrometheusSink
        sinks.append(PrometheusSink(cfg, rank, run_dir))
    return Sinks(sinks)
