"""ASHA that marks the trials it stops early, so an interrupted ASHA sweep is told apart from a finished one.

A trial ASHA stops and a trial cut off by an interrupted sweep look the same on disk (a checkpoint, no
summary.json), and Tune marks both TERMINATED. This scheduler writes `<run dir>/stopped_early.json` when
it decides to stop a trial before its end, so "unfinished" = neither a summary.json nor that mark, under
either scheduler, and `slurm/sweep.sh` requeues an interrupted ASHA sweep as it does a FIFO one.

Imported only when `--scheduler asha` is asked for (it imports Ray). The run dir is found from the trial's
own experiment path (`Trial.remote_experiment_path`, which `Tuner.restore` points at the folder restored),
not from a path kept in the scheduler: Tune pickles the scheduler with the experiment, so a kept path would
be where the sweep started, and a sweep moved before `--resume` would have its marks written to the old one.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from harness.files import write_json
from sweeps.trial import STOPPED_EARLY, run_name


class MarkingASHA(ASHAScheduler):
    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        at = result.get(self._time_attr)
        if action == TrialScheduler.STOP and at is not None and at < self._max_t and not result.get("done"):
            run_dir = Path(trial.remote_experiment_path) / run_name(trial.config["point"], int(trial.config["seed"]))
            if run_dir.is_dir():
                write_json(run_dir / STOPPED_EARLY, {"by": "asha", self._time_attr: at, "step": result.get("step"),
                                                     "score": result.get(self._metric), "max_t": self._max_t})
        return action
