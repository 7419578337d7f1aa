"""Data-parallel training on CPU with gloo: torchrun DDP against one process, two torchrun "nodes" on
localhost, and an elastic restart after a worker is killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import require

from data_pipelines.lsp import load_lsp
from data_pipelines.sampling import EpochBatchSampler
from harness import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.name=synthetic", "data.input_size=64", "data.heatmap_size=16", "data.synthetic_train_size=32",
        "data.synthetic_val_size=8", "data.num_workers=0", "model.stacks=2", "model.features=16",
        "discriminator.features=16", "train.batch_size=4", "train.log_every=1", "train.threads=1",
        "train.val_every=100"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def harness_train(run_dir: Path, *overrides: str) -> list[str]:
    return ["-m", "harness", "train", "--run-dir", str(run_dir), *TINY, *overrides]


def run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    if res.returncode:
        Path("/tmp/satpose-failed-run.log").write_text(res.stdout + "\n=== stderr\n" + res.stderr)
    assert res.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-5000:]}"
    return res


def final_state(run_dir: Path, step: int) -> dict:
    return ckpt.load(run_dir / "checkpoints" / f"step-{step:08d}.pt")


def relative_difference(a: dict, b: dict, initial: dict) -> float:
    """How far two runs' final states are apart: the larger of ||a - b|| / ||a - initial|| over the learned
    tensors (relative to how far training moved them) and ||a - b|| / ||a|| over the BatchNorm running
    statistics. (Measured on these tiny runs, the running statistics move by 2x their norm and the weights by
    0.1%: one ratio over both would be dominated by the statistics and hide weight differences ~1000x.)
    The denominator is checked: training moved the weights, but by less than MAX_MOVE of their norm, so an
    `initial` that is not the runs' real start (a drifted initialisation moves them by ~75%) cannot
    silently loosen the comparison."""
    num = den = size = num_stats = stats = 0.0
    for name, w0 in initial.items():
        if not w0.is_floating_point():
            continue
        diff = (a[name] - b[name]).double().pow(2).sum().item()
        if "running_" in name:
            num_stats, stats = num_stats + diff, stats + a[name].double().pow(2).sum().item()
        else:
            num, den = num + diff, den + (a[name] - w0).double().pow(2).sum().item()
            size += w0.double().pow(2).sum().item()
    assert 0 < den < MAX_MOVE ** 2 * size, \
        f"||a - initial|| = {den ** 0.5:.4g} vs ||initial|| = {size ** 0.5:.4g}: not these runs' initial weights?"
    return max((num / den) ** 0.5, (num_stats / stats) ** 0.5 if stats else 0.0)


# 4 SGD steps of lr 0.01 move the tiny G's weights by 0.1% of their norm; a wrong initialisation is ~75% away.
MAX_MOVE = 0.05


def initial_weights(*overrides: str) -> tuple[dict, dict]:
    from harness.build import build_discriminator, build_generator
    from harness.config import load_config
    cfg = load_config(None, None, TINY + list(overrides))
    torch.manual_seed(cfg.train.seed)
    return build_generator(cfg, 14).state_dict(), build_discriminator(cfg, 14).state_dict()


# Float64 and SGD: this small hourglass with tiny per-layer batches is chaotic in float32 (a single-process
# run with 2 threads instead of 1 ends 12% of its update away after 4 steps, from summation order alone),
# so equivalence is checked where rounding cannot hide a real difference. RMSprop/Adam first steps are
# sign-like and would amplify noise in near-zero gradients (e.g. conv biases before BatchNorm) likewise.
EQUIV = ["train.max_steps=4", "train.precision=fp64", "data.input_size=128", "data.heatmap_size=32",
         "train.batch_size=8", "train.generator.name=sgd", "train.generator.lr=0.01",
         "train.discriminator.name=sgd", "train.discriminator.lr=0.01"]


@pytest.mark.parametrize("objective", ["sat", "cgan"])
def test_ddp_two_processes_match_one_process(tmp_path, objective):
    """Same global batch (8): 2 ranks x 4 samples with cross-rank BatchNorm == 1 process x 8 samples."""
    common = [f"adversarial.objective={objective}", "distributed.sync_batchnorm=true", *EQUIV]
    res = run([sys.executable, *harness_train(tmp_path / "one", *common)])
    assert "device: cpu (1 torch thread(s) per process), 1 process(es), backend none (train.device=auto)" \
        in res.stdout, res.stdout[:2000]  # the suite hides GPUs (conftest): auto is the CPU, and says so
    res = run(torchrun("--nproc-per-node", "2", "--master-port", str(free_port()),
                       *harness_train(tmp_path / "two", *common)))
    assert "2 process(es), backend gloo" in res.stdout and "warning" not in res.stdout, res.stdout[:2000]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2
    one, two = final_state(tmp_path / "one", 4), final_state(tmp_path / "two", 4)
    g0, d0 = initial_weights(*common)
    assert relative_difference(one["generator"], two["generator"], g0) < 1e-9
    assert relative_difference(one["discriminator"], two["discriminator"], d0) < 1e-9
    if objective == "sat":  # k_t from rank-averaged losses equals the single-process one
        assert abs(one["objective"]["k"] - two["objective"]["k"]) < 1e-12
    # and without cross-rank BatchNorm the two runs really differ (the check can fail)
    res = run(torchrun("--nproc-per-node", "2", "--master-port", str(free_port()),
                       *harness_train(tmp_path / "local-bn", *common, "distributed.sync_batchnorm=false")))
    assert "warning: BatchNorm statistics over 4 sample(s) per process" in res.stdout, res.stdout[:2000]
    local = final_state(tmp_path / "local-bn", 4)
    assert relative_difference(one["generator"], local["generator"], g0) > 1e-3


def test_two_torchrun_nodes_on_localhost(tmp_path):
    port = free_port()
    procs = [subprocess.Popen(torchrun("--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
                                       "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                                       "--rdzv-id", "two-nodes",
                                       *harness_train(tmp_path / "run", "train.max_steps=3")),
                              cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n=====\n".join(o[-3000:] for o in outs)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]


def _elastic_run_with_one_kill(elastic: Path, common: list[str]) -> tuple[int, str]:
    """torchrun --max-restarts 1; SIGKILL one worker once a step-4 checkpoint exists. (returncode, output)"""
    proc = subprocess.Popen(torchrun("--nproc-per-node", "2", "--max-restarts", "1", "--master-port",
                                     str(free_port()), *harness_train(elastic, *common), "--resume", "auto"),
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        killed = None
        while time.time() < deadline and proc.poll() is None:
            steps = ckpt.CheckpointManager(elastic / "checkpoints").step_files()
            if steps and int(steps[0].stem.split("-")[1]) >= 4:
                workers = _children(proc.pid)
                if len(workers) == 2:
                    killed = workers[-1]
                    os.kill(killed, signal.SIGKILL)
                    break
            time.sleep(0.1)
        assert killed is not None, "never saw two workers and a step-4 checkpoint"
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out


def test_killed_worker_restarts_resumes_and_matches_uninterrupted(tmp_path):
    """SIGKILL one worker mid-run under --max-restarts 1: all workers restart, resume from the newest
    checkpoint and finish; on CPU with a fixed seed the final weights equal an uninterrupted run's.
    (Without harness.distributed.restart_safe_store about half of these restarts fail: the restarted
    rank 0 reads its dead peer's gloo address from torchrun's reused store.)"""
    common = ["adversarial.objective=sat", "train.max_steps=10", "train.checkpoint_every=2"]
    elastic = tmp_path / "elastic"
    code, out = _elastic_run_with_one_kill(elastic, common)
    assert code == 0, out[-5000:]
    assert "resumed from" in out, out[-3000:]
    starts = [json.loads(x) for x in (elastic / "metrics.jsonl").read_text().splitlines()]
    resumed = [r["resumed_step"] for r in starts if r["kind"] == "start"][-1]
    assert 4 <= resumed < 10, resumed  # a kill after the last checkpoint would prove nothing
    run(torchrun("--nproc-per-node", "2", "--master-port", str(free_port()),
                 *harness_train(tmp_path / "straight", *common)))
    a, b = final_state(elastic, 10), final_state(tmp_path / "straight", 10)
    for part in ("generator", "discriminator", "optim_g", "optim_d", "objective"):
        pa, pb = a[part], b[part]
        flat_a = json.dumps(pa, default=lambda t: t.tolist(), sort_keys=True)
        flat_b = json.dumps(pb, default=lambda t: t.tolist(), sort_keys=True)
        assert flat_a == flat_b, part


def max_abs_difference(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("objective", ["sat", "cgan"])
def test_deepspeed_matches_ddp(tmp_path, objective):
    """The DeepSpeed strategy (one engine per model) against DDP, 2 ranks each, same global batch, fp32, SGD:
    stage 0 and ZeRO-1 both end bit for bit equal to DDP (docs/deepspeed.md): weights, BatchNorm statistics,
    optimizer state, k_t. Exact, not within a bound, because with 2 ranks every gradient sum has two terms
    (IEEE addition commutes) and SGD's update is elementwise (ZeRO-1's sharded step changes no arithmetic)."""
    require("deepspeed", "the [deepspeed] extra")
    common = [f"adversarial.objective={objective}", "distributed.sync_batchnorm=true",
              *[o for o in EQUIV if o != "train.precision=fp64"]]
    runs = {"ddp": []} | {f"zero{z}": ["distributed.strategy=deepspeed", f"distributed.zero_stage={z}"]
                          for z in (0, 1)}
    for name, extra in runs.items():
        run(torchrun("--nproc-per-node", "2", "--master-port", str(free_port()),
                     *harness_train(tmp_path / name, *common, *extra)))
    ddp, zero0, zero1 = (final_state(tmp_path / name, 4) for name in runs)
    g0, d0 = initial_weights(*common)
    for part, w0 in (("generator", g0), ("discriminator", d0)):
        assert relative_difference(ddp[part], zero0[part], w0) == 0.0, part  # (checks that training moved w0)
        assert max_abs_difference(ddp[part], zero0[part]) == 0.0, part
        assert max_abs_difference(ddp[part], zero1[part]) == 0.0, part
    for part in ("optim_g", "optim_d", "objective"):
        for zero in (zero0, zero1):
            assert json.dumps(ddp[part], default=lambda t: t.tolist(), sort_keys=True) == \
                json.dumps(zero[part], default=lambda t: t.tolist(), sort_keys=True), part
    # the DeepSpeed checkpoint is the same single-file format: it loads into plain modules and optimizers
    assert set(zero1) == set(ddp)
    assert zero1["optim_g"]["param_groups"][0]["lr"] == ddp["optim_g"]["param_groups"][0]["lr"]


def test_gradient_accumulation_with_no_sync_matches_one_process(tmp_path):
    """grad_accum=2: 2 ranks x 2 micro-batches of 2 == 1 process x 2 micro-batches of 4, in fp64 with
    cross-rank BatchNorm: loss scaling and accumulation across the no_sync micro-batch. (That the first
    micro-batch's all-reduce is skipped: test_no_sync_skips_the_all_reduce_of_all_but_the_last_micro_batch.)"""
    common = ["adversarial.objective=sat", "distributed.sync_batchnorm=true", "train.grad_accum=2", *EQUIV]
    run([sys.executable, *harness_train(tmp_path / "one", *common)])
    run(torchrun("--nproc-per-node", "2", "--master-port", str(free_port()),
                 *harness_train(tmp_path / "two", *common)))
    one, two = final_state(tmp_path / "one", 4), final_state(tmp_path / "two", 4)
    g0, d0 = initial_weights(*common)
    assert relative_difference(one["generator"], two["generator"], g0) < 1e-9
    assert relative_difference(one["discriminator"], two["discriminator"], d0) < 1e-9


def test_no_sync_skips_the_all_reduce_of_all_but_the_last_micro_batch():
    """grad_accum=2 through the real training step with DDP-wrapped G and D (a one-process gloo group, in
    this process): a communication hook counts the gradient all-reduces, and a step over two micro-batches
    makes exactly as many as a step over one (the first micro-batch's backward runs under no_sync)."""
    import torch.distributed as dist

    from harness.build import build_models, wrap_models
    from harness.config import load_config
    from harness.data import RunData
    from harness.distributed import Runtime
    from harness.objectives import build_objective
    from harness.step import train_step

    cfg = load_config(None, None, [*TINY, "train.device=cpu", "adversarial.objective=sat"])
    counts = {"g": 0, "d": 0}

    def counting(name: str):
        def hook(state, bucket):
            counts[name] += 1
            done = torch.futures.Future()
            done.set_result(bucket.buffer())  # one process: the sum over ranks is the buffer itself
            return done
        return hook

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        rt = Runtime(0, 2, 0, torch.device("cpu"), "gloo")  # wrap_models' data-parallel path: DDP
        data = RunData(cfg)
        g, d = wrap_models(cfg, rt, *build_models(cfg, data.skeleton.num_joints, rt), 2)
        g.module.register_comm_hook(None, counting("g"))
        d.module.register_comm_hook(None, counting("d"))
        objective = build_objective(cfg, data.skeleton.torso, rt.device)
        batches = [data.to_device(b, rt.device) for b, _ in zip(data.train_loader(2, 0), range(4))]
        train_step(batches[:1], g, d, objective, "fp32")  # (DDP settles its buckets in the first step)
        per_step = []
        for micro in (batches[1:2], batches[2:4]):
            counts.update(g=0, d=0)
            train_step(micro, g, d, objective, "fp32")
            per_step.append(dict(counts))
    finally:
        dist.destroy_process_group()
    one, two = per_step
    assert one["g"] > 0 and one["d"] > 0, one
    assert two == one, f"2 micro-batches: {two} all-reduces, 1 micro-batch: {one}"


@pytest.mark.gpu
def test_gpu_ddp_with_plain_batchnorm(tmp_path, gpu_env, cuda_devices):
    """On CUDA: one rank per visible GPU (at most 2), NCCL, plain BatchNorm with DDP's buffer broadcast while
    D runs twice before its backward (pytorch#175024 on an unfixed torch); the run says it used the GPU."""
    n = min(2, cuda_devices)
    res = subprocess.run(torchrun("--nproc-per-node", str(n), "--master-port", str(free_port()),
                                  *harness_train(tmp_path / "run", "train.device=cuda", "train.max_steps=3")),
                         cwd=REPO, env={**gpu_env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert "device: cuda:0 (" in res.stdout and f"{n} process(es), backend nccl" in res.stdout, res.stdout[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["device"] == "cuda:0" and summary["world_size"] == n and summary["steps"] == 3


@pytest.mark.gpu
def test_gpu_more_processes_than_gpus_is_refused(tmp_path, gpu_env, cuda_devices):
    """One more torchrun worker than visible GPUs: a clear error naming the counts (not two ranks on one GPU)."""
    res = subprocess.run(torchrun("--nproc-per-node", str(cuda_devices + 1), "--master-port", str(free_port()),
                                  *harness_train(tmp_path / "run", "train.device=cuda", "train.max_steps=1",
                                                 f"train.batch_size={4 * (cuda_devices + 1)}")),
                         cwd=REPO, env={**gpu_env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode != 0
    assert f"local rank {cuda_devices} needs GPU {cuda_devices} but this process sees {cuda_devices} GPU(s)" in \
        res.stdout + res.stderr, res.stdout[-3000:] + res.stderr[-3000:]


def test_rank_with_only_bad_images_skips_the_step_on_every_rank(tmp_path, lsp_root):
    """2-rank run on real LSP images where rank 1's first micro-batch is two unreadable files: both ranks
    skip that step together (instead of rank 0 waiting for rank 1 until the process-group timeout), the
    files are named in the log and summary, and training completes."""
    root = tmp_path / "lsp"
    (root / "images").mkdir(parents=True)
    (root / "joints.mat").symlink_to(lsp_root / "joints.mat")
    for image in (lsp_root / "images").iterdir():
        (root / "images" / image.name).symlink_to(image)
    records = load_lsp(root, split="train")[:16]
    sampler = EpochBatchSampler(16, 2, seed=7, epoch=0, rank=1, world_size=2, shuffle=True, drop_last=True)
    bad = [Path(records[i].image) for i in sampler.rank_indices()[:2]]
    for path in bad:
        path.unlink()
        path.write_bytes(b"not a jpeg" * 10)
    res = run(torchrun("--nproc-per-node", "2", "--master-port", str(free_port()),
                       *harness_train(tmp_path / "run", "data.name=lsp", f"data.root={root}",
                                      "data.max_train_samples=16", "data.max_val_samples=4", "train.seed=7",
                                      "train.max_steps=5",
                                      # (a half-bad micro-batch is one image: at 64 px the hourglass's
                                      # innermost maps are 1x1 and BatchNorm needs 2 values per channel)
                                      "data.input_size=128", "data.heatmap_size=32")), timeout=300)
    assert "every rank skips this step" in res.stdout, res.stdout[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["world_size"] == 2
    assert {str(p) for p in bad} <= set(summary["skipped_samples"]), summary["skipped_samples"]
