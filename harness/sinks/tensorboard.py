"""TensorBoard event files of a run (rank 0, `telemetry.tensorboard: true`): `<run_dir>/tensorboard/`.

Scalars at logging cadence from the "train" events (`train/<field>`: losses, k_t, learning rates, gradient
norms, img/s) and the held-out score and AUC from the "val" events (`val/<metric>`, `val/<metric>/auc`), each
at its optimizer step. Uses `torch.utils.tensorboard.SummaryWriter`, which needs the `tensorboard` package
(the optional extra `satpose[tensorboard]`); enabling the sink without it is a clear error at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_pipelines.errors import UserError
from harness.sinks.base import Sink

SUBDIR = "tensorboard"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class TensorBoardSink(Sink):
    def __init__(self, run_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise UserError(f"telemetry.tensorboard=true needs the tensorboard package ({exc}); install it with "
                            f"`pip install 'satpose[tensorboard]'` (or `pip install tensorboard`), or set "
                            f"telemetry.tensorboard=false") from None
        self.dir = Path(run_dir) / SUBDIR
        self.writer = SummaryWriter(log_dir=str(self.dir))

    def record(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "train":
            step = int(fields["step"])
            for key, value in fields.items():
                if key not in ("step", "epoch") and (number := _number(value)) is not None:
                    self.writer.add_scalar(f"train/{key}", number, step)
        elif kind == "val":
            step, metric = int(fields["step"]), str(fields.get("metric") or "score")
            for tag, key in ((f"val/{metric}", "value"), (f"val/{metric}/auc", "auc")):
                if (number := _number(fields.get(key))) is not None:
                    self.writer.add_scalar(tag, number, step)
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
