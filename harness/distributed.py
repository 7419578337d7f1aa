"""Process-group runtime: one process per GPU (or per CPU worker), started by torchrun or plain srun.

`init_runtime()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) or, when
launched by `srun` without torchrun, SLURM's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the first host
of SLURM_JOB_NODELIST). NCCL on GPUs, gloo on CPU. A single process with neither runs without a group.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from data_pipelines.errors import UserError


@dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """All-reduce mean over ranks (identity for one process)."""
        if not self.distributed:
            return values
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any rank (rank-consensus decisions, e.g. preemption)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def shutdown(self, clean: bool = True) -> None:
        """Leave the group. After a clean finish all ranks first meet at a barrier: otherwise a rank that
        finishes first can tear down its connections while a peer's last receive is still in flight
        (gloo then aborts the peer). After an error there is no barrier (peers may be gone)."""
        if dist.is_available() and dist.is_initialized():
            try:
                if clean:
                    dist.barrier()
            finally:
                dist.destroy_process_group()


def _slurm_master_addr() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
        return out[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return nodelist.split(",")[0]


def launch_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's env, else SLURM's, else a single process."""
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
        os.environ.setdefault("MASTER_ADDR", _slurm_master_addr())
        job = int(os.environ.get("SLURM_JOB_ID", "0"))
        os.environ.setdefault("MASTER_PORT", str(20000 + job % 20000))
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
        return rank, world, int(os.environ.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def init_runtime(device: str = "auto", backend: str = "auto", timeout_s: int = 600) -> Runtime:
    rank, world, local_rank = launch_env()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("train.device=cuda but no CUDA device is visible")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
        # Denormal floats appear in BatchNorm/conv gradients of the hourglass and make x86 CPUs 3-10x slower;
        # flushing them to zero is deterministic and numerically irrelevant here.
        torch.set_flush_denormal(True)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise UserError("distributed.backend=nccl needs CUDA devices; use gloo on CPU")
    if world == 1:
        return Runtime(0, 1, 0, dev, None)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timeout,
                                store=restart_safe_store(world, timeout),
                                device_id=dev if dev.type == "cuda" else None)
    return Runtime(rank, world, local_rank, dev, backend)


def restart_safe_store(world: int, timeout: datetime.timedelta) -> dist.Store | None:
    """The store for the process group: None (torch's env:// rendezvous) except under a single torchrun
    agent that shares its TCPStore with the workers. That agent keeps ONE store across `--max-restarts`
    restarts (static rendezvous always, c10d while TCPStore sharing is on), so a restarted worker can read
    the gloo/NCCL addresses its dead predecessors left there and fail with "connection refused" or hang
    (measured: 5 of 9 restarts failed on torch 2.13; pytorch/pytorch#135712). Workers of one agent agree
    on TORCHELASTIC_RESTART_COUNT, so it names a fresh key space per attempt. With several agents the
    counts can differ between nodes, so there slurm/train.sh turns the sharing off
    (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1) and each rendezvous round gets its own store."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or env.get("GROUP_WORLD_SIZE", "1") != "1":
        return None
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world, is_master=False, timeout=timeout)
    return dist.PrefixStore(f"satpose/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
