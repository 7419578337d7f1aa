"""slurm/train.sh on a real one-node SLURM cluster (slurm/ci/cluster.sh), with tests/slurm_probe.py as the
trainer: 2 torchrun workers complete; a crash fails the job with the worker's exit code; the pre-end
SIGUSR1 (sbatch --signal=B:USR1@N) makes the workers exit 85, the job requeues itself and the second run
(SLURM_RESTART_COUNT=1) finds the checkpoint and completes.

The cluster needs root (apt-get install slurm-wlm munge on first use). Without root and without CI the
slurm tests skip; under CI they fail. The cluster is stopped at the end only if this session started it.
There is no accounting (no sacct): job states come from `scontrol show job` (kept for MinJobAge=600 s).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "slurm" / "ci" / "cluster.sh"
TRAIN = REPO / "slurm" / "train.sh"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                "DEADLINE", "OUT_OF_MEMORY"}


def _load_torchrun_exitcode():
    spec = importlib.util.spec_from_file_location("torchrun_exitcode", REPO / "slurm" / "torchrun_exitcode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([85, 85], 85),  # every rank checkpointed
        ([85, -15], 85),  # torchrun terminated the peer after rank 0 exited 85
        ([-15, 85], 85),
        ([85, 1], 1),  # a real error wins over "checkpointed"
        ([3, 85], 3),
        ([2, 3], 2),  # the earliest error
        ([-9, -15], 137),  # only signal deaths: 128 + the first signal
        ([300], 1),  # not representable as an exit status
        ([], 1),
    ],
)
def test_workers_exit_code_rule(codes, expected):
    assert _load_torchrun_exitcode().workers_exit_code(codes) == expected


def _run(cmd: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, **kw)


@pytest.fixture(scope="session")
def slurm_env(tmp_path_factory):
    """Environment for sbatch/scontrol against the CI cluster, started (and later stopped) here."""
    if os.geteuid() != 0 and shutil.which("slurmctld") is None:
        msg = "the CI SLURM cluster needs root (apt-get install slurm-wlm munge)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    env = dict(os.environ)
    was_up = _run(["bash", str(CLUSTER), "status"], env).returncode == 0
    started = _run(["bash", str(CLUSTER), "start"], env, timeout=600)
    assert started.returncode == 0, f"cluster.sh start failed:\n{started.stdout}\n{started.stderr}"
    conf = _run(["bash", str(CLUSTER), "env"], env).stdout.strip().removeprefix("export SLURM_CONF=")
    env.update(
        SLURM_CONF=conf,
        SATPOSE_PYTHON=sys.executable,
        SATPOSE_TRAIN_MODULE="slurm_probe",
        PYTHONPATH=str(REPO / "tests"),
    )
    yield env
    if not was_up:
        _run(["bash", str(CLUSTER), "stop"], env, timeout=120)


def _submit(env: dict[str, str], tmp: Path, sbatch_args: list[str], train_args: list[str]) -> str:
    env = {**env, "SATPOSE_RUN_DIR": str(tmp / "run")}
    out = _run(["sbatch", "--parsable", f"--output={tmp}/%x-%j.out", "--job-name=probe", *sbatch_args,
                str(TRAIN), *train_args], env)
    assert out.returncode == 0, f"sbatch failed: {out.stderr}"
    return out.stdout.strip().split(";")[0]


def _job(env: dict[str, str], job_id: str) -> dict[str, str]:
    out = _run(["scontrol", "show", "job", "-o", job_id], env)
    assert out.returncode == 0, f"scontrol show job {job_id}: {out.stderr}"
    return dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)


def _wait_final(env: dict[str, str], job_id: str, tmp: Path, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = _job(env, job_id)
        if job["JobState"] in FINAL_STATES:
            return job
        time.sleep(1)
    _run(["scancel", job_id], env)
    logs = "\n".join(p.read_text() for p in tmp.glob("*.out"))
    pytest.fail(f"job {job_id} not finished after {timeout} s (state {job['JobState']}); log:\n{logs}")


def _records(run_dir: Path, restart: int) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run_dir.glob(f"probe-restart{restart}-rank*.json"))]


def _log(tmp: Path, job_id: str) -> str:
    return (tmp / f"probe-{job_id}.out").read_text()


@pytest.mark.slurm
def test_two_workers_complete(slurm_env, tmp_path):
    job_id = _submit(slurm_env, tmp_path, ["--ntasks-per-node=2", "--cpus-per-task=1", "--time=2"],
                     ["--mode", "complete"])
    job = _wait_final(slurm_env, job_id, tmp_path, timeout=90)
    log = _log(tmp_path, job_id)
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "0"), log
    records = _records(tmp_path / "run", 0)
    assert sorted(r["rank"] for r in records) == [0, 1], log
    for r in records:
        assert r["world_size"] == 2 and r["rank_sum"] == 1.0  # the all_reduce saw both ranks
        assert r["env"]["SLURM_JOB_ID"] == job_id and r["env"]["LOCAL_WORLD_SIZE"] == "2"
        assert r["env"]["TORCHELASTIC_RUN_ID"] == job_id  # --rdzv-id
        assert r["argv"][:5] == ["train", "--run-dir", str(tmp_path / "run"), "--resume", "auto"]
    assert "2 process(es) per node (from SLURM_NTASKS_PER_NODE" in log


@pytest.mark.slurm
def test_worker_crash_fails_job_without_requeue(slurm_env, tmp_path):
    job_id = _submit(slurm_env, tmp_path, ["--ntasks-per-node=2", "--cpus-per-task=1", "--time=2"],
                     ["--mode", "fail"])
    job = _wait_final(slurm_env, job_id, tmp_path, timeout=90)
    log = _log(tmp_path, job_id)
    # The worker's exit code 3 (not torchrun's 1) reaches Slurm, and a crash is not requeued.
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("FAILED", "3:0", "0"), log
    assert "training step failed with exit code 3" in log


@pytest.mark.slurm
def test_pre_end_signal_checkpoints_and_requeues(slurm_env, tmp_path):
    # Time limits are whole minutes; slurmctld checks them every 30 s and sends the --signal at the first
    # check at which at most N + 30 s are left. --time=1 with --signal=B:USR1@10 therefore delivers USR1
    # 20..50 s after the start: after the probe is ready (about 10 s), at least 30 s before the job would
    # be killed.
    job_id = _submit(slurm_env, tmp_path,
                     ["--ntasks-per-node=2", "--cpus-per-task=1", "--time=1", "--signal=B:USR1@10"],
                     ["--mode", "preempt", "--wait", "70"])
    job = _wait_final(slurm_env, job_id, tmp_path, timeout=150)
    log = _log(tmp_path, job_id)
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "1"), log

    first, second = _records(tmp_path / "run", 0), _records(tmp_path / "run", 1)
    assert [r["rank"] for r in first] == [0, 1] and [r["rank"] for r in second] == [0, 1], log
    for r in first:
        assert r["env"]["SLURM_RESTART_COUNT"] is None and r["exit_code"] == 85
        assert r["usr1"] is not None and r["usr1"] - r["started"] < 60  # within the 1-minute limit
    for r in second:
        assert r["env"]["SLURM_RESTART_COUNT"] == "1" and r["exit_code"] == 0 and r["world_size"] == 2
        assert r["env"]["SLURM_JOB_ID"] == job_id
    assert (tmp_path / "run" / "checkpoint").is_file()
    # the batch shell got the signal, forwarded it, saw 85 and requeued
    assert log.index("SIGUSR1 received") < log.index("checkpointed (exit 85): requeueing")
    assert "SLURM_RESTART_COUNT=1" in log and log.rstrip().endswith("training finished")
