"""Preemption as a component of the loop: SIGUSR1/SIGTERM (SLURM's pre-end signal, scancel, a cluster's
preemption) ask every rank to stop; the loop checkpoints and exits EXIT_PREEMPTED, which slurm/train.sh
requeues.

A single process acts on its own flag after the next step. Ranks of a data-parallel run must agree, which
costs a collective and a host synchronisation, so they compare flags every `every` steps (train.log_every):
the run stops at most that many steps after the signal, well inside SLURM's warning time.
"""

from __future__ import annotations

import signal

from harness.distributed import Runtime

# Exit code of a run that checkpointed on a preemption signal and wants to be requeued (slurm/train.sh).
EXIT_PREEMPTED = 85


class Preempted(Exception):
    """Raised after the preemption checkpoint is written; the CLI exits with EXIT_PREEMPTED."""


class Preemption:
    def __init__(self, rt: Runtime, every: int):
        self.rt, self.every = rt, max(1, every)
        self.signal: str | None = None

    def install(self) -> None:
        def handler(signum, _frame):
            self.signal = signal.Signals(signum).name
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, handler)

    def requested(self, step: int) -> bool:
        """True on every rank once a stop was asked for on any rank (checked at this step when due)."""
        if not self.rt.distributed:
            return self.signal is not None
        return step % self.every == 0 and self.rt.any(self.signal is not None)
