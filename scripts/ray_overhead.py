"""Ray's start-up and teardown against one tiny trial (docs/sweeps.md, "Measured here").

    python scripts/ray_overhead.py [--rounds 3] [--point sat-fig10-tiny:g1-cond]
                                   [--also sat-fig11-tiny:g1-none ...] [--work DIR]

Each round, in turn: a one-trial sweep (`python -m harness sweep` in a fresh process on a copy of the preset
reduced to that point, one seed, report included), then that trial's `config.yaml` trained by hand
(`python -m harness train --config`, OMP_NUM_THREADS=1, as Ray runs a 1-CPU trial), then each `--also`
point's config by hand. Every run is timed by wall clock from this process. Ray's cost, two ways per round:
sweep - the same trial by hand (separate runs: the machine's drift between them enters), and sweep - its own
trainer (the trial's config.yaml to its summary.json, in the same run; the trainer's ~1 s exit after its
summary counts as Ray's here). Run it on an idle machine.

    python scripts/ray_overhead.py --start-stop N

times only Ray's own start-up and teardown, N times, each in a fresh process: `import ray` + `ray.init` as
the sweep driver starts a local Ray (sweeps.runner._start_ray), then `ray.shutdown`.

    --ray local | attached | both

local (default): each sweep starts and stops its own Ray, as `harness sweep` does by itself. attached: a
Ray head started once runs throughout (docs/sweeps.md, "Many small sweeps on one machine": `ray start --head
--block`, loopback, token authentication, no dashboard), and each fresh process (sweep or start-stop round)
connects to it through RAY_ADDRESS, as the sweep driver does, then disconnects. both: each round runs a
local and an attached sweep (with the head idle beside the local one). The runs by hand run beside the head.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from harness.files import write_json  # noqa: E402
from sweeps.presets import get_preset  # noqa: E402
from sweeps.runner import _write_token  # noqa: E402
from sweeps.trial import TrialSpec, trial_config, write_config  # noqa: E402

# Registers "<preset>@<point>" (the preset reduced to one point) in the child, then runs the sweep CLI.
SWEEP = """
import sys
from dataclasses import replace
from sweeps import presets
from harness.cli import main
p = presets.PRESETS[sys.argv[1]]
name = f"{p.name}@{sys.argv[2]}"
presets.PRESETS[name] = replace(p, name=name, points={sys.argv[2]: p.points[sys.argv[2]]}, comparisons=())
sys.exit(main(["sweep", "--preset", name, "--seeds", "1", "--storage", sys.argv[3]]))
"""


# In a fresh process: Ray started as the sweep driver starts it, then stopped; prints the two times.
START_STOP = """
import sys, time
from pathlib import Path
t0 = time.perf_counter()
from sweeps.runner import _start_ray
t1 = time.perf_counter()
assert _start_ray(Path(sys.argv[1]), num_cpus=2)
import ray
t2 = time.perf_counter()
ray.shutdown()
t3 = time.perf_counter()
print(t2 - t1, t3 - t2, t1 - t0)
"""


def start_stop(rounds: int, work: Path, env: dict[str, str], attach: bool = False) -> None:
    rows = []
    for r in range(rounds):
        (work / f"ray{r}").mkdir()
        out = subprocess.run([sys.executable, "-c", START_STOP, str(work / f"ray{r}")], cwd=REPO, env=env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"round {r + 1} exited {out.returncode}:\n{out.stderr[-3000:]}")
        rows.append([float(x) for x in out.stdout.split()[-3:]])
        print(f"round {r + 1}: start {rows[-1][0]:.2f} s, stop {rows[-1][1]:.2f} s", flush=True)
    med = statistics.median
    start = "import ray + ray.init(address=RAY_ADDRESS)" if attach else "import ray + ray.init"
    for i, what in enumerate([f"{start} (sweeps.runner._start_ray)",
                              "ray.shutdown" + (" (disconnect)" if attach else ""),
                              "importing sweeps.runner before it"]):
        v = [row[i] for row in rows]
        print(f"{what}: median {med(v):.2f} s ({min(v):.2f}-{max(v):.2f})")
    total = [a + b for a, b, _ in rows]
    print(f"start + stop: median {med(total):.2f} s ({min(total):.2f}-{max(total):.2f}), {rounds} rounds")


def _head(work: Path, env: dict[str, str]) -> tuple[subprocess.Popen, dict[str, str], Path]:
    """A local Ray head as docs/sweeps.md starts one for many sweeps, and the environment that reaches it."""
    import socket
    import tempfile

    token = work / "ray_auth_token"
    _write_token(token)
    with socket.socket() as s:  # a free port for the GCS
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = Path(tempfile.mkdtemp(prefix="ray_", dir="/tmp"))  # short: Ray's socket paths live in it
    env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    ray_bin = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                             "--disable-usage-stats", f"--temp-dir={temp}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(work / "ray_head.log", "w"))
    env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    probe = "import ray; ray.init(log_to_driver=False); ray.shutdown()"
    deadline = time.monotonic() + 120
    while subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode != 0:
        if head.poll() is not None or time.monotonic() > deadline:
            head.terminate()
            shutil.rmtree(temp, ignore_errors=True)
            raise SystemExit(f"the Ray head did not come up: {(work / 'ray_head.log').read_text()[-3000:]}")
        time.sleep(1)
    print(f"Ray head up at {env['RAY_ADDRESS']} (token authentication)", flush=True)
    return head, env, temp


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... exited {out.returncode}:\n{out.stderr[-3000:]}")
    return seconds


def _config(preset: str, point: str, work: Path) -> Path:
    """The trial's config.yaml, as the sweep writes it (sweeps.trial.trial_config), for the runs by hand."""
    spec = TrialSpec(get_preset(preset), (), str(work), str(REPO), 1, 0)
    path = work / f"{preset}@{point}.yaml"
    write_config(trial_config(spec, point, 0), path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--point", default="sat-fig10-tiny:g1-cond", help="PRESET:POINT run as a one-trial sweep")
    ap.add_argument("--also", nargs="*", default=["sat-fig11-tiny:g1-none"], help="PRESET:POINT timed by hand")
    ap.add_argument("--work", type=Path, default=Path("runs/ray_overhead"))
    ap.add_argument("--start-stop", type=int, metavar="N", help="time only Ray's start-up and teardown, N times")
    ap.add_argument("--ray", choices=("local", "attached", "both"), default="local",
                    help="local: each sweep starts its own Ray (the default of `harness sweep`); attached: each "
                         "connects to a Ray head started once (docs/sweeps.md); both: each round runs the two")
    args = ap.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    envs, head, temp = {}, None, None
    if args.ray in ("local", "both"):
        envs["local"] = env
    if args.ray in ("attached", "both"):
        head, envs["attached"], temp = _head(work, env)
    try:
        if args.start_stop:
            if len(envs) != 1:
                raise SystemExit("--start-stop times one of --ray local / attached")
            start_stop(args.start_stop, work, *envs.values(), args.ray == "attached")
        else:
            rounds(args, work, env, envs)
    finally:
        if head is not None:  # the --block process takes its Ray down (not `ray stop`: other users' Ray)
            head.terminate()
            head.wait(timeout=60)
            shutil.rmtree(temp, ignore_errors=True)


def _trainer_span(storage: Path) -> float:
    """Seconds from the trial's config.yaml (written as its trial function starts the trainer) to its
    summary.json (written by the trainer just before it exits): the trainer inside the sweep, measured in
    the same run as the sweep's wall time, so the machine's drift between separate runs does not enter."""
    run = next(storage.glob("*/*/summary.json")).parent
    return (run / "summary.json").stat().st_mtime - (run / "config.yaml").stat().st_mtime


def rounds(args, work: Path, env: dict[str, str], envs: dict[str, dict[str, str]]) -> None:
    """`envs`: the sweeps' environment per Ray mode; the runs by hand get `env` (no Ray settings)."""
    hand_env = {**env, "OMP_NUM_THREADS": "1"}
    preset, point = args.point.split(":")
    hand = {spec: _config(*spec.split(":"), work) for spec in [args.point, *args.also]}
    sweeps = [f"sweep ({mode} Ray)" for mode in envs]
    times: dict[str, list[float]] = {**{k: [] for k in sweeps}, **{spec: [] for spec in hand}}
    outside: dict[str, list[float]] = {k: [] for k in sweeps}
    for r in range(args.rounds):
        for (mode, sweep_env), key in zip(envs.items(), sweeps):
            storage = work / f"sweep{r}-{mode}"
            times[key].append(_timed([sys.executable, "-c", SWEEP, preset, point, str(storage)], sweep_env))
            outside[key].append(times[key][-1] - _trainer_span(storage))
        for spec, config in hand.items():
            times[spec].append(_timed([sys.executable, "-m", "harness", "train", "--config", str(config),
                                       "--run-dir", str(work / f"hand{r}-{spec.replace(':', '@')}")], hand_env))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    med = statistics.median
    rng = lambda v: f"{med(v):.2f} s ({min(v):.2f}-{max(v):.2f})"  # noqa: E731
    print(f"\nmachine: {os.uname().nodename}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at the end; "
          f"{args.rounds} rounds, medians (range)\n")
    print("| | wall | sweep - trial by hand (per round) | sweep - its own trainer (config.yaml to summary.json) |")
    print("|---|---|---|---|")
    ray = {k: [s - h for s, h in zip(times[k], times[args.point])] for k in sweeps}
    for k in sweeps:
        print(f"| one-trial {k} of `{args.point}` | {rng(times[k])} | {rng(ray[k])} | {rng(outside[k])} |")
    for spec in hand:
        t = times[spec]
        print(f"| `{spec}` by hand | {rng(t)} | " + " / ".join(f"{100 * med(ray[k]) / med(t):.1f}%" for k in sweeps)
              + " | " + " / ".join(f"{100 * med(outside[k]) / med(t):.1f}%" for k in sweeps) + " |")
    write_json(work / "times.json", {"times": times, "sweep_minus_hand": ray, "sweep_minus_trainer": outside})


if __name__ == "__main__":
    main()
