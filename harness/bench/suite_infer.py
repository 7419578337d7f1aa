"""`bench infer`: G alone (harness.evaluate.predict_heatmaps, the eval path), with and without the flip test,
over a batch-size sweep, per variant: img/s and latency per batch (CUDA events on a GPU). Inputs are random
normalised crops resident on the device; warm-up calls (and compilation) are timed apart."""

from __future__ import annotations

import time

import torch

from data_pipelines.errors import UserError
from data_pipelines.registry import skeleton_for
from harness.bench.timing import StepClock, interleave, percentiles, spread, sync
from harness.bench.variants import Variant
from harness.build import build_models
from harness.distributed import fix_threads, init_runtime
from harness.evaluate import predict_heatmaps
from harness.inference import inference_model
from harness.precision import set_numerics


def run(variants: list[Variant], steps: int, warmup: int, repeats: int, batch_sizes: list[int] | None) -> dict:
    usable = [v for v in variants if v.cfg is not None]
    if not usable:
        raise UserError("no variant is available in this config")
    cfg0 = usable[0].cfg
    rt = init_runtime(cfg0.train.device, cfg0.distributed.backend)
    if rt.distributed:
        raise UserError("bench infer runs in one process")
    fix_threads(cfg0.train.threads)
    batch_sizes = batch_sizes or ([1, 16, 64] if rt.device.type == "cuda" else [1, 8])
    skeleton = skeleton_for(cfg0.data.name)
    runs, warmup_s, notes = {}, {}, []
    for v in usable:
        set_numerics(rt.device, v.cfg.train.deterministic)
        g, _ = build_models(v.cfg, skeleton.num_joints, rt)
        g.eval()
        model = inference_model(g, v.cfg)
        notes += [f"{v.name}: {n}" for n in model.notes]
        s = v.cfg.data.input_size
        for bs in batch_sizes:
            images = torch.randn(bs, 3, s, s, device=rt.device)
            if v.cfg.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            for flip in (False, True):
                key = f"{v.name}/bs{bs}/{'flip' if flip else 'noflip'}"
                call = _caller(model, images, skeleton.flip_index if flip else None)
                t0 = time.perf_counter()
                for _ in range(warmup):
                    call()
                sync(rt.device)
                warmup_s[key] = time.perf_counter() - t0
                runs[key] = (v, bs, flip, _timed(call, steps, bs, rt.device))
    results = interleave({k: r[3] for k, r in runs.items()}, repeats)
    rows = []
    for key, res in results.items():
        v, bs, flip, _ = runs[key]
        ips = spread([x["images"] / x["wall_s"] for x in res])
        lat = [s * 1e3 for x in res for s in x["latencies_s"]]
        base = f"{usable[0].name}/bs{bs}/{'flip' if flip else 'noflip'}"
        rows.append({"key": key, "variant": v.name, "note": v.note, "batch_size": bs, "flip": flip,
                     "precision": v.cfg.train.precision, "metric": "img/s", "higher_is_better": True,
                     "value": ips["median"], "images_per_s": ips, "latency_ms": percentiles(lat),
                     "latencies_ms": lat, "warmup_s": warmup_s[key], "baseline": base})
    by_key = {r["key"]: r["value"] for r in rows}
    for r in rows:
        r["ratio"] = r["value"] / by_key[r["baseline"]]
    for v in variants:
        if v.cfg is None:
            rows.append({"key": v.name, "variant": v.name, "batch_size": "-", "flip": False, "value": None,
                         "note": "variant unavailable: " + ", ".join(v.unavailable)})
    return {"rows": rows, "runtime": {"world_size": 1, "device": str(rt.device), "batch_sizes": batch_sizes},
            "config": cfg0.to_dict()}


def _caller(model, images, flip_index):
    def call():
        return predict_heatmaps(model, images, flip_index)
    return call


def _timed(call, steps: int, bs: int, device: torch.device):
    def timed(_repeat: int) -> dict:
        sync(device)
        clock = StepClock(device)
        t0 = time.perf_counter()
        clock.mark()
        for _ in range(steps):
            call()
            clock.mark()
        latencies = clock.latencies_s()
        return {"images": steps * bs, "wall_s": time.perf_counter() - t0, "latencies_s": latencies}
    return timed
