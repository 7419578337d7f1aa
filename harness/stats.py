"""Seed statistics for sweep and accuracy reports (sweeps/report.py, harness/bench/suite_accuracy.py): mean with
a Student-t 95% confidence interval, and paired differences.

With n seeds the interval is mean +- t(0.975, n-1) * s / sqrt(n), s the sample standard deviation
(n - 1 in the denominator); with one seed there is no interval (None). Paired differences pair the two
points' runs by seed, which removes the seed-to-seed variation both share (data order, initialisation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from scipy import stats


@dataclass(frozen=True)
class Estimate:
    n: int
    mean: float
    std: float | None  # sample standard deviation (ddof=1); None for n = 1
    ci95: float | None  # half width of the 95% interval; None for n = 1

    def to_json(self) -> dict:
        return asdict(self)

    def text(self, digits: int = 2) -> str:
        if self.ci95 is None:
            return f"{self.mean:.{digits}f} (n=1)"
        return f"{self.mean:.{digits}f} ± {self.ci95:.{digits}f} (n={self.n})"


def estimate(values: list[float], confidence: float = 0.95) -> Estimate:
    if not values:
        raise ValueError("no values to estimate from")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return Estimate(1, mean, None, None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Estimate(n, mean, std, half)


def paired_difference(a: dict[int, float], b: dict[int, float]) -> Estimate | None:
    """Estimate of a - b over the seeds both have (seed -> value maps); None when they share none."""
    seeds = sorted(set(a) & set(b))
    return estimate([a[s] - b[s] for s in seeds]) if seeds else None


def min_detectable_difference(std: float | None, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest true paired difference a two-sided paired t-test on n seeds (level `alpha`) finds with
    probability `power`, given the paired differences' sample standard deviation `std`:

        MDD = (t(1 - alpha/2, n-1) + t(power, n-1)) * std / sqrt(n)

    (the usual normal-approximation formula with Student t quantiles for z; it ignores the noncentral t's
    skew, a small underestimate at n = 3). None with fewer than 2 seeds."""
    if std is None or n < 2:
        return None
    return (float(stats.t.ppf(1 - alpha / 2, n - 1)) + float(stats.t.ppf(power, n - 1))) * std / math.sqrt(n)
