"""The machine-readable log of a run: one JSON object per event in `<run_dir>/metrics.jsonl`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from harness.sinks.base import Sink


class JsonlSink(Sink):
    """Appends `{"kind": ..., "time": seconds since the sink opened, **fields}` per event (not per step)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()

    def record(self, kind: str, fields: dict[str, Any]) -> None:
        row = {"kind": kind, "time": round(time.time() - self.t0, 3), **fields}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
