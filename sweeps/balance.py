"""SAT's balance in a sweep's runs, from the "train" rows of each run's metrics.jsonl (harness.curves reads them):
the step where k_t first leaves 0, and the ratio L_fake / L_real early, midway and late in training.

k_t is logged every `train.log_every` steps (and at step 1), so "first leaves 0 at step s" means: k_t was 0
at the previous logged step and > 0 at s; the true first step lies in (previous logged step, s]. The ratio
is the mean of the per-row ratios over the first, middle and last fifth of the logged rows (one logged batch
alone is noisy at batch 8).
"""

from __future__ import annotations

from typing import Any

WINDOWS = ("start", "middle", "end")


def k_first_positive(steps: list[int], ks: list[float]) -> dict[str, Any]:
    """{"step": first logged step with k_t > 0 (None: never), "after": the logged step before it (its lower
    bound, exclusive; 0 when the first row already has k_t > 0), "final": k_t at the last logged step}."""
    first = next((i for i, k in enumerate(ks) if k > 0), None)
    return {"step": None if first is None else steps[first],
            "after": None if first is None else (steps[first - 1] if first > 0 else 0),
            "final": ks[-1] if ks else None}


def ratio_windows(l_fake: list[float], l_real: list[float]) -> dict[str, float | None]:
    """Mean of L_fake / L_real over the first, middle and last fifth of the logged rows (at least one row each)."""
    ratios = [f / r for f, r in zip(l_fake, l_real) if r > 0]
    if not ratios:
        return dict.fromkeys(WINDOWS)
    w = max(1, len(ratios) // 5)
    mid = max(0, len(ratios) // 2 - w // 2)
    parts = {"start": ratios[:w], "middle": ratios[mid:mid + w], "end": ratios[-w:]}
    return {k: sum(v) / len(v) for k, v in parts.items()}


def run_balance(train: dict[str, tuple[list[int], list[float]]]) -> dict[str, Any] | None:
    """The balance of one run from its series (harness.curves.series); None for a run that logs no k_t."""
    if "k" not in train:
        return None
    steps, ks = train["k"]
    out = {"k": k_first_positive(steps, ks), "log_every": steps[2] - steps[1] if len(steps) > 2 else None}
    if "l_fake" in train and "l_real" in train:
        out["l_fake_over_l_real"] = ratio_windows(train["l_fake"][1], train["l_real"][1])
    return out
