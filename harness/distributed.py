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
from typing import Any

import torch
import torch.distributed as dist

from data_pipelines.errors import UserError
from harness.precision import cpu_has_bf16_kernels


@dataclass
class Runtime:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group
    # A gloo group for host-side consensus (preemption, empty batches) next to an NCCL group: a flag agreed on
    # through NCCL is a device tensor, and reading it back would make the host wait for the GPU's queue.
    control: Any = None

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
        if self.control is not None:
            t = torch.tensor([1.0 if flag else 0.0])
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        else:
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


def expand_hostlist(hostlist: str) -> list[str]:
    """SLURM's compressed host list as host names, in order: `node[1-2]` -> node1, node2;
    `a[01-03,7],b5` -> a01, a02, a03, a7, b5; `r[1-2]-n[1-2]` -> r1-n1, r1-n2, r2-n1, r2-n2 (what
    `scontrol show hostnames` prints). A malformed list is a UserError naming it."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(hostlist):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth not in (0, 1):
            raise UserError(f"SLURM host list {hostlist!r}: unbalanced brackets")
        if ch == "," and depth == 0:
            items.append(hostlist[start:i])
            start = i + 1
    if depth:
        raise UserError(f"SLURM host list {hostlist!r}: unbalanced brackets")
    items.append(hostlist[start:])
    return [host for item in items if item.strip() for host in _expand_item(item.strip(), hostlist)]


def _expand_item(item: str, whole: str) -> list[str]:
    if "[" not in item:
        return [item]
    prefix, rest = item.split("[", 1)
    ranges, suffix = rest.split("]", 1)
    names = []
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise UserError(f"SLURM host list {whole!r}: bad range {part!r} in [{ranges}]")
        names += [f"{n:0{len(lo)}d}" for n in range(int(lo), int(hi or lo) + 1)]
    return [prefix + n + tail for n in names for tail in _expand_item(suffix, whole)]


def _slurm_master_addr() -> str:
    """The first host of the job (rank 0 runs there under plain srun): `scontrol show hostnames`, or the
    host list parsed here where scontrol is not on PATH."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
        return out[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return expand_hostlist(nodelist)[0]


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


def resolve_device(device: str) -> str:
    """train.device as the run uses it: "cuda" or "cpu" (auto: CUDA when torch sees a GPU)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def cuda_index(local_rank: int, plain_srun: bool) -> int:
    """The GPU of this process: its local rank among the GPUs it sees. Plain srun with one GPU per task
    (`--gpus-per-task=1`: Slurm shows each task only its own GPU) uses that one GPU. Any other local rank
    beyond the visible GPUs is refused: wrapping it round would put two ranks on one GPU (NCCL: "Duplicate
    GPU detected") or hide a launcher that sees fewer GPUs than it starts processes."""
    count = torch.cuda.device_count()
    if local_rank < count:
        return local_rank
    if plain_srun and count == 1:
        return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    raise UserError(
        f"local rank {local_rank} needs GPU {local_rank} but this process sees {count} GPU(s) "
        f"(CUDA_VISIBLE_DEVICES={'unset' if visible is None else repr(visible)}): start at most {count} "
        f"process(es) per node (torchrun --nproc-per-node, SATPOSE_NPROC_PER_NODE), or give the launcher all "
        f"of the node's GPUs (slurm/train.sh: sbatch --gpus-per-node=N, not --gpus-per-task=1)")


def fix_threads(threads: int | None) -> int:
    """Set this process's torch CPU threads in the calling (main) thread now: `threads` (train.threads), or
    torch's default (the usable cores, or OMP_NUM_THREADS) when None. Returns the count.

    Call it before any DataLoader starts. torch reads its thread count lazily, once per thread, from a
    process-wide value that `torch.set_num_threads` in ANY thread overwrites; a loader with pinned memory (on
    CUDA) starts a pinning thread that calls torch.set_num_threads(1), so a main thread that had not yet
    asked got 1 thread (what `bench train` reported on the H100, 2026-11-27). Threads started after the loader
    (autograd's CUDA device threads) still read 1: they run device work."""
    n = threads or torch.get_num_threads()  # the default, read before any other thread can change it
    torch.set_num_threads(n)
    return n


def init_runtime(device: str = "auto", backend: str = "auto", timeout_s: int = 600) -> Runtime:
    plain_srun = "LOCAL_RANK" not in os.environ and "SLURM_PROCID" in os.environ
    rank, world, local_rank = launch_env()
    device = resolve_device(device)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("train.device=cuda but no CUDA device is visible (torch "
                            f"{torch.__version__}, CUDA_VISIBLE_DEVICES="
                            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}); add train.device=cpu to run "
                            "on the CPU")
        torch.cuda.set_device(cuda_index(local_rank, plain_srun))
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
    control = dist.new_group(backend="gloo") if backend == "nccl" and dist.is_initialized() else None
    return Runtime(rank, world, local_rank, dev, backend, control)


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


# BatchNorm statistics over fewer samples than this per process are noisy enough to change the model
# (Wu & He, "Group Normalization", ECCV 2018, Fig. 1: BN's error grows quickly below 8 images per GPU);
# a data-parallel run with plain BatchNorm then trains a different model from the one-process recipe.
SMALL_BN_BATCH = 8


def _nvidia_smi_gpus() -> int:
    """GPUs the driver lists (0 without nvidia-smi): what a node has, whatever this process may use."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU") for line in out.splitlines())


def _slurm_gpus() -> str | None:
    """The GPUs Slurm allocated to this job or step, if any (SLURM_STEP_GPUS, SLURM_JOB_GPUS,
    SLURM_GPUS_ON_NODE)."""
    env = os.environ
    for key in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        if env.get(key):
            return f"{key}={env[key]}"
    if env.get("SLURM_GPUS_ON_NODE", "0").isdigit() and int(env.get("SLURM_GPUS_ON_NODE", "0")) > 0:
        return f"SLURM_GPUS_ON_NODE={env['SLURM_GPUS_ON_NODE']}"
    return None


def device_notes(requested: str, rt: Runtime, micro_batch: int, sync_batchnorm: bool,
                 precision: str = "fp32") -> list[str]:
    """What a run says about its device at start: one line naming it, and warnings for a run that would
    otherwise go silently wrong: `train.device=auto` ending on the CPU where GPUs exist (a CPU-only torch on
    a GPU node, GPUs hidden from this process), per-process BatchNorm over a small batch, and bf16 on a CPU
    without bf16 kernels (several times slower than fp32)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if rt.device.type == "cuda":
        where = (f"{rt.device} ({torch.cuda.get_device_name(rt.device)}; {torch.cuda.device_count()} GPU(s) "
                 f"visible, CUDA_VISIBLE_DEVICES={'unset' if visible is None else repr(visible)})")
    else:
        where = f"cpu ({torch.get_num_threads()} torch thread(s) per process)"
    notes = [f"device: {where}, {rt.world_size} process(es), backend {rt.backend or 'none'} "
             f"(train.device={requested})"]
    if requested == "auto" and rt.device.type == "cpu":
        reasons = []
        if (slurm := _slurm_gpus()) is not None:
            reasons.append(f"Slurm allocated GPUs ({slurm})")
        if visible != "" and (n := _nvidia_smi_gpus()):  # CUDA_VISIBLE_DEVICES="" hides them on purpose
            reasons.append(f"nvidia-smi lists {n} GPU(s)")
        if reasons:
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            notes.append(f"warning: train.device=auto is training on the CPU although {' and '.join(reasons)}; "
                         f"torch {torch.__version__} ({build}) sees no usable GPU. Set train.device=cuda to make "
                         f"this an error, or train.device=cpu to mean it")
    if rt.distributed and not sync_batchnorm and micro_batch < SMALL_BN_BATCH:
        notes.append(f"warning: BatchNorm statistics over {micro_batch} sample(s) per process (batch split over "
                     f"{rt.world_size} processes; fewer than {SMALL_BN_BATCH}): this trains a different, noisier "
                     f"model than one process with the whole batch. Set distributed.sync_batchnorm=true for "
                     f"statistics over the global batch (docs/gpu.md)")
    if precision == "bf16" and rt.device.type == "cpu" and not cpu_has_bf16_kernels():
        notes.append(f"warning: train.precision=bf16 on a CPU without oneDNN bf16 kernels "
                     f"({torch.backends.cpu.get_cpu_capability()}; they need AVX512, natively AVX512-BF16 or AMX): "
                     f"the step runs several times slower than in fp32 (4.5x measured with AVX2). Set "
                     f"train.precision=fp32 on this machine")
    return notes
