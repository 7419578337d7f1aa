"""Stand-in for `python -m harness train` under slurm/train.sh (tests/test_slurm_cluster.py).

torchrun starts it as `python -m slurm_probe train --run-dir DIR --resume auto --mode MODE [--wait S]`
(with tests/ on PYTHONPATH). Every rank joins a gloo process group, checks the world size with an
all_reduce of its rank, and writes DIR/probe-restart{R}-rank{K}.json (R = SLURM_RESTART_COUNT) with what
it saw. Modes:
  complete  exit 0.
  fail      rank 1 (or 0 in a 1-process world) exits 3, the others 0: a crash, not a preemption.
  preempt   first run: write DIR/ready-rank{K}, wait for SIGUSR1 (at most --wait seconds, else exit 4),
            barrier, rank 0 writes DIR/checkpoint, barrier, every rank exits 85 (the trainer's
            "checkpointed, please requeue" code). A restarted run (SLURM_RESTART_COUNT >= 1) exits 0 if
            DIR/checkpoint exists (what --resume auto would load), else 5.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

PREEMPTED_EXIT_CODE = 85
ENV_KEYS = ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "SLURM_PROCID", "SLURM_NODEID", "MASTER_ADDR",
            "MASTER_PORT", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS", "TORCHELASTIC_RUN_ID")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="slurm_probe")
    parser.add_argument("command", choices=["train"])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--resume", required=True)
    parser.add_argument("--mode", choices=["complete", "fail", "preempt"], required=True)
    parser.add_argument("--wait", type=float, default=90.0)
    args = parser.parse_args(argv)

    got_usr1: list[float] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: got_usr1.append(time.time()))
    started = time.time()

    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    total = torch.tensor([float(rank)])
    dist.all_reduce(total)
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    args.run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "rank": rank, "world_size": world, "rank_sum": total.item(), "argv": argv, "pid": os.getpid(),
        "started": started, "env": {k: os.environ.get(k) for k in ENV_KEYS},
    }
    out = args.run_dir / f"probe-restart{restart}-rank{rank}.json"

    def write(**extra: object) -> None:
        out.write_text(json.dumps({**record, **extra}, indent=1))

    code = 0
    if args.mode == "fail":
        code = 3 if rank == min(1, world - 1) else 0
    elif args.mode == "preempt" and restart == 0:
        (args.run_dir / f"ready-rank{rank}").write_text(str(time.time()))
        deadline = time.time() + args.wait
        while not got_usr1 and time.time() < deadline:
            time.sleep(0.05)
        if not got_usr1:
            write(usr1=None)
            return 4
        dist.barrier()
        if rank == 0:
            (args.run_dir / "checkpoint").write_text(json.dumps({"world_size": world}))
        code = PREEMPTED_EXIT_CODE
    elif args.mode == "preempt":
        code = 0 if (args.run_dir / "checkpoint").is_file() else 5
    write(usr1=got_usr1[0] if got_usr1 else None, exit_code=code)
    # Every rank has written its record (and the checkpoint exists) before any rank exits: torchrun
    # terminates the remaining workers as soon as one exits non-zero.
    dist.barrier()
    dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
