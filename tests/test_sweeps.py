"""Ray Tune sweeps with real Ray (2 CPUs, this machine) and on the CI SLURM cluster.

- a 4-trial tiny grid completes, each trial trained once except one whose trainer is SIGKILLed after its
  first checkpoint: Tune retries it and it resumes from that checkpoint; a trial (the crashed one too)
  equals `harness train` run by hand with its config.yaml (bit-exact summary and weights on CPU);
- the driver killed (SIGKILL) mid-sweep, then `--resume`: only the unfinished trials run again;
- `sbatch slurm/sweep.sh` runs the same grid inside a job, signalled mid-way (the pre-end USR1): it
  requeues and its second run finishes the rest; the Ray cluster sweep.sh starts refuses
  clients without the job's token (none, or a wrong one) and accepts the job's.

Ray is an optional extra (`tune`): without it these tests skip, and fail under CI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from test_slurm_cluster import _log, _report, _run, _wait_final, slurm_env  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
SWEEP_SH = REPO / "slurm" / "sweep.sh"
PRESET = "sat-fig10-tiny"  # 4 points: 1- and 2-stack G x conditional or not
# CI-sized trials (seconds each): the tiny twins' 1000 steps of a 32-feature G cut to 64 steps of a 16-feature
# G at batch 4, validated and checkpointed every 16 steps.
CI_SIZE = ["train.max_steps=64", "train.val_every=16", "train.log_every=8", "train.batch_size=4",
           "model.features=16", "data.synthetic_train_size=64", "data.synthetic_val_size=16"]
POINTS = ["g1-cond", "g1-uncond", "g2-cond", "g2-uncond"]


def _need_ray():
    """Ray installed? Checked without importing it: Ray reads its authentication settings at import."""
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("CI"):
            pytest.fail("ray[tune] is not installed (the tune extra)")
        pytest.skip("ray[tune] is not installed (the tune extra)")


def _starts(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in rows if r["kind"] == "start"]


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """One Ray instance for the module's in-process sweeps (start-up costs seconds), with token
    authentication from a file of this test's (Ray 2.60 would otherwise write ~/.ray/auth_token)."""
    _need_ray()
    token = tmp_path_factory.mktemp("ray") / "token"
    token.write_text(os.urandom(32).hex())
    token.chmod(0o600)
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    if "ray" not in sys.modules:  # Ray reads these at import; imported already, it keeps its own default
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    import ray

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=100 * 1024**2, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


CRASHED = "g1-cond-seed0"  # its trainer is SIGKILLed after its first checkpoint; Tune retries the trial


def _crash_after_first_checkpoint(exp: Path, done: threading.Event, killed: list[int]) -> None:
    import psutil

    ckpt = exp / CRASHED / "checkpoints" / "step-00000016.pt"
    config = str((exp / CRASHED / "config.yaml").resolve())  # the full path: only this test's trainer, no other sweep's
    while not done.is_set() and not killed:
        if ckpt.is_file():
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmd = proc.info["cmdline"] or []
                if "train" in cmd and config in cmd:
                    proc.kill()
                    killed.append(proc.info["pid"])
        time.sleep(0.05)


@pytest.fixture(scope="module")
def tiny_sweep(ray_local, tmp_path_factory):
    from sweeps import run_sweep

    storage = tmp_path_factory.mktemp("sweeps")
    done, killed = threading.Event(), []
    crasher = threading.Thread(target=_crash_after_first_checkpoint, args=(storage / PRESET, done, killed))
    crasher.start()
    try:
        result = run_sweep(PRESET, CI_SIZE, seeds=1, storage=storage)
    finally:
        done.set()
        crasher.join()
    return result, killed


def test_tiny_grid_completes_and_a_crashed_trial_resumes(tiny_sweep):
    result, killed = tiny_sweep
    exp = result["experiment_dir"]
    assert killed, f"the trainer of {CRASHED} was not found to kill"
    assert result["errors"] == [] and result["unfinished"] == [] and result["without_summary"] == []
    for point in POINTS:
        run = exp / f"{point}-seed0"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 64 and summary["device"] == "cpu"
        starts = _starts(run)
        cfg = starts[0]["config"]
        assert cfg["model"]["stacks"] == int(point[1])
        assert cfg["discriminator"]["conditional"] == point.endswith("-cond")
        if run.name == CRASHED:  # retried by Tune (FailureConfig), resumed from its own checkpoint
            assert [s["resumed_step"] for s in starts] == [0, 16]
        else:
            assert len(starts) == 1  # trained once
    # Tune's own per-trial files: its CSV and JSON loggers, not its TensorBoard one (sweeps.runner, whose
    # import of tensorboardX pulled torch into the driver before the first trial: docs/sweeps.md)
    tune_dirs = list(exp.glob("run_trial_*"))
    assert len(tune_dirs) == len(POINTS)
    assert all((d / "result.json").is_file() and (d / "progress.csv").is_file() for d in tune_dirs)
    assert not list(exp.glob("run_trial_*/events.out.tfevents.*"))
    # FIFO runs a pending trial in a finished trial's actor (sweeps.runner: reuse_actors): with 2 slots, the
    # trial ending first hands its actor on, so the 4 trials ran in fewer actor processes than trials.
    pids = {json.loads((d / "result.json").read_text().splitlines()[-1])["pid"] for d in tune_dirs}
    assert len(pids) < len(POINTS), pids



# -- listening sockets of a sweep (docs/security.md, the `ray-*` rows) ---------------------------------------

class _SocketWatch(threading.Thread):
    """Polls the listening TCP sockets of this process's tree (the sweep driver is this process: Ray's GCS,
    raylet, agents, workers and the trials' trainers are its descendants) until stopped. Collects
    (process name, bind address, port), the name read while the process lives."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: set[tuple[str, str, int]] = set()
        self.stop = threading.Event()

    def run(self):
        import psutil
        from test_security import listening

        root, names = psutil.Process(), {}
        while not self.stop.is_set():
            for _, pid, ip, port in listening(root):
                if pid not in names:
                    try:
                        names[pid] = "driver" if pid == root.pid else _process_label(psutil.Process(pid))
                    except psutil.Error:
                        continue
                self.seen.add((names[pid], ip, port))
            self.stop.wait(0.5)


def _process_label(proc) -> str:
    """The process name, or for a plain Python process the script it runs (Ray's monitor.py)."""
    name = proc.name()
    if name.startswith("python") and "harness sweep" in " ".join(proc.cmdline()):  # a sweep run as a command
        return "driver"
    if name.startswith("python"):
        scripts = [Path(a).name for a in proc.cmdline()[1:] if a.endswith(".py")]
        return scripts[0] if scripts else name
    return name


@pytest.fixture(scope="module", autouse=True)
def _sweep_sockets():
    """Started before the module's first fixture (autouse), so it watches the whole in-process tiny sweep;
    `test_sweep_listening_sockets_are_documented` stops it."""
    watch = _SocketWatch()
    watch.start()
    yield watch
    watch.stop.set()
    watch.join(10)


# process label -> docs/security.md row; a `ray::` worker (idle, or a trial actor `ray::ImplicitFunc`) and the
# driver's core worker are `ray-worker`
_RAY_ROWS = {"gcs_server": "ray-gcs", "raylet": "ray-raylet", "ray::RuntimeEnvAgent": "ray-runtime-env-agent",
             "monitor.py": "ray-monitor", "driver": "ray-worker"}


def test_sweep_listening_sockets_are_documented(tiny_sweep, _sweep_sockets):
    """Every socket that listened while the tiny sweep ran (polled every 0.5 s) is one a `ray-*` row of
    docs/security.md names: its process, its bind address, its port (a number the row gives, or any ephemeral
    port where the row says `ephemeral`). The trials' trainers (single-process) open none."""
    import psutil
    from test_security import documented_listeners, ephemeral

    _sweep_sockets.stop.set()
    _sweep_sockets.join(30)
    seen, doc = sorted(_sweep_sockets.seen), documented_listeners()
    host = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    assert {"gcs_server", "raylet"} <= {name for name, *_ in seen}, f"Ray's sockets were not seen: {seen}"
    undocumented = []
    for name, ip, port in seen:
        key = _RAY_ROWS.get(name, "ray-worker" if name.startswith("ray::") else None)
        row = doc.get(key or "")
        named = row is not None and re.search(rf"\b{port}\b", row["port"]) is not None
        ok = row is not None and (named or (ephemeral(port) and "ephemeral" in row["port"]))
        if key == "ray-runtime-env-agent":  # Ray's idea of the host's address, whatever --node-ip-address says
            ok = ok and ip in host and "primary address" in row["bind"]
        else:
            ok = ok and f"`{ip}`" in row["bind"]
        if not ok:
            undocumented.append(f"{name} ({key or 'no row'}) listens on {ip} port {port}")
    assert undocumented == [], "listening sockets docs/security.md does not document:\n" + "\n".join(undocumented)


@pytest.mark.parametrize("run_name", ["g2-uncond-seed0", CRASHED])
def test_trial_equals_harness_train_by_hand(tiny_sweep, tmp_path, run_name):
    """Bit-exact on CPU, also for the trial that crashed and was resumed by Tune's retry."""
    result, _ = tiny_sweep
    trial = result["experiment_dir"] / run_name
    hand = tmp_path / "hand"
    out = subprocess.run([sys.executable, "-m", "harness", "train", "--config", str(trial / "config.yaml"),
                          "--run-dir", str(hand)], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (trial, hand))
    for key in ("value", "auc", "per_joint", "groups", "best", "steps"):
        assert a[key] == b[key], key
    ca, cb = (torch.load(d / "checkpoints" / "step-00000064.pt", map_location="cpu", weights_only=True)
              for d in (trial, hand))
    tensors = 0
    for model in ("generator", "discriminator"):  # weights and BatchNorm statistics
        for name, t in ca[model].items():
            assert torch.equal(t, cb[model][name]), f"{model}.{name}"
            tensors += 1
    assert tensors > 10


def _descendants(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def _alive(pids: list[int]) -> list[int]:
    import psutil

    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_killed_driver_resumes_only_unfinished_trials(tmp_path):
    _need_ray()
    storage = tmp_path / "sweeps"
    cmd = [sys.executable, "-m", "harness", "sweep", "--preset", PRESET, "--seeds", "1", "--storage", str(storage),
           *CI_SIZE]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    exp = storage / PRESET
    with (tmp_path / "first.log").open("w") as log:
        driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not list(exp.glob("*/summary.json")):
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no trial finished within 240 s"
        time.sleep(0.2)
    tree = _descendants(driver.pid)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 90  # Ray's processes and the trainers die with the driver
    while _alive(tree) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(tree), f"processes outlived the killed driver: {_alive(tree)}"
    # Read once everything is gone: a trainer at its last step may still have finished meanwhile.
    finished = {p.parent.name: p.stat().st_mtime_ns for p in exp.glob("*/summary.json")}
    started = {p.parent.name for p in exp.glob("*/metrics.jsonl")} - set(finished)  # cut off mid-training
    assert 1 <= len(finished) < len(POINTS), finished

    out = subprocess.run([*cmd, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for point in POINTS:
        run = exp / f"{point}-seed0"
        assert json.loads((run / "summary.json").read_text())["steps"] == 64
        if run.name in finished:  # not run again
            assert len(_starts(run)) == 1
            assert (run / "summary.json").stat().st_mtime_ns == finished[run.name]
        elif run.name in started:  # continued from its own checkpoint (or from scratch if it had none)
            assert len(_starts(run)) == 2
        else:
            assert len(_starts(run)) == 1
    assert (exp / "report.md").is_file()
    assert not list(exp.glob("run_trial_*/events.out.tfevents.*"))  # restored without the TensorBoard logger


def test_interrupted_asha_sweep_exits_85_and_resume_finishes_it(tmp_path):
    """Under ASHA a run without summary.json is either stopped early (marked) or unfinished: the driver
    interrupted (SIGUSR1, as slurm/sweep.sh forwards it) exits 85, so sweep.sh requeues, and `--resume`
    ends with every run finished or marked, none trained twice from scratch, here from the folder the
    experiment was moved to meanwhile (Tune pickles the scheduler, so nothing in it may name the old one)."""
    _need_ray()
    from sweeps.trial import stopped_early

    storage = tmp_path / "sweeps"
    cmd = [sys.executable, "-m", "harness", "sweep", "--preset", PRESET, "--seeds", "1", "--scheduler", "asha",
           "--storage", str(storage), *CI_SIZE]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    exp = storage / PRESET
    with (tmp_path / "first.log").open("w") as log:
        driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not list(exp.glob("*/summary.json")) and not list(exp.glob("*/stopped_early.json")):
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no trial ended within 240 s"
        time.sleep(0.2)
    driver.send_signal(signal.SIGUSR1)
    assert driver.wait(timeout=120) == 85, (tmp_path / "first.log").read_text()[-3000:]
    first = (tmp_path / "first.log").read_text()
    assert "sweep interrupted:" in first and "finish with --resume" in first, first[-3000:]
    ended = {r.name for r in (exp / f"{point}-seed0" for point in POINTS)
             if (r / "summary.json").is_file() or stopped_early(r)}
    assert len(ended) < len(POINTS), ended

    moved = tmp_path / "moved"
    storage.rename(moved)
    exp = moved / PRESET
    runs = [exp / f"{point}-seed0" for point in POINTS]
    cmd[cmd.index(str(storage))] = str(moved)
    out = subprocess.run([*cmd, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for run in runs:
        assert (run / "summary.json").is_file() != stopped_early(run), run.name
        if run.name in ended:
            assert len(_starts(run)) == 1, run.name  # not run again
    report = json.loads((exp / "report.json").read_text())
    assert report["missing"] == [] and sorted(report["stopped_early"]) == sorted(
        r.name for r in runs if stopped_early(r))


def _submit_sweep(env, tmp_path, extra_env: dict[str, str], args: list[str]) -> str:
    out = _run(["sbatch", "--parsable", f"--output={tmp_path}/%x-%j.out", "--cpus-per-task=2", "--time=5",
                "--signal=B:USR1@30", str(SWEEP_SH), *args],
               {**env, "SATPOSE_SWEEP_STORAGE": str(tmp_path / "sweeps"), "SATPOSE_SWEEP_NAME": "job", **extra_env})
    assert out.returncode == 0, f"sbatch failed: {out.stderr}"
    return out.stdout.strip().split(";")[0]


@pytest.mark.slurm
def test_sweep_job_preempted_requeues_and_completes(slurm_env, tmp_path):  # noqa: F811
    """The tiny grid as a SLURM job, signalled (USR1, as before the time limit) while trials train: the
    driver stops and saves, the job requeues itself, and the second run finishes only what was left."""
    _need_ray()
    job_id = _submit_sweep(slurm_env, tmp_path, {}, ["--preset", PRESET, "--seeds", "1", *CI_SIZE])
    exp = tmp_path / "sweeps" / "job"
    deadline = time.monotonic() + 200
    while not any('"kind": "train"' in p.read_text() for p in exp.glob("*/metrics.jsonl")):
        assert time.monotonic() < deadline, _report(slurm_env, job_id)
        time.sleep(0.5)
    _run(["scancel", "--batch", "--signal=USR1", job_id], slurm_env)
    finished = {p.parent.name for p in exp.glob("*/summary.json")}
    job = _wait_final(slurm_env, job_id, timeout=300)
    report = _report(slurm_env, job_id)
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "1"), report
    assert "interrupted and saved (exit 85): requeueing" in report
    for point in POINTS:
        run = exp / f"{point}-seed0"
        assert json.loads((run / "summary.json").read_text())["steps"] == 64, report
        if run.name in finished:
            assert len(_starts(run)) == 1, report
    assert (exp / "report.md").is_file(), report
    assert oct((exp / "ray_auth_token").stat().st_mode & 0o777) == "0o600"
    assert (exp / "ray_auth_token").read_text() not in _log(slurm_env, job_id)
    assert not Path(f"/tmp/ray_{job_id}").exists(), "the job's Ray temp dir was left behind"


@pytest.mark.slurm
def test_sweep_job_ray_requires_the_token(slurm_env, tmp_path):  # noqa: F811
    _need_ray()
    env = {"SATPOSE_SWEEP_MODULE": "sweep_probe", "PYTHONPATH": str(REPO / "tests")}
    job_id = _submit_sweep(slurm_env, tmp_path, env, ["--preset", PRESET, *CI_SIZE])
    job = _wait_final(slurm_env, job_id, timeout=200)
    report = _report(slurm_env, job_id)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), report
    probe = json.loads((tmp_path / "sweeps" / "job" / "auth_probe.json").read_text())
    assert probe["token"]["connected"], probe
    assert not probe["no_token"]["connected"] and not probe["wrong_token"]["connected"], probe
    assert "InvalidAuthToken" in probe["no_token"]["why"] and "InvalidAuthToken" in probe["wrong_token"]["why"]
    assert probe["token_file_mode"] == "0o600"
    base = 10000 + int(job_id) % 50 * 100
    listening = {(s["name"], s["port"]) for s in probe["listening"]}
    assert {("gcs_server", base), ("raylet", base + 1), ("raylet", base + 2)} <= listening, (base, listening)
    daemons = [p for name, p in listening if name in ("gcs_server", "raylet") or name.startswith("python")]
    assert all(base <= p < base + 100 for p in daemons), (base, listening)  # incl. the autoscaler's metrics


def test_asha_scheduler_counts_validations():
    """ASHA's time unit is one report per validation (+ the final summary report)."""
    _need_ray()
    from ray.tune.schedulers import ASHAScheduler

    from sweeps.presets import get_preset
    from sweeps.runner import _scheduler
    from sweeps.trial import TrialSpec

    spec = TrialSpec(get_preset(PRESET), ("train.max_steps=96", "train.val_every=16"), "/tmp/x", str(REPO), 1, 0)
    asha = _scheduler("asha", spec)
    assert isinstance(asha, ASHAScheduler) and asha._max_t == 96 // 16 + 1
    assert "/tmp/x" not in repr(vars(pickle.loads(pickle.dumps(asha))))  # Tune pickles it: no path kept in it
    assert _scheduler("fifo", spec) is None


def test_asha_marks_the_trials_it_stops_early_and_only_those(tmp_path):
    """An interrupted ASHA sweep is told apart from a finished one by the mark ASHA leaves in each run dir
    it stops early: a STOP before max_t marks, reaching max_t (the end) and running on do not. The mark goes
    to the trial's own experiment folder (where `Tuner.restore` found it), not one kept in the scheduler."""
    _need_ray()
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from sweeps.asha import MarkingASHA
    from sweeps.trial import STOPPED_EARLY, stopped_early

    asha = MarkingASHA(time_attr="training_iteration", metric="score", mode="max", max_t=5,
                       grace_period=1, reduction_factor=2)
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"point": f"p{i}", "seed": 0},
                              remote_experiment_path=str(tmp_path)) for i in range(6)]
    for t in trials:
        (tmp_path / f"{t.config['point']}-seed0").mkdir()
        asha.on_trial_add(None, t)
    decisions = {t.trial_id: asha.on_trial_result(None, t, {"training_iteration": 1, "score": 10.0 - i})
                 for i, t in enumerate(trials)}  # each worse than the ones before it
    stopped = {k for k, d in decisions.items() if d == TrialScheduler.STOP}
    assert stopped and len(stopped) < len(trials), decisions
    for i, t in enumerate(trials):
        run = tmp_path / f"p{i}-seed0"
        assert stopped_early(run) == (t.trial_id in stopped), (t.trial_id, decisions)
    mark = json.loads((tmp_path / f"{trials[-1].config['point']}-seed0" / STOPPED_EARLY).read_text())
    assert mark == {"by": "asha", "training_iteration": 1, "step": None, "score": 5.0, "max_t": 5}
    best = trials[0]  # runs to max_t: ASHA stops it there, which is its end, not an early stop
    assert asha.on_trial_result(None, best, {"training_iteration": 5, "score": 99.0}) == TrialScheduler.STOP
    assert not stopped_early(tmp_path / "p0-seed0")
    moved = tmp_path / "moved"  # the experiment restored from another folder: the mark follows the trial
    (moved / "p9-seed0").mkdir(parents=True)
    late = SimpleNamespace(trial_id="t9", config={"point": "p9", "seed": 0}, remote_experiment_path=str(moved))
    asha.on_trial_add(None, late)
    assert asha.on_trial_result(None, late, {"training_iteration": 1, "score": -1.0}) == TrialScheduler.STOP
    assert stopped_early(moved / "p9-seed0") and not (tmp_path / "p9-seed0").exists()
    # the stop decision raced the trial's end: it wrote its summary.json after the mark, so it finished
    (moved / "p9-seed0" / "summary.json").write_text("{}")
    assert not stopped_early(moved / "p9-seed0") and (moved / "p9-seed0" / STOPPED_EARLY).is_file()


def test_ray_overhead_script_times_a_real_start_and_stop(tmp_path):
    """scripts/ray_overhead.py --start-stop (the figure in docs/sweeps.md) still runs: a real local Ray started
    as the driver starts it, and stopped. Its times are printed, not judged (speed is a benchmark's job)."""
    _need_ray()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([sys.executable, "scripts/ray_overhead.py", "--start-stop", "1", "--work", str(tmp_path)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    start, stop = (float(x.split(" s")[0]) for x in re.findall(r"(?:start|stop) ([\d.]+ s)", out.stdout)[:2])
    assert start > 0 and stop > 0 and "start + stop: median" in out.stdout, out.stdout
    assert (tmp_path / "ray0" / "ray_auth_token").is_file()  # token authentication, as the sweep driver uses


def test_ray_overhead_script_attaches_to_a_head_started_once(tmp_path):
    """--ray attached (docs/sweeps.md, "Many small sweeps on one machine"): a token-authenticated head on
    loopback started once, the driver connecting through RAY_ADDRESS and disconnecting; the head is gone
    after the script. Times printed, not judged."""
    _need_ray()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([sys.executable, "scripts/ray_overhead.py", "--start-stop", "1", "--ray", "attached",
                          "--work", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "Ray head up at 127.0.0.1:" in out.stdout and "ray.init(address=RAY_ADDRESS)" in out.stdout, out.stdout
    assert (tmp_path / "ray_auth_token").is_file() and not (tmp_path / "ray0" / "ray_auth_token").exists()
    gcs = re.search(r"127\.0\.0\.1:(\d+)", out.stdout).group(1)
    alive = subprocess.run(["pgrep", "-f", f"gcs_server.*{gcs}"], capture_output=True, text=True)
    assert alive.returncode == 1, f"the head's GCS still runs: {alive.stdout}"
