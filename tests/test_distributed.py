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
    """||a - b|| / ||a - initial|| over all float tensors of a state dict: how far two runs' weights are
    apart, relative to how far training moved them."""
    num = den = 0.0
    for name, w0 in initial.items():
        if w0.is_floating_point():
            num += (a[name] - b[name]).double().pow(2).sum().item()
            den += (a[name] - w0).double().pow(2).sum().item()
    return (num / den) ** 0.5


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
    run([sys.executable, *harness_train(tmp_path / "one", *common)])
    run(torchrun("--nproc-per-node", "2", "--master-port", str(free_port()),
                 *harness_train(tmp_path / "two", *common)))
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2
    one, two = final_state(tmp_path / "one", 4), final_state(tmp_path / "two", 4)
    g0, d0 = initial_weights(*common)
    assert relative_difference(one["generator"], two["generator"], g0) < 1e-9
    assert relative_difference(one["discriminator"], two["discriminator"], d0) < 1e-9
    if objective == "sat":  # k_t from rank-averaged losses equals the single-process one
        assert abs(one["objective"]["k"] - two["objective"]["k"]) < 1e-12
    # and without cross-rank BatchNorm the two runs really differ (the check can fail)
    run(torchrun("--nproc-per-node", "2", "--master-port", str(free_port()),
                 *harness_train(tmp_path / "local-bn", *common, "distributed.sync_batchnorm=false")))
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
    assert [r["resumed_step"] for r in starts if r["kind"] == "start"][-1] >= 4
    run(torchrun("--nproc-per-node", "2", "--master-port", str(free_port()),
                 *harness_train(tmp_path / "straight", *common)))
    a, b = final_state(elastic, 10), final_state(tmp_path / "straight", 10)
    for part in ("generator", "discriminator", "optim_g", "optim_d", "objective"):
        pa, pb = a[part], b[part]
        flat_a = json.dumps(pa, default=lambda t: t.tolist(), sort_keys=True)
        flat_b = json.dumps(pb, default=lambda t: t.tolist(), sort_keys=True)
        assert flat_a == flat_b, part


@pytest.mark.parametrize("objective", ["sat", "cgan"])
@pytest.mark.parametrize("zero_stage", [0, 1])
def test_deepspeed_matches_ddp(tmp_path, objective, zero_stage):
    """The DeepSpeed strategy (one engine per model) against DDP, 2 ranks each, same global batch, fp32."""
    require("deepspeed", "the [deepspeed] extra")
    common = [f"adversarial.objective={objective}", "distributed.sync_batchnorm=true",
              *[o for o in EQUIV if o != "train.precision=fp64"]]
    run(torchrun("--nproc-per-node", "2", "--master-port", str(free_port()),
                 *harness_train(tmp_path / "ddp", *common)))
    run(torchrun("--nproc-per-node", "2", "--master-port", str(free_port()),
                 *harness_train(tmp_path / "ds", *common, "distributed.strategy=deepspeed",
                                f"distributed.zero_stage={zero_stage}")))
    ddp, ds = final_state(tmp_path / "ddp", 4), final_state(tmp_path / "ds", 4)
    g0, d0 = initial_weights(*common)
    print("relative difference G, D:", relative_difference(ddp["generator"], ds["generator"], g0),
          relative_difference(ddp["discriminator"], ds["discriminator"], d0))
    assert relative_difference(ddp["generator"], ds["generator"], g0) < 1e-4
    assert relative_difference(ddp["discriminator"], ds["discriminator"], d0) < 1e-4
    # the DeepSpeed checkpoint is the same single-file format: it loads into plain modules and optimizers
    assert set(ds) == set(ddp)
    assert ds["optim_g"]["param_groups"][0]["lr"] == ddp["optim_g"]["param_groups"][0]["lr"]


def test_gradient_accumulation_with_no_sync_matches_one_process(tmp_path):
    """grad_accum=2: 2 ranks x 2 micro-batches of 2 == 1 process x 2 micro-batches of 4, in fp64 with
    cross-rank BatchNorm. (This checks the result - loss scaling and accumulation across the no_sync
    micro-batch - not that the first micro-batch's all-reduce was actually skipped.)"""
    common = ["adversarial.objective=sat", "distributed.sync_batchnorm=true", "train.grad_accum=2", *EQUIV]
    run([sys.executable, *harness_train(tmp_path / "one", *common)])
    run(torchrun("--nproc-per-node", "2", "--master-port", str(free_port()),
                 *harness_train(tmp_path / "two", *common)))
    one, two = final_state(tmp_path / "one", 4), final_state(tmp_path / "two", 4)
    g0, d0 = initial_weights(*common)
    assert relative_difference(one["generator"], two["generator"], g0) < 1e-9
    assert relative_difference(one["discriminator"], two["discriminator"], d0) < 1e-9


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
