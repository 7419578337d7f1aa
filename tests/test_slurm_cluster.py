"""slurm/train.sh on a real one-node SLURM cluster (slurm/ci/cluster.sh).

With tests/slurm_probe.py standing in for the trainer: 2 torchrun workers complete; a crash fails the job
with the worker's exit code; the time-based pre-end SIGUSR1 (sbatch --signal=B:USR1@N) makes the workers
exit 85, the job requeues itself and the second run (SLURM_RESTART_COUNT=1) finds the checkpoint.
With the real trainer (`python -m harness train`, tiny synthetic config, 2 gloo processes on the node): a
job completes with a checkpoint and summary.json; a job signalled mid-run (`scancel --batch --signal=USR1`,
the deterministic form of the timer's signal) checkpoints, exits 85, requeues, resumes from exactly that
checkpoint and completes.

The cluster needs root (apt-get install slurm-wlm munge on first use). Without root and without CI the
slurm tests skip; under CI they fail. The cluster is stopped at the end only if this session started it.
There is no accounting (no sacct): job states come from `scontrol show job` (kept for MinJobAge=600 s).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "slurm" / "ci" / "cluster.sh"
TRAIN = REPO / "slurm" / "train.sh"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"  # the interpreter of every job (SATPOSE_PYTHON)
# Tiny synthetic config: about 0.15 s per step with 2 processes on 2 cores.
TINY = ["data.name=synthetic", "data.input_size=64", "data.heatmap_size=16", "data.synthetic_train_size=32",
        "data.synthetic_val_size=8", "data.num_workers=0", "model.stacks=1", "model.features=16",
        "discriminator.features=16", "train.batch_size=4", "train.log_every=1", "train.threads=1"]
TRAIN_SH_KNOBS = {"SATPOSE_PYTHON", "SATPOSE_REPO", "SATPOSE_RUN_DIR", "SATPOSE_NPROC_PER_NODE",
                  "SATPOSE_RDZV_PORT", "SATPOSE_TRAIN_MODULE", "SATPOSE_MAX_RESTARTS", "OMP_NUM_THREADS"}
# 2 training processes on the one node (train.sh's CPU-only rule); the time limit is long enough for the
# whole job and the timer's SIGUSR1 (train.sh's default @300 would fire at once) comes only after 4.5 min.
TWO_PROCS = ["--ntasks-per-node=2", "--cpus-per-task=1", "--time=5", "--signal=B:USR1@30"]
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
    """Environment for sbatch/scontrol against the CI cluster, started (and later stopped) here; jobs run
    the repository's .venv python and the real trainer unless a test says otherwise."""
    if os.geteuid() != 0 and shutil.which("slurmctld") is None:
        msg = "the CI SLURM cluster needs root (apt-get install slurm-wlm munge)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    if not VENV_PYTHON.is_file():
        pytest.fail(f"{VENV_PYTHON} not found: the jobs run the repository's venv (scripts/setup.sh)")
    env = {k: v for k, v in os.environ.items() if k not in TRAIN_SH_KNOBS}  # the tests set their own
    was_up = _run(["bash", str(CLUSTER), "status"], env).returncode == 0
    started = _run(["bash", str(CLUSTER), "start"], env, timeout=600)
    assert started.returncode == 0, f"cluster.sh start failed:\n{started.stdout}\n{started.stderr}"
    conf = _run(["bash", str(CLUSTER), "env"], env).stdout.strip().removeprefix("export SLURM_CONF=")
    env.update(SLURM_CONF=conf, SATPOSE_PYTHON=str(VENV_PYTHON))
    yield env
    if not was_up:
        _run(["bash", str(CLUSTER), "stop"], env, timeout=120)


@pytest.fixture
def probe_env(slurm_env):
    """Jobs run tests/slurm_probe.py instead of the trainer."""
    return {**slurm_env, "SATPOSE_TRAIN_MODULE": "slurm_probe", "PYTHONPATH": str(REPO / "tests")}


def _submit(env: dict[str, str], run_dir: Path, sbatch_args: list[str], train_args: list[str]) -> str:
    """sbatch slurm/train.sh with SATPOSE_RUN_DIR=run_dir (train.sh's documented knob); the job id."""
    out = _run(["sbatch", "--parsable", *sbatch_args, str(TRAIN), *train_args],
               {**env, "SATPOSE_RUN_DIR": str(run_dir)})
    assert out.returncode == 0, f"sbatch failed: {out.stderr}"
    return out.stdout.strip().split(";")[0]


def _job(env: dict[str, str], job_id: str) -> dict[str, str]:
    out = _run(["scontrol", "show", "job", "-o", job_id], env)
    assert out.returncode == 0, f"scontrol show job {job_id}: {out.stderr}"
    return dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)


def _log(env: dict[str, str], job_id: str) -> str:
    """The job's log file (StdOut, with %x/%j expanded by scontrol); '' while it does not exist."""
    path = Path(_job(env, job_id)["StdOut"])
    return path.read_text(errors="replace") if path.is_file() else ""


def _report(env: dict[str, str], job_id: str, run_dir: Path | None = None) -> str:
    """What to show when a test fails: `scontrol show job`, the job's log and the end of metrics.jsonl."""
    job = _run(["scontrol", "show", "job", job_id], env)
    parts = [f"--- scontrol show job {job_id}\n{job.stdout}{job.stderr}"]
    try:
        parts.append(f"--- log\n{_log(env, job_id)}")
    except AssertionError as exc:
        parts.append(f"--- log unavailable: {exc}")
    metrics = run_dir / "metrics.jsonl" if run_dir else None
    if metrics and metrics.is_file():
        rows = [line[:300] for line in metrics.read_text().splitlines()[-8:]]
        parts.append("--- metrics.jsonl (last rows, cut at 300 chars)\n" + "\n".join(rows))
    return "\n".join(parts)


def _fail(env: dict[str, str], job_id: str, why: str, run_dir: Path | None = None) -> None:
    report = _report(env, job_id, run_dir)
    _run(["scancel", job_id], env)
    pytest.fail(f"{why}\n{report}")


def _wait_final(env: dict[str, str], job_id: str, timeout: float, run_dir: Path | None = None) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = _job(env, job_id)
        if job["JobState"] in FINAL_STATES:
            return job
        time.sleep(1)
    _fail(env, job_id, f"job {job_id} not finished after {timeout} s (state {job['JobState']})", run_dir)


def _metrics(run_dir: Path) -> list[dict]:
    """Rows of <run_dir>/metrics.jsonl; a last line still being written is left out."""
    path = run_dir / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def _wait_train_step(env: dict[str, str], job_id: str, run_dir: Path, step: int, timeout: float) -> float:
    """Wait until metrics.jsonl has a "train" row with step >= `step` (the trainer is in its loop, with
    its signal handlers installed on every rank); the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if any(r["kind"] == "train" and r["step"] >= step for r in _metrics(run_dir)):
            return time.monotonic() - t0
        state = _job(env, job_id)["JobState"]
        if state in FINAL_STATES:
            _fail(env, job_id, f"job {job_id} ended ({state}) before training step {step}", run_dir)
        time.sleep(0.5)
    _fail(env, job_id, f"job {job_id}: no training step {step} within {timeout} s", run_dir)


def _records(run_dir: Path, restart: int) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run_dir.glob(f"probe-restart{restart}-rank*.json"))]


def _probe_args(tmp: Path) -> list[str]:
    return [f"--output={tmp}/%x-%j.out", "--job-name=probe"]


@pytest.mark.slurm
def test_two_workers_complete(probe_env, tmp_path):
    run_dir = tmp_path / "run"
    job_id = _submit(probe_env, run_dir, [*_probe_args(tmp_path), "--ntasks-per-node=2", "--cpus-per-task=1",
                                          "--time=2"], ["--mode", "complete"])
    job = _wait_final(probe_env, job_id, timeout=90)
    report = _report(probe_env, job_id)
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "0"), report
    records = _records(run_dir, 0)
    assert sorted(r["rank"] for r in records) == [0, 1], report
    for r in records:
        assert r["world_size"] == 2 and r["rank_sum"] == 1.0  # the all_reduce saw both ranks
        assert r["env"]["SLURM_JOB_ID"] == job_id and r["env"]["LOCAL_WORLD_SIZE"] == "2"
        assert r["env"]["TORCHELASTIC_RUN_ID"] == job_id  # --rdzv-id
        assert r["argv"][:5] == ["train", "--run-dir", str(run_dir), "--resume", "auto"]
    assert "2 process(es) per node (from SLURM_NTASKS_PER_NODE" in _log(probe_env, job_id)


@pytest.mark.slurm
def test_worker_crash_fails_job_without_requeue(probe_env, tmp_path):
    # (--signal=B:USR1@30: the default @300 exceeds --time=2 and fires at the first timer check, 12-30 s in,
    # which can land inside the crash-and-restart attempts of a loaded machine and turn exit 3 into 138)
    job_id = _submit(probe_env, tmp_path / "run", [*_probe_args(tmp_path), "--ntasks-per-node=2",
                                                   "--cpus-per-task=1", "--time=2", "--signal=B:USR1@30"],
                     ["--mode", "fail"])
    job = _wait_final(probe_env, job_id, timeout=90)
    report = _report(probe_env, job_id)
    # The worker's exit code 3 (not torchrun's 1) reaches Slurm, and a crash is not requeued.
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("FAILED", "3:0", "0"), report
    assert "training step failed with exit code 3" in _log(probe_env, job_id), report


@pytest.mark.slurm
def test_pre_end_signal_checkpoints_and_requeues(probe_env, tmp_path):
    # Time limits are whole minutes; slurmctld checks them every 30 s and sends the --signal at the first
    # check at which at most N + 30 s are left. --time=1 with --signal=B:USR1@10 therefore delivers USR1
    # 20..50 s after the start: after the probe is ready (about 10 s), at least 30 s before the job would
    # be killed.
    run_dir = tmp_path / "run"
    job_id = _submit(probe_env, run_dir, [*_probe_args(tmp_path), "--ntasks-per-node=2", "--cpus-per-task=1",
                                          "--time=1", "--signal=B:USR1@10"], ["--mode", "preempt", "--wait", "70"])
    job = _wait_final(probe_env, job_id, timeout=150)
    report = _report(probe_env, job_id)
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "1"), report

    first, second = _records(run_dir, 0), _records(run_dir, 1)
    assert [r["rank"] for r in first] == [0, 1] and [r["rank"] for r in second] == [0, 1], report
    for r in first:
        assert r["env"]["SLURM_RESTART_COUNT"] is None and r["exit_code"] == 85
        assert r["usr1"] is not None and r["usr1"] - r["started"] < 60  # within the 1-minute limit
    for r in second:
        assert r["env"]["SLURM_RESTART_COUNT"] == "1" and r["exit_code"] == 0 and r["world_size"] == 2
        assert r["env"]["SLURM_JOB_ID"] == job_id
    assert (run_dir / "checkpoint").is_file()
    # the batch shell got the signal, forwarded it, saw 85 and requeued
    log = _log(probe_env, job_id)
    assert log.index("SIGUSR1 received") < log.index("checkpointed (exit 85): requeueing"), report
    assert "SLURM_RESTART_COUNT=1" in log and log.rstrip().endswith("training finished"), report


def _train_sh_with_fakes(tmp_path, env: dict[str, str], node_gpus: int) -> tuple[str, str]:
    """train.sh outside a cluster, with stand-ins for scontrol, nvidia-smi (listing `node_gpus` GPUs) and
    srun (which prints its arguments and the GPU variables it inherits): (srun's output, train.sh's log)."""
    fakes = tmp_path / "bin"
    fakes.mkdir()
    scripts = {"scontrol": "echo node1; echo node2",
               "nvidia-smi": "; ".join(f"echo 'GPU {i}: Fake GPU (UUID: GPU-{i})'" for i in range(node_gpus)) or ":",
               "srun": 'echo "srun $*"; echo "SLURM_GPUS_PER_TASK=${SLURM_GPUS_PER_TASK-unset}"'}
    for name, body in scripts.items():
        (fakes / name).write_text(f"#!/bin/sh\n{body}\n")
        (fakes / name).chmod(0o755)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("SLURM_") and k not in TRAIN_SH_KNOBS and k != "CUDA_VISIBLE_DEVICES"}
    base.update(PATH=f"{fakes}:{os.environ['PATH']}", SLURM_JOB_ID="42", SLURM_JOB_NAME="t",
                SLURM_JOB_NODELIST="node[1-2]", SLURM_SUBMIT_DIR=str(REPO), SLURM_CPUS_ON_NODE="96")
    base.update(env)
    res = subprocess.run(["bash", str(TRAIN), "--preset", "quickstart"], env=base, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout, res.stderr


def test_train_sh_gives_the_step_the_nodes_gpus(tmp_path):
    """sbatch --ntasks-per-node=8 --gpus-per-task=1: the one srun task per node gets all 8 GPUs (not the job's
    one GPU per task) for its 8 workers."""
    out, log = _train_sh_with_fakes(tmp_path, {"SLURM_GPUS_ON_NODE": "8", "SLURM_GPUS_PER_TASK": "1",
                                               "SLURM_NTASKS_PER_NODE": "8",
                                               "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, node_gpus=8)
    assert "--ntasks-per-node=1 --cpus-per-task=96 --gres=gpu:8 " in out and "--nproc-per-node=8 " in out, out
    assert "SLURM_GPUS_PER_TASK=unset" in out, out
    assert "warning" not in log, log


@pytest.mark.parametrize("visible, nproc, source", [("", 2, "SLURM_NTASKS_PER_NODE (CPU only)"),
                                                    ("0,1", 2, "CUDA_VISIBLE_DEVICES=0,1")])
def test_train_sh_counts_visible_gpus_and_warns_about_unallocated_ones(tmp_path, visible, nproc, source):
    """No GPU allocated by Slurm on a node with 8: CUDA_VISIBLE_DEVICES decides how many the job may use (not
    nvidia-smi), no GPU is requested for the step, and the log warns about the GPUs Slurm did not allocate."""
    out, log = _train_sh_with_fakes(tmp_path, {"CUDA_VISIBLE_DEVICES": visible, "SLURM_NTASKS_PER_NODE": "2"},
                                    node_gpus=8)
    assert f"--nproc-per-node={nproc} " in out and "--gres" not in out, out
    assert f"{nproc} process(es) per node (from {source})" in log, log
    assert "warning: nvidia-smi lists 8 GPU(s) on this node but Slurm allocated 0 to this job" in log, log


def test_train_sh_warns_about_too_few_cpus_per_gpu(tmp_path):
    _, log = _train_sh_with_fakes(tmp_path, {"SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_ON_NODE": "8"}, node_gpus=8)
    assert "warning: 8 CPU(s) for 8 GPU process(es) on this node" in log and "--cpus-per-task=80" in log, log


def test_logs_folder_is_in_the_repository():
    """train.sh's default --output=logs/%x-%j.out needs logs/ to exist (Slurm does not create it): the
    repository tracks logs/.gitignore, which keeps the folder in every clone and the logs out of git."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "logs/.gitignore"], cwd=REPO,
                             capture_output=True, text=True)
    assert tracked.returncode == 0, f"logs/.gitignore is not tracked: {tracked.stderr}"
    ignored = subprocess.run(["git", "check-ignore", "-q", "logs/satpose-1.out"], cwd=REPO)
    assert ignored.returncode == 0, "job logs under logs/ are not ignored by git"
    assert "#SBATCH --output=logs/%x-%j.out" in TRAIN.read_text()


@pytest.mark.slurm
@pytest.mark.slow
def test_trainer_two_processes_complete(slurm_env, tmp_path):
    """The real trainer, 2 processes (--ntasks-per-node=2), log at train.sh's default logs/%x-%j.out."""
    run_dir, name = tmp_path / "run", f"satpose-ci-{uuid.uuid4().hex[:8]}"
    job_id = _submit(slurm_env, run_dir, [f"--job-name={name}", *TWO_PROCS],
                     ["--preset", "quickstart", *TINY, "train.max_steps=4"])
    log_file = REPO / "logs" / f"{name}-{job_id}.out"
    try:
        job = _wait_final(slurm_env, job_id, timeout=120, run_dir=run_dir)
        report = _report(slurm_env, job_id, run_dir)
        assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "0"), report
        assert job["StdOut"] == str(log_file) and log_file.is_file(), report
        log = log_file.read_text()
        assert "2 process(es) per node (from SLURM_NTASKS_PER_NODE" in log, report
        assert f"python {VENV_PYTHON}, module harness" in log, report
        assert log.rstrip().endswith("training finished"), report

        assert (run_dir / "checkpoints" / "step-00000004.pt").is_file(), report
        summary = json.loads((run_dir / "summary.json").read_text())
        assert (summary["world_size"], summary["steps"]) == (2, 4), report
        rows = _metrics(run_dir)
        starts = [r for r in rows if r["kind"] == "start"]
        assert [(r["world_size"], r["resumed_step"]) for r in starts] == [(2, 0)], report
        assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4], report
    finally:
        log_file.unlink(missing_ok=True)


@pytest.mark.slurm
@pytest.mark.slow
def test_trainer_signal_checkpoints_requeues_and_resumes(slurm_env, tmp_path):
    """SIGUSR1 to the batch shell mid-run (as the timer's --signal=B:USR1@N would send it): the trainer
    checkpoints and exits 85 on both ranks, train.sh requeues the job, the second run resumes from that
    checkpoint and finishes. The signal is sent once metrics.jsonl shows step 10 (scancel --batch is
    immediate; a --time=1 timer would fire 20..50 s after the start, during start-up or training)."""
    run_dir, max_steps = tmp_path / "run", 150  # ~0.15 s a step: the signal lands near step 10-30
    job_id = _submit(slurm_env, run_dir, [f"--output={tmp_path}/%x-%j.out", "--job-name=satpose-ci", *TWO_PROCS],
                     ["--preset", "quickstart", *TINY, f"train.max_steps={max_steps}"])
    _wait_train_step(slurm_env, job_id, run_dir, step=10, timeout=120)
    sent = _run(["scancel", "--batch", "--signal=USR1", job_id], slurm_env)
    assert sent.returncode == 0, f"scancel --batch --signal=USR1 failed: {sent.stderr}"
    job = _wait_final(slurm_env, job_id, timeout=240, run_dir=run_dir)
    report = _report(slurm_env, job_id, run_dir)
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "1"), report

    log = _log(slurm_env, job_id)
    saved = re.findall(r"preemption signal \(SIGUSR1\): checkpoint at step (\d+) written, exiting 85", log)
    assert len(saved) == 1, report
    step = int(saved[0])
    assert 10 <= step < max_steps, f"the signal did not arrive mid-run (checkpoint at step {step})\n{report}"
    order = ["SIGUSR1 received", f"checkpoint at step {step} written", "checkpointed (exit 85): requeueing",
             "SLURM_RESTART_COUNT=1", f"resumed from {run_dir}/checkpoints/step-{step:08d}.pt at step {step}",
             "training finished"]
    positions = [log.find(s) for s in order]
    assert -1 not in positions and positions == sorted(positions), f"{dict(zip(order, positions))}\n{report}"
    assert (run_dir / "checkpoints" / f"step-{step:08d}.pt").is_file(), report

    rows = _metrics(run_dir)
    starts = [i for i, r in enumerate(rows) if r["kind"] == "start"]
    assert len(starts) == 2, report
    assert [(rows[i]["world_size"], rows[i]["resumed_step"]) for i in starts] == [(2, 0), (2, step)], report
    # the first run stopped exactly at the checkpoint, the second continued from the step after it
    first = [r["step"] for r in rows[starts[0]:starts[1]] if r["kind"] == "train"]
    second = [r["step"] for r in rows[starts[1]:] if r["kind"] == "train"]
    assert first == list(range(1, step + 1)), report
    assert second == list(range(step + 1, max_steps + 1)), report
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["steps"], summary["world_size"]) == (max_steps, 2), report


def _training_workers(run_dir: Path) -> list[int]:
    """PIDs of the trainer processes (torchrun's workers, not the agent) of the job writing `run_dir`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError):
            continue
        if str(run_dir) in argv and "harness" in argv and not any("torchrun_exitcode" in a for a in argv):
            pids.append(int(proc.name))
    return sorted(pids)


@pytest.mark.slurm
@pytest.mark.slow
def test_killed_worker_restarts_inside_the_job(slurm_env, tmp_path):
    """SIGKILL one of the two training processes mid-run: torchrun (--max-restarts from train.sh) restarts
    both, they resume from the newest checkpoint, and the job COMPLETES in its first run (no requeue)."""
    run_dir, max_steps = tmp_path / "run", 120
    job_id = _submit(slurm_env, run_dir, [f"--output={tmp_path}/%x-%j.out", "--job-name=satpose-ci", *TWO_PROCS],
                     ["--preset", "quickstart", *TINY, f"train.max_steps={max_steps}", "train.checkpoint_every=5"])
    _wait_train_step(slurm_env, job_id, run_dir, step=10, timeout=120)
    workers = _training_workers(run_dir)
    assert len(workers) == 2, f"expected 2 training processes, found {workers}\n{_report(slurm_env, job_id, run_dir)}"
    os.kill(workers[-1], signal.SIGKILL)
    job = _wait_final(slurm_env, job_id, timeout=240, run_dir=run_dir)
    report = _report(slurm_env, job_id, run_dir)
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "0"), report
    rows = _metrics(run_dir)
    starts = [r for r in rows if r["kind"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed_step"] >= 5, report
    assert f"resumed from {run_dir}/checkpoints/step-" in _log(slurm_env, job_id), report
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["steps"], summary["world_size"]) == (max_steps, 2), report


@pytest.mark.slurm
def test_plain_srun_without_torchrun(slurm_env, tmp_path):
    """`srun -n 2 python -m harness train`: the runtime reads SLURM_PROCID/SLURM_NTASKS and the first host
    of the node list instead of torchrun's environment, and the two tasks train as one gloo group."""
    run_dir = tmp_path / "run"
    command = " ".join([str(VENV_PYTHON), "-m", "harness", "train", "--run-dir", str(run_dir), *TINY,
                        "train.max_steps=3"])
    out = _run(["sbatch", "--parsable", "--ntasks=2", "--cpus-per-task=1", "--time=5",
                f"--output={tmp_path / 'srun-%j.out'}", f"--wrap=srun {command}"], slurm_env)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip().split(";")[0]
    job = _wait_final(slurm_env, job_id, timeout=180, run_dir=run_dir)
    report = _report(slurm_env, job_id, run_dir)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), report
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["world_size"], summary["steps"]) == (2, 3), report
