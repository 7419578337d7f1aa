"""`torchrun` that exits with its workers' exit code, for slurm/train.sh.

Usage: python slurm/torchrun_exitcode.py [torchrun arguments]   (the same arguments as `torchrun`)

It runs `torch.distributed.run.main` (what the `torchrun` command runs) with two differences:
  - torchrun exits 1 whenever a worker fails; this exits with the workers' code instead, so that
    slurm/train.sh can tell "checkpointed, please requeue" (85) from a crash. Rule, over the failed
    workers of this node: the first (earliest) positive exit code other than 85 if there is one (a real
    error wins), else 85 if a worker exited 85, else 128 + the signal number of the first worker killed
    by a signal (workers that torchrun itself terminated after a peer exited report a signal).
  - Exit 85 is never restarted: under `--max-restarts N` torchrun restarts a failed worker group, which is
    what a killed or crashed worker needs, but workers that exited 85 have checkpointed for a requeue and
    must stop (a restarted group would train on until the time limit kills the job unrequeued). When a
    worker of this node exits 85 the agent's remaining restarts are set to 0 (`no_restart_after_preemption`).
  - SIGUSR1 is ignored by this agent process. Slurm delivers the pre-end SIGUSR1 to every process of the
    job step (proctrack/cgroup and proctrack/linuxproc signal the whole step), workers included; the
    agent must survive it (the default action of SIGUSR1 is to terminate, and torchrun does not handle
    it). Workers inherit the "ignore" until they install their own handler with signal.signal.
"""

from __future__ import annotations

import signal
import sys

PREEMPTED_EXIT_CODE = 85


def workers_exit_code(exitcodes_in_order: list[int]) -> int:
    """The process exit code for failed workers' codes listed earliest first (negative = -signal)."""
    positive = [c for c in exitcodes_in_order if c > 0]
    errors = [c for c in positive if c != PREEMPTED_EXIT_CODE]
    if errors:
        return errors[0] if errors[0] < 256 else 1
    if positive:
        return PREEMPTED_EXIT_CODE
    signals = [-c for c in exitcodes_in_order if c < 0]
    return 128 + signals[0] if signals else 1


def no_restart_after_preemption() -> None:
    """Make torchrun's local agent give up instead of restarting workers that exited 85 (see above). torch
    has no option for this; the agent's restart budget is `_remaining_restarts` (torch 1.9 .. 2.13)."""
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    monitor = LocalElasticAgent._monitor_workers

    def monitor_workers(self, worker_group):
        result = monitor(self, worker_group)
        if result.is_failed() and any(f.exitcode == PREEMPTED_EXIT_CODE for f in result.failures.values()):
            if not hasattr(self, "_remaining_restarts"):
                raise RuntimeError("torchrun_exitcode: this torch's elastic agent has no _remaining_restarts; "
                                   "cannot stop it from restarting checkpointed (exit 85) workers")
            self._remaining_restarts = 0
        return result

    LocalElasticAgent._monitor_workers = monitor_workers


def main() -> int:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    no_restart_after_preemption()

    try:
        torchrun_main()
    except ChildFailedError as err:
        failures = sorted(err.failures.items(), key=lambda kv: (kv[1].timestamp, kv[0]))
        code = workers_exit_code([f.exitcode for _, f in failures])
        if code != PREEMPTED_EXIT_CODE:  # torchrun's failure table, printed when torchrun dies of it
            print(err, file=sys.stderr)
        print(f"torchrun_exitcode: workers failed, exit codes by rank "
              f"{ {rank: f.exitcode for rank, f in sorted(err.failures.items())} } -> exit {code}",
              file=sys.stderr, flush=True)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
