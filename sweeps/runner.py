"""Run (or resume) a sweep with Ray Tune: one grid over (point, seed), one harness training run per trial.

The experiment lives in `<storage>/<name>/`: Tune's own state, `sweep.json` (what was asked for, read by
the report), and one run dir per trial, `<point>-seed<k>/` (config.yaml, checkpoints, metrics.jsonl,
summary.json, train.log). A sweep started with `resume=True` restores Tune's state when there is one, so
finished trials are not run again and unfinished ones continue from their own checkpoints.

Ray's fixed cost is kept off the sweep's wall time where that changes nothing else (measured in
docs/sweeps.md, "Measured here"): the report's imports run while Ray starts, Tune's TensorBoard logger
(whose import pulls in torch, ~1 s before the first trial) is left out, and Ray shuts down while the
report is written.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import secrets
import sys
import threading
from pathlib import Path
from typing import Any

from data_pipelines.errors import UserError
from harness.files import write_json
from sweeps.presets import get_preset
from sweeps.trial import TrialSpec, run_name, run_trial, stopped_early, trial_config

TOKEN_FILE = "ray_auth_token"


def _write_token(path: Path) -> None:
    """A fresh random token in a file only the user can read (created 0600, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def _import_quietly(names: tuple[str, ...]) -> None:
    """Import modules ahead of need; a failure here is raised again where the module is really imported."""
    for name in names:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def _start_ray(experiment_dir: Path, num_cpus: int | None, meanwhile: tuple[str, ...] = ()) -> bool:
    """Connect to `RAY_ADDRESS` (slurm/sweep.sh's cluster, its token path in the environment), or start a
    local Ray on loopback with token authentication (a fresh token in the experiment dir), no dashboard and
    no usage-stats reporting. Returns whether this call connected or started Ray (and so must shut it
    down). The modules `meanwhile` are imported in a thread while `ray.init` waits for Ray's processes
    (they must not be Ray's own: `ray.init` imports some of those lazily)."""
    if "ray" not in sys.modules and not os.environ.get("RAY_ADDRESS") and "RAY_AUTH_MODE" not in os.environ:
        # Before `import ray`: Ray reads its authentication settings once, at import.
        token = experiment_dir / TOKEN_FILE
        _write_token(token)
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    import ray

    if ray.is_initialized():
        _import_quietly(meanwhile)
        return False
    importer = threading.Thread(target=_import_quietly, args=(meanwhile,), name="sweep-imports", daemon=True)
    importer.start()
    try:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        else:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # as sweep.sh: no usage report to Ray's servers
            ray.init(num_cpus=num_cpus, num_gpus=None, include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1")
    finally:
        importer.join()
    return True


@contextlib.contextmanager
def _csv_and_json_loggers_only():
    """Tune's result loggers without its TensorBoard one: `TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1` while Tune
    sets up (Ray's documented switch; the CSV and JSON loggers are passed explicitly). The harness
    writes its own metrics; tensorboardX's import alone (it imports torch) cost ~1 s of the driver's time
    before the first trial."""
    key = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
    saved = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def _loggers() -> list:
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [CSVLoggerCallback(), JsonLoggerCallback()]


def _scheduler(name: str, spec: TrialSpec):
    """None (FIFO), or ASHA counting one time unit per validation report (+1 for the final summary
    report, so a trial that runs to its end is never cut at max_t), marking the trials it stops."""
    if name == "fifo":
        return None
    from sweeps.asha import MarkingASHA

    cfg = trial_config(spec, next(iter(spec.preset.points)), 0).train
    validations = max(1, cfg.max_steps // cfg.val_every) if cfg.val_every else 1
    return MarkingASHA(time_attr="training_iteration", max_t=validations + 1,
                       grace_period=max(1, validations // 4), reduction_factor=2)


def _first_line(error: Exception) -> str:
    """The line of a trial's error that says what failed (Ray prefixes it with its own traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    ours = [line for line in lines if "`harness train` exited" in line]
    return (ours or lines or [repr(error)])[0]


def missing_trials(experiment_dir: Path) -> list[str]:
    """Run dirs of the sweep in `experiment_dir` that have no summary.json (yet)."""
    manifest = json.loads((experiment_dir / "sweep.json").read_text())
    return [r for r in manifest["runs"] if not (experiment_dir / r / "summary.json").is_file()]


def run_sweep(preset: str, overrides: list[str] = (), seeds: int | None = None, scheduler: str = "fifo",
              gpus_per_trial: int = 0, cpus_per_trial: int = 1, storage: str | Path = "runs/sweeps",
              name: str | None = None, resume: bool = False, max_failures: int = 2,
              num_cpus: int | None = None, report: bool | str | Path = False) -> dict[str, Any]:
    """Run the sweep `preset` (see sweeps.presets) and return {"experiment_dir", "unfinished", "errors",
    "without_summary", "report"} ("without_summary" includes the trials ASHA stopped early, "unfinished"
    not; "report" the paths sweeps.report.write_report wrote, or None).

    Every (point, seed) config is validated before Ray starts. `resume=True` restores the experiment
    `<storage>/<name>` when Tune can (and starts it otherwise): completed trials are kept, unfinished
    and errored ones continue from their checkpoints. A crashed trial is retried `max_failures` times,
    resuming from its own checkpoint.
    """
    p = get_preset(preset)
    if scheduler not in ("fifo", "asha"):
        raise UserError(f"--scheduler must be fifo or asha, got {scheduler!r}")
    if gpus_per_trial < 0 or cpus_per_trial < 1:
        raise UserError(f"need --gpus-per-trial >= 0 and --cpus-per-trial >= 1 (got {gpus_per_trial}, "
                        f"{cpus_per_trial})")
    seeds = p.seeds if seeds is None else seeds
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    name = name or p.name
    experiment_dir = Path(storage).resolve() / name
    spec = TrialSpec(p, tuple(overrides), str(experiment_dir), os.getcwd(), cpus_per_trial, gpus_per_trial)
    for point in p.points:  # one clear error now rather than N failed trials later
        trial_config(spec, point, 0)
    runs = [run_name(point, s) for point in p.points for s in range(seeds)]
    experiment_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"preset": p.name, "overrides": list(overrides), "seeds": seeds, "scheduler": scheduler,
                "points": list(p.points), "runs": runs, "gpus_per_trial": gpus_per_trial,
                "cpus_per_trial": cpus_per_trial}
    if (experiment_dir / "sweep.json").is_file():
        old = json.loads((experiment_dir / "sweep.json").read_text())
        if not resume:
            raise UserError(f"{experiment_dir} already holds a sweep: pass --resume to finish it, or --name NEW")
        if {k: old.get(k) for k in ("preset", "overrides", "seeds")} != {k: manifest[k] for k in
                                                                          ("preset", "overrides", "seeds")}:
            raise UserError(f"{experiment_dir}/sweep.json was started with preset {old.get('preset')}, overrides "
                            f"{old.get('overrides')}, seeds {old.get('seeds')}: resume it with the same")
    write_json(experiment_dir / "sweep.json", manifest)  # a kill mid-write must not leave resume a torn manifest

    started = _start_ray(experiment_dir, num_cpus, meanwhile=("sweeps.report",) if report is not False else ())
    import ray
    from ray import tune

    fitted = False
    try:
        trainable = tune.with_resources(functools.partial(run_trial, spec=spec),
                                        {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
        if resume and tune.Tuner.can_restore(str(experiment_dir)):
            tuner = tune.Tuner.restore(str(experiment_dir), trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"point": tune.grid_search(list(p.points)), "seed": tune.grid_search(list(range(seeds)))},
                # FIFO reuses a finished trial's actor (a Ray worker with ray.tune imported) for the next trial:
                # a fresh one left a CPU slot idle ~3 s per trial here, ~1 s with reuse (docs/sweeps.md). Not
                # under ASHA: reusing the actor of a trial it stops waits up to 2 s for our trial thread, which
                # sees the stop only at its next report, and then starts a fresh actor anyway.
                tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=_scheduler(scheduler, spec),
                                            reuse_actors=scheduler == "fifo"),
                run_config=tune.RunConfig(name=name, storage_path=str(experiment_dir.parent), verbose=1,
                                          failure_config=tune.FailureConfig(max_failures=max_failures),
                                          callbacks=_loggers()))
        with _csv_and_json_loggers_only():
            results = tuner.fit()
        errors = [_first_line(e) for e in results.errors]
        fitted = True
    finally:
        # Ray's shutdown waits ~1 s on its autoscaler monitor: the report is written meanwhile.
        stopper = threading.Thread(target=ray.shutdown, name="ray-shutdown") if started else None
        if stopper is not None:
            stopper.start()
        try:
            paths = None
            if fitted and report is not False:
                from sweeps.report import write_report

                paths = write_report(experiment_dir, None if report is True else report)
        finally:
            if stopper is not None:
                stopper.join()
    without_summary = missing_trials(experiment_dir)
    # Tune marks interrupted trials TERMINATED too (Ray 2.60), so "unfinished" is read from the run dirs:
    # every trial ends with a summary.json unless ASHA stopped it on purpose, which it marks (sweeps/asha.py).
    unfinished = [r for r in without_summary if not stopped_early(experiment_dir / r)]
    return {"experiment_dir": experiment_dir, "unfinished": unfinished, "errors": errors,
            "without_summary": without_summary, "report": paths}
