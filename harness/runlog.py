"""What a run tells people: a JSON-lines metric log for machines, and console lines for humans.

On a terminal the console gets a rich progress bar and tables; when output is not a TTY (SLURM logs,
pipes, CI) it gets plain, greppable `key=value` lines instead. Only rank 0 writes anything.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class RunLog:
    def __init__(self, run_dir: Path | None, enabled: bool = True, total_steps: int = 0,
                 interactive: bool | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl" if (run_dir and enabled) else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.console = Console(highlight=False) if self.interactive else None
        self._progress: Progress | None = None
        self._task = None
        self.total_steps = total_steps
        self.t0 = time.time()

    # -- machine log -------------------------------------------------------------------------------
    def record(self, kind: str, **fields: Any) -> None:
        if not self.enabled:
            return
        row = {"kind": kind, "time": round(time.time() - self.t0, 3), **fields}
        if self.path:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    # -- human console -----------------------------------------------------------------------------
    def info(self, message: str) -> None:
        if not self.enabled:
            return
        if self.console:
            self.console.print(message)
        else:
            print(message, flush=True)

    def start(self, first_step: int) -> None:
        if self.enabled and self.interactive:
            self._progress = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/"
                                      "{task.total} steps"), TextColumn("{task.fields[status]}"),
                                      TimeElapsedColumn(), TimeRemainingColumn(), console=self.console)
            self._progress.start()
            self._task = self._progress.add_task("train", total=self.total_steps, completed=first_step,
                                                 status="")

    def step(self, step: int, fields: dict[str, Any], show: bool) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            status = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items() if k in ("loss_g", "loss_d", "k"))
            self._progress.update(self._task, completed=step, status=status)
        elif show:
            print(f"step={step}/{self.total_steps} " + " ".join(f"{k}={_fmt(v)}" for k, v in fields.items()),
                  flush=True)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def table(self, renderable_or_text) -> None:
        """A rich renderable on a terminal; its plain-text form otherwise."""
        if not self.enabled:
            return
        if self.console:
            self.console.print(renderable_or_text)
        else:
            Console(file=sys.stdout, width=120, no_color=True, highlight=False).print(renderable_or_text)
            sys.stdout.flush()
