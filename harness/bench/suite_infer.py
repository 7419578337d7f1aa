"""`bench infer`: G alone (harness.evaluate.predict_heatmaps, the eval path, on G's harness.inference
InferenceModel as the variant's infer.* keys make it), with and without the flip test, over a batch-size sweep,
per variant: img/s and latency per batch (CUDA events on a GPU), FLOPs (FlopCounterMode) and bytes
(harness.bench.traffic) per image with MFU and the share of the memory bandwidth, and the largest batch's time by
op kind (torch.profiler, untimed). Inputs are random normalised crops resident on the device; warm-up calls (and
compilation, graph capture) are timed apart."""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from data_pipelines.errors import UserError
from data_pipelines.registry import skeleton_for
from harness.bench.peaks import bandwidth, peak
from harness.bench.timing import StepClock, interleave, percentiles, spread, sync
from harness.bench.traffic import TRAFFIC_MODEL, at_batch, count_traffic, profile_kinds, roofline
from harness.bench.variants import Variant
from harness.build import build_models
from harness.distributed import fix_threads, init_runtime
from harness.evaluate import predict_heatmaps
from harness.inference import InferenceModel, inference_model
from harness.precision import set_numerics


def run(variants: list[Variant], steps: int, warmup: int, repeats: int, batch_sizes: list[int] | None,
        peak_gbps: float | None = None, profile: bool = True) -> dict:
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
    runs, warmup_s, notes, traffic, calls, flops = {}, {}, [], {}, {}, {}
    for v in usable:
        set_numerics(rt.device, v.cfg.train.deterministic)
        g, _ = build_models(v.cfg, skeleton.num_joints, rt)
        g.eval()
        model = inference_model(g, v.cfg)
        notes += [f"{v.name}: {n}" for n in model.notes]
        s = v.cfg.data.input_size
        eager = InferenceModel(g, v.cfg.train.precision, v.cfg.infer.model_copy(update={"compile": False,
                                                                                        "cuda_graphs": False}),
                               v.cfg.train.channels_last)  # what the bytes are counted on (TRAFFIC_MODEL)
        for flip in (False, True):
            with FlopCounterMode(display=False) as fc:  # per image: FLOPs scale with the batch
                _at_batch(eager, s, rt.device, v.cfg.train.channels_last, skeleton.flip_index if flip else None)(1)()
            flops[v.name, flip] = fc.get_total_flops()
            traffic[v.name, flip] = count_traffic(_at_batch(eager, s, rt.device, v.cfg.train.channels_last,
                                                            skeleton.flip_index if flip else None))
        for bs in batch_sizes:
            images = _images(bs, s, rt.device, v.cfg.train.channels_last)
            for flip in (False, True):
                key = f"{v.name}/bs{bs}/{'flip' if flip else 'noflip'}"
                call = _caller(model, images, skeleton.flip_index if flip else None)
                t0 = time.perf_counter()
                for _ in range(warmup):
                    call()
                sync(rt.device)
                warmup_s[key] = time.perf_counter() - t0
                runs[key] = (v, bs, flip, _timed(call, steps, bs, rt.device))
                if bs == max(batch_sizes) and flip:  # the call the profile shows
                    calls[v.name] = call
    results = interleave({k: r[3] for k, r in runs.items()}, repeats)
    kinds = {name: profile_kinds(call, 3, rt.device) for name, call in calls.items()} if profile else {}
    bw = bandwidth(rt.device, peak_gbps)
    rows = []
    for key, res in results.items():
        v, bs, flip, _ = runs[key]
        ips = spread([x["images"] / x["wall_s"] for x in res])
        lat = [s * 1e3 for x in res for s in x["latencies_s"]]
        base = f"{usable[0].name}/bs{bs}/{'flip' if flip else 'noflip'}"
        rows.append({"key": key, "variant": v.name, "note": v.note, "batch_size": bs, "flip": flip,
                     "precision": v.cfg.train.precision, "metric": "img/s", "higher_is_better": True,
                     "value": ips["median"], "images_per_s": ips, "latency_ms": percentiles(lat),
                     "latencies_ms": lat, "warmup_s": warmup_s[key], "baseline": base,
                     "infer": v.cfg.infer.model_dump(), **_compute(flops[v.name, flip], ips["median"],
                                                                    peak(rt.device, v.cfg.train.precision)),
                     **roofline(at_batch(traffic[v.name, flip], bs),
                                                                   ips["median"], bw)})
    for r in rows:  # the profile (largest batch, flip) goes with that row
        if r["batch_size"] == max(batch_sizes) and r["flip"]:
            r["time_by_kind"] = kinds.get(r["variant"])
    by_key = {r["key"]: r["value"] for r in rows}
    for r in rows:
        r["ratio"] = r["value"] / by_key[r["baseline"]]
    for v in variants:
        if v.cfg is None:
            rows.append({"key": v.name, "variant": v.name, "batch_size": "-", "flip": False, "value": None,
                         "note": "variant unavailable: " + ", ".join(v.unavailable)})
    notes += [f"bytes: {TRAFFIC_MODEL}; counted per call (the forward(s) and the flip merge) on an eager copy of "
              "each variant's inference model (compile and graphs off) at batch 2 and 4, per image at each batch",
              f"memory bandwidth: {bw['source']}",
              "time by op kind: 3 calls of each variant's largest batch with flip under torch.profiler, "
              "after the timed repeats" if profile else "time by op kind: not profiled (--no-profile)"]
    return {"rows": rows, "runtime": {"world_size": 1, "device": str(rt.device), "batch_sizes": batch_sizes},
            "config": cfg0.to_dict(), "notes": notes, "traffic_model": TRAFFIC_MODEL}


def _compute(flops_per_image: float, images_per_s: float, pk: dict) -> dict:
    achieved = flops_per_image * images_per_s / 1e12
    return {"flops_per_image": flops_per_image, "achieved_tflops_per_device": achieved, "peak": pk,
            "mfu": achieved / pk["tflops"] if pk["tflops"] else None}


def _images(bs: int, size: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = torch.randn(bs, 3, size, size, device=device)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def _at_batch(model, size: int, device: torch.device, channels_last: bool, flip_index):
    """count_traffic's `prepare`: b -> the call at batch b."""
    return lambda b: _caller(model, _images(b, size, device, channels_last), flip_index)


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
