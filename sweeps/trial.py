"""One sweep trial = one ordinary `python -m harness train` run in a subprocess.

The trial's config is written as YAML into its run dir and trained with `--resume auto`, so a retried or
restored trial continues exactly from its own last checkpoint, and the same YAML trained by hand gives
the same result. Progress reaches Tune by tailing `<run_dir>/metrics.jsonl` (one `tune.report` per
"val" row); the final result is the run's `summary.json`.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.config import Config, load_config
from harness.files import write_text_atomic
from sweeps.presets import SweepPreset

POLL_S = 0.5
STOPPED_EARLY = "stopped_early.json"  # in a run dir: ASHA stopped the trial before its end (sweeps/asha.py)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of one sweep shares (picklable: Ray ships it to the trial actors)."""
    preset: SweepPreset
    overrides: tuple[str, ...]  # the user's
    experiment_dir: str  # absolute: Tune changes the working directory of trials
    workdir: str  # the driver's working directory: relative paths of the config are relative to it
    cpus: int
    gpus: int


def run_name(point: str, seed: int) -> str:
    return f"{point}-seed{seed}"


def stopped_early(run_dir: Path) -> bool:
    """ASHA stopped this trial on purpose: no summary.json, and none is owed. A summary.json wins over the mark:
    ASHA's stop decision on a result races the trial process, which may already be past its last step and go on
    to write its summary (seen once in CI: both files in one run dir); that trial finished."""
    return (run_dir / STOPPED_EARLY).is_file() and not (run_dir / "summary.json").is_file()


def trial_config(spec: TrialSpec, point: str, seed: int) -> Config:
    """base preset + the preset's base overrides + the user's + the point's + seed (+ the CPU device), with
    data paths made absolute."""
    p = spec.preset
    extra = [f"train.seed={seed}"]
    if spec.gpus == 0:
        extra += ["train.device=cpu"]
    cfg = load_config(p.base, None, [*p.base_overrides, *spec.overrides, *p.points[point], *extra])
    for key in ("root", "annotation_file", "validation_gt"):
        path = getattr(cfg.data, key)
        if path is not None and not path.is_absolute():
            setattr(cfg.data, key, (Path(spec.workdir) / path).resolve())
    return cfg


def write_config(cfg: Config, path: Path) -> None:
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def train_command(config: Path, run_dir: Path, gpus: int) -> list[str]:
    """Single process, or torchrun on the trial's GPUs with a rendezvous port the OS picks (--standalone),
    so trials on one node never share a port or a process group."""
    args = ["-m", "harness", "train", "--config", str(config), "--run-dir", str(run_dir), "--resume", "auto"]
    if gpus <= 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", *args]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the trial's worker dies (a killed driver, a stopped trial).
    The trainer treats SIGTERM as preemption: it checkpoints and exits 85, which a restore resumes."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class MetricsTail:
    """New complete lines of a growing JSON-lines file."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


def val_report(row: dict[str, Any]) -> dict[str, Any]:
    return {"score": row["value"], "auc": row["auc"], "step": row["step"], "metric": row["metric"]}


def run_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """Tune function trainable: train the trial's config in a subprocess and report its validations."""
    from ray import tune

    point, seed = config["point"], int(config["seed"])
    run_dir = Path(spec.experiment_dir) / run_name(point, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = trial_config(spec, point, seed)
    summary_path = run_dir / "summary.json"
    if summary_path.is_file() and json.loads(summary_path.read_text())["steps"] >= cfg.train.max_steps:
        # Finished before the driver saved Tune's state (a killed driver): report it, do not train again.
        _report_summary(summary_path)
        return
    cfg_path = run_dir / "config.yaml"
    write_config(cfg, cfg_path)
    env = dict(os.environ)
    if spec.gpus == 0:
        env["CUDA_VISIBLE_DEVICES"] = ""  # Ray >= 2.47 leaves GPUs visible to zero-GPU actors
    env.setdefault("OMP_NUM_THREADS", str(spec.cpus))
    tail = MetricsTail(run_dir / "metrics.jsonl")
    with (run_dir / "train.log").open("ab") as log:
        proc = subprocess.Popen(train_command(cfg_path, run_dir, spec.gpus), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=spec.workdir, start_new_session=True,
                                preexec_fn=_die_with_parent)
    try:
        while True:
            code = proc.poll()
            for row in tail.rows():  # earlier attempts' rows too: Tune restarts a retried trial's count
                if row.get("kind") == "val":
                    tune.report(val_report(row))
            if code is not None:
                break
            try:  # wakes the moment the trainer exits (a sleep cost up to POLL_S per trial)
                proc.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the trainer checkpoints on SIGTERM
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if code != 0:
        log_tail = (run_dir / "train.log").read_text(errors="replace").splitlines()[-20:]
        raise RuntimeError(f"trial {run_dir.name}: `harness train` exited {code}; last lines of "
                           f"{run_dir / 'train.log'}:\n" + "\n".join(log_tail))
    _report_summary(summary_path)


def _report_summary(path: Path) -> None:
    from ray import tune

    summary = json.loads(path.read_text())
    tune.report({"score": summary["value"], "auc": summary["auc"], "step": summary["steps"],
                 "metric": summary["metric"], "done": True})
