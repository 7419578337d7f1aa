"""Ray's start-up and teardown against one tiny trial (docs/sweeps.md, "Measured here").

    python scripts/ray_overhead.py [--rounds 3] [--point sat-fig10-tiny:g1-cond]
                                   [--also sat-fig11-tiny:g1-none ...] [--work DIR]

Each round, in turn: a one-trial sweep (`python -m harness sweep` in a fresh process on a copy of the preset
reduced to that point, one seed, local Ray, report included), then that trial's `config.yaml` trained by
hand (`python -m harness train --config`, OMP_NUM_THREADS=1, as Ray runs a 1-CPU trial), then each `--also`
point's config by hand. Every run is timed by wall clock from this process. Ray's cost = sweep - the same
trial by hand, per round; the table gives it against each trial's time by hand. Run it on an idle machine.

    python scripts/ray_overhead.py --start-stop N

times only Ray's own start-up and teardown, N times, each in a fresh process: `import ray` + `ray.init` as
the sweep driver starts a local Ray (sweeps.runner._start_ray), then `ray.shutdown`.
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


def start_stop(rounds: int, work: Path, env: dict[str, str]) -> None:
    rows = []
    for r in range(rounds):
        (work / f"ray{r}").mkdir()
        out = subprocess.run([sys.executable, "-c", START_STOP, str(work / f"ray{r}")], cwd=REPO, env=env,
                             capture_output=True, text=True, check=True)
        rows.append([float(x) for x in out.stdout.split()[-3:]])
        print(f"round {r + 1}: start {rows[-1][0]:.2f} s, stop {rows[-1][1]:.2f} s", flush=True)
    med = statistics.median
    for i, what in enumerate(["import ray + ray.init (sweeps.runner._start_ray)", "ray.shutdown",
                              "importing sweeps.runner before it"]):
        v = [row[i] for row in rows]
        print(f"{what}: median {med(v):.2f} s ({min(v):.2f}-{max(v):.2f})")
    total = [a + b for a, b, _ in rows]
    print(f"start + stop: median {med(total):.2f} s ({min(total):.2f}-{max(total):.2f}), {rounds} rounds")


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... exited {out.returncode}:\n{out.stderr[-3000:]}")
    return seconds


def _config(preset: str, point: str, work: Path) -> Path:
    """The trial's config.yaml, as the sweep writes it (sweeps.trial.trial_config), for the runs by hand."""
    from sweeps.presets import get_preset
    from sweeps.trial import TrialSpec, trial_config, write_config

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
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from harness.files import write_json

    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    if args.start_stop:
        return start_stop(args.start_stop, work, env)
    hand_env = {**env, "OMP_NUM_THREADS": "1"}
    preset, point = args.point.split(":")
    hand = {spec: _config(*spec.split(":"), work) for spec in [args.point, *args.also]}
    times: dict[str, list[float]] = {"sweep": [], **{spec: [] for spec in hand}}
    for r in range(args.rounds):
        storage = work / f"sweep{r}"
        times["sweep"].append(_timed([sys.executable, "-c", SWEEP, preset, point, str(storage)], env))
        for spec, config in hand.items():
            times[spec].append(_timed([sys.executable, "-m", "harness", "train", "--config", str(config),
                                       "--run-dir", str(work / f"hand{r}-{spec.replace(':', '@')}")], hand_env))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    ray = [s - h for s, h in zip(times["sweep"], times[args.point])]
    med = statistics.median
    print(f"\nmachine: {os.uname().nodename}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at the end; "
          f"{args.rounds} rounds, medians (range)\n")
    print("| | wall | Ray's cost (sweep - trial by hand, per round) / this |\n|---|---|---|")
    print(f"| one-trial sweep of `{args.point}` | {med(times['sweep']):.2f} s ({min(times['sweep']):.2f}-"
          f"{max(times['sweep']):.2f}) | Ray's cost {med(ray):.2f} s ({min(ray):.2f}-{max(ray):.2f}) |")
    for spec in hand:
        t = times[spec]
        print(f"| `{spec}` by hand | {med(t):.2f} s ({min(t):.2f}-{max(t):.2f}) | {100 * med(ray) / med(t):.1f}% |")
    write_json(work / "times.json", {"times": times, "ray_cost": ray})


if __name__ == "__main__":
    main()
