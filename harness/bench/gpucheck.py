"""The pass/fail checks of scripts/gpu_check.sh: every CUDA path of the harness, one line each.

    python -m harness.bench.gpucheck [--dry] [--only NAME ...]
    torchrun --nproc-per-node 2 -m harness.bench.gpucheck --only distributed [--dry]

Lines are `PASS name: detail`, `FAIL name: detail` or `SKIP name: why`; the exit code is 1 when any check
failed. On a GPU every check runs on cuda:0 (under torchrun, on the rank's GPU). `--dry` runs the same checks on
the CPU at tiny sizes, with what only a GPU has (fp16 GradScalers, NCCL, torch's SyncBatchNorm, inductor)
skipped or replaced (gloo, the aot_eager compile backend) and said so: CI runs it so the script cannot rot.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from harness import checkpoint
from harness.bench.suite_kernels import rel_error
from harness.build import build_models, wrap_models
from harness.config import TrainConfig, load_config
from harness.data import RunData
from harness.distributed import Runtime
from harness.objectives import build_objective
from harness.precision import set_numerics
from harness.step import train_step
from models.sync_batchnorm import CrossRankBatchNorm2d

FAILED: list[str] = []


def line(status: str, name: str, detail: str) -> None:
    rank = f"[rank {dist.get_rank()}] " if dist.is_initialized() and dist.get_world_size() > 1 else ""
    print(f"{status} {rank}{name}: {detail}", flush=True)
    if status == "FAIL":
        FAILED.append(name)


def tiny_config(dry: bool, *overrides: str):
    size = ["data.input_size=64", "data.heatmap_size=16", "model.features=16", "discriminator.features=16",
            "model.stacks=1"] if dry else ["data.input_size=128", "data.heatmap_size=32", "model.features=64",
                                           "discriminator.features=32", "model.stacks=2"]
    return load_config(None, None, ["data.name=synthetic", "data.synthetic_train_size=16",
                                    "data.synthetic_val_size=4", "data.num_workers=0", "train.batch_size=4",
                                    *size, *overrides])


def _setup(cfg, rt: Runtime):
    data = RunData(cfg)
    g, d = build_models(cfg, data.skeleton.num_joints, rt)
    hg, hd = wrap_models(cfg, rt, g, d, cfg.train.batch_size)
    batch = data.to_device(next(iter(data.train_loader(cfg.train.batch_size, 0))), rt.device)
    return data, g, d, hg, hd, batch


def check_steps(dry: bool, rt: Runtime) -> None:
    """bf16 and fp16 (one GradScaler per model) training steps for each objective: finite losses, moved weights."""
    for objective in ("none", "sat", "cgan"):
        for precision in ("bf16", "fp16"):
            name = f"step {objective} {precision}"
            if precision == "fp16" and rt.device.type != "cuda":
                line("SKIP", name, "fp16 GradScalers need a GPU")
                continue
            cfg = tiny_config(dry, f"adversarial.objective={objective}", f"train.precision={precision}")
            _, g, _, hg, hd, batch = _setup(cfg, rt)
            before = [p.detach().clone() for p in g.parameters()]
            obj = build_objective(cfg, (8, 3), rt.device)
            values = [train_step([batch], hg, hd, obj, precision) for _ in range(3)][-1]
            host = {k: float(v) for k, v in values.items()}
            moved = any(not torch.equal(a, p) for a, p in zip(before, g.parameters()))
            scalers = [m.scaler for m in (hg, hd) if m is not None]
            ok = all(v == v and abs(v) != float("inf") for v in host.values()) and moved
            if precision == "fp16":
                ok &= len({id(s) for s in scalers}) == len(scalers) == (1 if hd is None else 2)
                host |= {f"scale_{i}": s.get_scale() for i, s in enumerate(scalers)}
            line("PASS" if ok else "FAIL", name, ", ".join(f"{k}={v:.4g}" for k, v in sorted(host.items())))


def check_compile(dry: bool, rt: Runtime) -> None:
    """torch.compile of G (inductor on a GPU; aot_eager in the dry run): forward and backward match eager."""
    cfg = tiny_config(dry, "adversarial.objective=none")
    _, g, _, _, _, batch = _setup(cfg, rt)
    backend = "aot_eager" if dry else "inductor"
    t0 = time.perf_counter()
    out_c = torch.compile(g, backend=backend, fullgraph=True)(batch["image"])
    grad_c = torch.autograd.grad(sum(o.float().square().mean() for o in out_c), list(g.parameters()))
    compile_s = time.perf_counter() - t0
    out_e = g(batch["image"])
    grad_e = torch.autograd.grad(sum(o.float().square().mean() for o in out_e), list(g.parameters()))
    tol = 1e-4 if dry else 1e-2  # TF32 convolutions on a GPU
    # Each output and each parameter's gradient against eager, relative to its own norm, but with a floor of
    # tol x the whole gradient's norm: the biases of convolutions that BatchNorm follows have a gradient that
    # is zero in exact arithmetic (norm ~1e-9 on the H100, 2026-11-27), so their rounding noise differs
    # between two eager runs as much as between compiled and eager (relative errors 1-2.5 both ways).
    floor = tol * float(torch.cat([g_.flatten() for g_ in grad_e]).double().norm())
    err = max(rel_error(out_c, out_e), rel_error(grad_c, grad_e, floor))
    line("PASS" if err <= tol else "FAIL", f"compile ({backend})",
         f"max relative error vs eager {err:.2e} (<= {tol:g}; gradients floored at {tol:g} x their total norm), "
         f"first call {compile_s:.1f} s")


def check_checkpoint(dry: bool, rt: Runtime) -> None:
    """G, D and their optimizers through harness.checkpoint on disk and back onto the device: equal outputs."""
    cfg = tiny_config(dry, "adversarial.objective=sat")
    _, g, d, hg, hd, batch = _setup(cfg, rt)
    train_step([batch], hg, hd, build_objective(cfg, (8, 3), rt.device), "fp32")
    state = {"generator": g.state_dict(), "discriminator": d.state_dict(), "optim_g": hg.optimizer.state_dict(),
             "optim_d": hd.optimizer.state_dict(), "step": 1, "epoch": 0, "config": cfg.to_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint.save_atomic(state, Path(tmp) / "step-00000001.pt")
        loaded = checkpoint.load(Path(tmp) / "step-00000001.pt")
    g2, d2 = build_models(cfg, 14, rt)
    g2.load_state_dict(loaded["generator"])
    d2.load_state_dict(loaded["discriminator"])
    g.eval(), g2.eval()
    with torch.no_grad():
        same = all(torch.equal(a, b) for a, b in zip(g(batch["image"]), g2(batch["image"])))
    same &= all(torch.equal(a.to(rt.device), b) for a, b in zip(loaded["discriminator"].values(),
                                                                 d.state_dict().values()))
    line("PASS" if same else "FAIL", "checkpoint round trip", f"on {rt.device}: G outputs and D state equal")


def check_deterministic(dry: bool, rt: Runtime) -> None:
    """train.deterministic: two runs of three SAT steps from one seed give bit-identical losses."""
    if "deterministic" not in TrainConfig.model_fields:
        line("SKIP", "deterministic", "train.deterministic is not in this config")
        return
    cfg = tiny_config(dry, "adversarial.objective=sat", "train.deterministic=true")
    set_numerics(rt.device, True)
    try:
        runs = []
        for _ in range(2):
            _, _, _, hg, hd, batch = _setup(cfg, rt)
            obj = build_objective(cfg, (8, 3), rt.device)
            runs.append([float(train_step([batch], hg, hd, obj, "fp32")["loss_g"]) for _ in range(3)])
    finally:
        torch.use_deterministic_algorithms(False)
        set_numerics(rt.device, False)
    line("PASS" if runs[0] == runs[1] else "FAIL", "deterministic", f"loss_g {runs[0]} vs {runs[1]}")


def check_distributed(dry: bool, rt: Runtime) -> None:
    """The process group (NCCL on GPUs, gloo in the dry run): an all-reduce; then, with 2+ ranks, torch's
    SyncBatchNorm (GPU) and the project's CrossRankBatchNorm2d on the same inputs: equal outputs, and the time
    of a forward + backward of each (issue 14 item 11)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    x = torch.full((4,), float(rank + 1), device=rt.device)
    dist.all_reduce(x)
    expected = world * (world + 1) / 2
    line("PASS" if torch.all(x == expected) else "FAIL", f"{dist.get_backend()} all_reduce",
         f"world size {world}, got {x[0].item()} (expected {expected})")
    if world < 2:
        line("SKIP", "sync batchnorm", "needs 2 ranks (in a 1-process group both fall back to plain BatchNorm)")
        return
    torch.manual_seed(0)
    inputs = torch.randn(8, 64, 32, 32, device=rt.device)[rank * 4:(rank + 1) * 4].requires_grad_()
    kinds = {"CrossRankBatchNorm2d": CrossRankBatchNorm2d(64).to(rt.device)}
    if rt.device.type == "cuda":
        kinds["torch SyncBatchNorm"] = torch.nn.SyncBatchNorm(64).to(rt.device)
    else:
        line("SKIP", "torch SyncBatchNorm", "CUDA only")
    results = {}
    for name, bn in kinds.items():
        times = []
        for _ in range(6):
            torch.cuda.synchronize() if rt.device.type == "cuda" else None
            t0 = time.perf_counter()
            y = bn(inputs)
            (grad,) = torch.autograd.grad(y.square().mean(), inputs)
            torch.cuda.synchronize() if rt.device.type == "cuda" else None
            times.append(time.perf_counter() - t0)
        results[name] = (y.detach(), grad, statistics.median(times[1:]) * 1e3)
    ref_y, ref_g, _ = results["CrossRankBatchNorm2d"]
    for name, (y, grad, ms) in results.items():
        err = max(float((y - ref_y).abs().max()), float((grad - ref_g).abs().max()))
        line("PASS" if err < 1e-4 else "FAIL", f"batchnorm {name}",
             f"forward+backward {ms:.3f} ms (8x64x32x32 over {world} ranks), max diff vs CrossRank {err:.1e}")


CHECKS = {"steps": check_steps, "compile": check_compile, "checkpoint": check_checkpoint,
          "deterministic": check_deterministic, "distributed": check_distributed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", help="CPU, tiny sizes (what CI runs)")
    p.add_argument("--only", nargs="+", choices=list(CHECKS), default=list(CHECKS))
    args = p.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        print("FAIL gpu: no CUDA device visible (use --dry for the CPU rehearsal)")
        return 1
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cpu") if args.dry else torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if "distributed" in args.only:
        backend = "gloo" if args.dry else "nccl"
        if "RANK" in os.environ:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=120))
        else:  # one process: a group of one on a local file store
            store = dist.FileStore(tempfile.mktemp(prefix="satpose-gpucheck-"), 1)
            dist.init_process_group(backend, store=store, rank=0, world_size=1)
    rt = Runtime(device=device)
    for name in args.only:
        try:
            CHECKS[name](args.dry, rt)
        except Exception as exc:  # a check that crashes is a failed check; the others still run
            line("FAIL", name, f"{type(exc).__name__}: {exc}")
            traceback.print_exc(file=sys.stderr)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
