"""Clocks and statistics of the suites.

A `StepClock` marks step boundaries. On CUDA it records an event per boundary on the current stream and
reads them after one synchronize at the end of a block (no host sync inside the timed steps); a step's
latency is the time between two boundaries on the stream. On CPU it reads perf_counter.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch


class StepClock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def latencies_s(self) -> list[float]:
        """Seconds between consecutive marks (synchronizes on CUDA)."""
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p99 (linear interpolation) of `values`."""
    p50, p90, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}


def spread(values: Sequence[float]) -> dict[str, float]:
    """median, min, max and (max - min) / median over repeats."""
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / med if med else 0.0}


def interleave(runs: dict[str, Callable[[int], dict]], repeats: int) -> dict[str, list[dict]]:
    """Call every run once per repeat, in turn (a, b, c, a, b, c, ...): {name: [result per repeat]}."""
    out: dict[str, list[dict]] = {name: [] for name in runs}
    for r in range(repeats):
        for name, run in runs.items():
            out[name].append(run(r))
    return out


def best_time_s(fn: Callable[[], object], device: torch.device, min_s: float = 0.2, rounds: int = 5) -> float:
    """Median seconds per call of `fn` over `rounds` rounds, each long enough for `min_s` (after one call)."""
    fn()
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    once = max(time.perf_counter() - t, 1e-6)
    n = max(1, int(min_s / once))
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        sync(device)
        times.append((time.perf_counter() - t) / n)
    return statistics.median(times)
