"""`bench scaling`: the train suite under torchrun at each world size, one report with the efficiency against
linear scaling. Weak scaling: the per-device batch stays the configured one (global batch = batch x world
size). Each world size runs `bench train` in a fresh torchrun job (NCCL on GPUs, gloo on CPU, where the
ranks split the cores: train.threads = cores / world size unless set) and writes its JSON to a temporary
folder; its first row becomes this report's row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from data_pipelines.errors import UserError
from harness.bench.variants import Variant
from harness.distributed import resolve_device


def run(args, variants: list[Variant]) -> dict:
    if len(variants) != 1 or variants[0].cfg is None:
        raise UserError("bench scaling measures one available variant (--variants NAME)")
    v = variants[0]
    cfg = v.cfg
    cuda = resolve_device(cfg.train.device) == "cuda"
    gpus = torch.cuda.device_count() if cuda else 0
    sizes = args.world_sizes or ([w for w in (1, 2, 4, 8, 16) if w <= gpus] if cuda else [1, 2])
    if cuda and max(sizes) > gpus:
        raise UserError(f"--world-sizes {sizes}: only {gpus} GPU(s) visible")
    if not cuda and max(sizes) > len(os.sched_getaffinity(0)):
        raise UserError(f"--world-sizes {sizes}: only {len(os.sched_getaffinity(0))} core(s) for one rank each")
    rows = []
    for w in sizes:
        items = [*args.items, *v.overrides, f"train.batch_size={cfg.train.batch_size * w}"]
        if not cuda and cfg.train.threads is None:
            items.append("train.threads=1")
        source = ["--preset", args.preset] if args.preset else ["--config", args.config_file] if args.config_file \
            else []
        with tempfile.TemporaryDirectory(prefix="satpose-scaling-") as tmp:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={w}",
                   "-m", "harness", "bench", "train", *items, *source, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--input", args.input,
                   "--out", tmp, "--formats", "json", "--label", f"w{w}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            reports = list(Path(tmp).glob("*.json"))
            if proc.returncode or not reports:
                raise UserError(f"bench scaling: world size {w} failed (exit {proc.returncode}):\n"
                                f"{proc.stderr[-3000:]}")
            child = json.loads(reports[0].read_text())
        r = child["rows"][0]
        rows.append({"key": f"w{w}", "world_size": w, "metric": "img/s", "higher_is_better": True,
                     "value": r["value"], "images_per_s": r["images_per_s"],
                     "images_per_s_per_device": r["images_per_s_per_device"], "latency_ms": r["latency_ms"],
                     "latencies_ms": r["latencies_ms"], "data_wait_share": r["data_wait_share"], "mfu": r["mfu"],
                     "global_batch": child["runtime"]["global_batch"]})
    for r in rows:
        r["speedup"] = r["value"] / rows[0]["value"]
        r["efficiency"] = r["value"] / (rows[0]["value"] / rows[0]["world_size"] * r["world_size"])
    notes = [f"weak scaling: {cfg.train.batch_size} images per device per step; efficiency = img/s / "
             f"(img/s per device at world size {rows[0]['world_size']} x world size)"]
    if not cuda:
        notes.append("CPU: gloo, one core per rank (train.threads=1), as one GPU per rank; world sizes run one "
                     "after the other, not interleaved, so a shared machine's load can differ between them")
    return {"rows": rows, "notes": notes, "config": cfg.to_dict(),
            "runtime": {"device": "cuda" if cuda else "cpu", "world_sizes": sizes}}
