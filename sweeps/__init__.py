"""Ray Tune sweeps of harness training runs: the papers' ablations (presets.py), one trial per harness
run (trial.py), the Tuner (runner.py), the report (report.py, with harness/stats.py) and `python -m harness sweep`
(cli.py). sweeps imports harness, never the reverse; Ray is imported only when a sweep runs."""

from sweeps.runner import run_sweep

__all__ = ["run_sweep"]
