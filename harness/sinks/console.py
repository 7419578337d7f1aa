"""What a person watching the run sees: a rich progress bar and tables on a terminal, plain greppable
`key=value` lines when the output is a log file or a pipe (SLURM, CI)."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from harness.sinks.base import Sink

# Values shown beside the progress bar (the last logged ones).
_STATUS_KEYS = ("loss_g", "loss_d", "k")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class ConsoleSink(Sink):
    def __init__(self, total_steps: int, interactive: bool | None = None):
        self.total_steps = total_steps
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.console = Console(highlight=False) if self.interactive else None
        self._progress: Progress | None = None
        self._task = None
        self._status = ""

    def record(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "start" and self.interactive:
            self._progress = Progress(TextColumn("[bold]train"), BarColumn(),
                                      TextColumn("{task.completed}/{task.total} steps"),
                                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                      TimeRemainingColumn(), console=self.console)
            self._progress.start()
            self._task = self._progress.add_task("train", total=self.total_steps,
                                                 completed=fields.get("resumed_step", 0), status="")
        elif kind == "train":
            if self._progress is not None:
                self._status = "  ".join(f"{k}={_fmt(fields[k])}" for k in _STATUS_KEYS if k in fields)
            else:
                rest = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items() if k != "step")
                print(f"step={fields['step']}/{self.total_steps} {rest}", flush=True)

    def step(self, step: int, fields: dict[str, float]) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, status=self._status)

    def info(self, message: str) -> None:
        if self.console:
            self.console.print(message)
        else:
            print(message, flush=True)

    def table(self, renderable: Any) -> None:
        """A rich renderable on a terminal; its plain-text form otherwise."""
        self.close()
        if self.console:
            self.console.print(renderable)
        else:
            Console(file=sys.stdout, width=120, no_color=True, highlight=False).print(renderable)
            sys.stdout.flush()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
