"""`bench train`: the real training step (harness.step.train_step, G and D, any objective) per variant.

A timed step is what the trainer's step does, less the lr schedule: the host batch to the device
(RunData.to_device: colour jitter, normalisation, targets), train_step, the mean over ranks, the objective's
update (k_t), the sinks' per-step call (so telemetry on vs off is a variant). Inputs:
  loader    (end-to-end, default) batches from the configured loader; the host time blocked in its next()
            is the data wait (on a GPU the host runs ahead, so this bounds the GPU's idle time from above)
  resident  one batch prepared on the device once and reused (compute throughput, DLE's synthetic mode)
img/s: images of all ranks / wall seconds; compute img/s leaves the data wait out. Latency: per step, from
CUDA events on a GPU. FLOPs: one step of this rank counted by FlopCounterMode on the meta device (the same
train_step on the same models, shapes only; see FLOP_CONVENTION), per image; achieved TFLOP/s and MFU per
device against harness.bench.peaks. Bytes: one train_step counted by harness.bench.traffic (eager-kernel traffic,
on fresh eager models of the variant on the run's device), per image, with the rate they imply and its share of
the device's memory bandwidth. Time by op kind: 2 untimed steps per variant under torch.profiler, after the
timed repeats.
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

from data_pipelines.errors import UserError
from harness.bench.peaks import bandwidth, peak, sample_cpu_peak
from harness.bench.timing import StepClock, interleave, percentiles, spread, sync
from harness.bench.traffic import TRAFFIC_MODEL, bytes_per_image, profile_kinds, roofline
from harness.bench.variants import Variant
from harness.build import build_models, wrap_models
from harness.config import Config, config_from_dict
from harness.data import RunData
from harness.distributed import Runtime, fix_threads, init_runtime
from harness.graphed_step import graphed_step
from harness.objectives import build_objective
from harness.precision import set_numerics
from harness.sinks import build_sinks
from harness.step import synchronized_step, train_step

FLOP_CONVENTION = ("torch.utils.flop_counter.FlopCounterMode over one train_step as it runs (G forward and "
                   "backward, D on real and on the fake with its backward, the fake's pass once more backward for G's "
                   "adversarial gradient): convolutions and matmuls only, 1 multiply-add = 2 FLOPs; BatchNorm, "
                   "activations, pooling, losses and optimizer updates not counted")


def step_flops(cfg: Config, num_joints: int, torso, micro_batch: int) -> int:
    """FLOPs of one optimizer step of one rank (grad_accum micro-batches of `micro_batch`), counted on the meta
    device: FLOPs depend on shapes only. Precision and the fast-path options do not change the count."""
    d = cfg.to_dict()
    d["train"].update(compile=False, channels_last=False, precision="fp32")
    d["distributed"].update(strategy="ddp", sync_batchnorm=False)
    c = config_from_dict(d, "bench flops")
    meta = torch.device("meta")
    rt = Runtime(device=meta)
    g, dis = build_models(c, num_joints, rt)
    hg, hd = wrap_models(c, rt, g, dis, micro_batch)
    s, h = c.data.input_size, c.data.heatmap_size
    batch = {"image": torch.empty(micro_batch, 3, s, s, device=meta),
             "heatmaps": torch.empty(micro_batch, num_joints, h, h, device=meta),
             "target_weight": torch.ones(micro_batch, num_joints, device=meta)}
    with FlopCounterMode(display=False) as counter:
        train_step([batch] * c.train.grad_accum, hg, hd, build_objective(c, torso, meta), "fp32")
    return int(counter.get_total_flops())


def step_bytes(cfg: Config, num_joints: int, torso, micro_batch: int, device: torch.device) -> dict:
    """Bytes per image one train_step moves at `micro_batch` (harness.bench.traffic.TRAFFIC_MODEL), counted on
    `device` on fresh eager models of this variant (its precision, memory format and optimizer kernels; never
    compiled), at batch 2 and 4 (one micro-batch, one rank)."""
    d = cfg.to_dict()
    d["train"].update(compile=False, grad_accum=1)
    d["distributed"].update(strategy="ddp", sync_batchnorm=False)
    c = config_from_dict(d, "bench bytes")
    rt = Runtime(device=device)
    s, h = c.data.input_size, c.data.heatmap_size

    def prepare(b: int):
        g, dis = build_models(c, num_joints, rt)
        hg, hd = wrap_models(c, rt, g, dis, b)
        gen = torch.Generator(device).manual_seed(0)
        batch = {"image": torch.randn(b, 3, s, s, device=device, generator=gen),
                 "heatmaps": torch.rand(b, num_joints, h, h, device=device, generator=gen),
                 "target_weight": torch.ones(b, num_joints, device=device)}
        if c.train.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        objective = build_objective(c, torso, device)
        return lambda: train_step([batch], hg, hd, objective, c.train.precision)

    return bytes_per_image(prepare, micro_batch)


class VariantRun:
    """One variant's models, handles, objective and sinks."""

    def __init__(self, v: Variant, rt: Runtime, data: RunData, micro_batch: int, run_dir: str):
        self.v, self.cfg, self.rt, self.data = v, v.cfg, rt, data
        set_numerics(rt.device, self.cfg.train.deterministic)
        g, d = build_models(self.cfg, data.skeleton.num_joints, rt)
        self.g, self.d = wrap_models(self.cfg, rt, g, d, micro_batch)
        self.objective = build_objective(self.cfg, data.skeleton.torso, rt.device)
        self.sinks = build_sinks(self.cfg, rt.rank, run_dir, interactive=False)
        # train.cuda_graphs: the step as one CUDA graph, as the trainer runs it
        self.graphed, why_not = graphed_step(self.cfg, rt, self.g, self.d, self.objective)
        if why_not is not None:
            v.unavailable.append(f"train.cuda_graphs ({why_not})")
        self.steps = 0
        self.resident: list[dict] | None = None  # resident mode: this variant's device batches ...
        self.resident_host: list[dict] | None = None  # ... and the host batches they came from
        self.peak_mb = 0.0

    def step(self, micro: list[dict], data_s: float) -> int:
        t, rt = self.cfg.train, self.rt
        t0 = time.perf_counter()
        batches = self.resident or [self.data.to_device(b, rt.device, t.channels_last) for b in micro]
        if self.graphed is not None:
            self.graphed(batches)
        else:
            synchronized_step(batches, self.g, self.d, self.objective, rt, t.precision)
        self.steps += 1
        n = sum(int(b["num_samples"]) for b in micro) * rt.world_size
        self.sinks.step(self.steps, {"images": n, "images_rank": n // rt.world_size,
                                     "step_s": time.perf_counter() - t0 + data_s, "data_s": data_s})
        return n


def host_batches(data: RunData, micro_batch: int) -> Iterator[dict]:
    epoch = 0
    while True:
        for batch in data.train_loader(micro_batch, epoch):
            if batch["num_samples"]:
                yield batch
        epoch += 1


def run(variants: list[Variant], steps: int, warmup: int, repeats: int, input_mode: str,
        peak_tflops: float | None, peak_gbps: float | None = None, profile: bool = True) -> dict:
    """The suite's results: {"rows", "runtime", "peak", "settings", ...} (rank 0; {} on other ranks)."""
    usable = [v for v in variants if v.cfg is not None]
    if not usable:
        raise UserError("no variant is available in this config")
    cfg0 = usable[0].cfg
    for v in usable:
        if v.cfg.data != cfg0.data or v.cfg.train.batch_size != cfg0.train.batch_size:
            raise UserError(f"variant {v.name}: data and batch settings must be the same in every variant")
    rt = init_runtime(cfg0.train.device, cfg0.distributed.backend)
    fix_threads(cfg0.train.threads)
    t = cfg0.train
    if t.batch_size % (rt.world_size * t.grad_accum):
        raise UserError(f"train.batch_size ({t.batch_size}) must be divisible by world size x grad_accum")
    micro_batch = t.batch_size // (rt.world_size * t.grad_accum)
    data = RunData(cfg0, rt.rank, rt.world_size)
    host = host_batches(data, micro_batch)
    tmp = tempfile.TemporaryDirectory(prefix="satpose-bench-")
    runs: dict[str, VariantRun] = {}
    setup_s, warmup_s = {}, {}
    for v in usable:
        if v.cfg.train.precision == "fp16" and rt.device.type != "cuda":
            v.unavailable.append("train.precision=fp16 (needs a GPU)")
            continue
        t0 = time.perf_counter()
        r = runs[v.name] = VariantRun(v, rt, data, micro_batch, f"{tmp.name}/{v.name}")
        if input_mode == "resident":
            first = [next(host) for _ in range(t.grad_accum)]
            r.resident = [data.to_device(b, rt.device, v.cfg.train.channels_last) for b in first]
            r.resident_host = first
        setup_s[v.name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(warmup):  # compile (train.compile) and cuDNN autotuning happen here
            r.step(_micro(r, host, t.grad_accum), 0.0)
        sync(rt.device)
        warmup_s[v.name] = time.perf_counter() - t0

    def block(r: VariantRun):
        def timed(_repeat: int) -> dict:
            if rt.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(rt.device)
            else:  # the CPU's matmul peak, sampled between blocks: its best moment is the run's peak
                sample_cpu_peak(torch.bfloat16 if r.cfg.train.precision == "bf16" else torch.float32)
            rt.barrier()
            clock, wait, images = StepClock(rt.device), 0.0, 0
            t0 = time.perf_counter()
            clock.mark()
            for _ in range(steps):
                tw = time.perf_counter()
                micro = _micro(r, host, t.grad_accum)
                dw = time.perf_counter() - tw
                wait += dw
                images += r.step(micro, dw)
                clock.mark()
            latencies = clock.latencies_s()
            wall = time.perf_counter() - t0
            if rt.device.type == "cuda":
                r.peak_mb = max(r.peak_mb, torch.cuda.max_memory_allocated(rt.device) / 2**20)
            return {"images": images, "wall_s": wall, "data_s": wait, "latencies_s": latencies}
        return timed

    results = interleave({name: block(r) for name, r in runs.items()}, repeats)
    kinds = {}  # where each variant's time goes, by op kind: 2 more steps under the profiler, after the timing
    for name, r in runs.items():
        if profile:
            kinds[name] = profile_kinds(lambda r=r: r.step(_micro(r, host, t.grad_accum), 0.0), 2, rt.device)
    for r in runs.values():
        r.sinks.close()
    tmp.cleanup()
    if not rt.is_main:
        rt.shutdown()
        return {}
    rows = []
    for name, res in results.items():
        r = runs[name]
        flops = step_flops(r.cfg, data.skeleton.num_joints, data.skeleton.torso, micro_batch)
        row = _row(r, res, flops / (micro_batch * t.grad_accum), rt, peak(rt.device, r.cfg.train.precision,
                                                                          peak_tflops), setup_s[name], warmup_s[name])
        traffic = step_bytes(r.cfg, data.skeleton.num_joints, data.skeleton.torso, micro_batch, rt.device)
        rows.append({**row, **roofline(traffic, row["images_per_s_per_device"], bandwidth(rt.device, peak_gbps)),
                     "time_by_kind": kinds.get(name)})
    for v in variants:
        if v.name not in runs:
            rows.append({"key": v.name, "variant": v.name, "value": None, "unavailable": v.unavailable,
                         "note": "variant unavailable: " + ", ".join(v.unavailable)})
    first = next((x["value"] for x in rows if x["value"]), None)
    for x in rows:
        x["ratio"] = x["value"] / first if x["value"] and first else None
    peaks = {r["peak"]["dtype"]: r["peak"] for r in rows if r.get("peak")}
    notes = [f"FLOPs: {FLOP_CONVENTION}", f"bytes: {TRAFFIC_MODEL}; counted per train_step (G and D, forward, "
             "backward, optimizers) on fresh eager copies of each variant at batch 2 and 4, per image at the run's "
             "micro-batch", f"memory bandwidth: {bandwidth(rt.device, peak_gbps)['source']}"]
    notes += [f"peak {k}: {_tf(p['tflops'])} TFLOP/s ({p['source']})" for k, p in peaks.items()]
    out = {"rows": rows, "notes": notes, "runtime": {"world_size": rt.world_size, "device": str(rt.device),
                                     "micro_batch": micro_batch, "global_batch": t.batch_size},
           "config": cfg0.to_dict(), "flop_convention": FLOP_CONVENTION, "traffic_model": TRAFFIC_MODEL,
           "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    rt.shutdown()
    return out


def _tf(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _micro(r: VariantRun, host: Iterator[dict], grad_accum: int) -> list[dict]:
    return r.resident_host if r.resident else [next(host) for _ in range(grad_accum)]


def _row(r: VariantRun, res: list[dict], flops_per_image: float, rt: Runtime, pk: dict, setup_s: float,
         warmup_s: float) -> dict:
    e2e = spread([x["images"] / x["wall_s"] for x in res])
    compute = spread([x["images"] / max(x["wall_s"] - x["data_s"], 1e-12) for x in res])
    latencies = [s * 1e3 for x in res for s in x["latencies_s"]]
    per_device = e2e["median"] / rt.world_size
    achieved = flops_per_image * per_device / 1e12
    return {"key": r.v.name, "variant": r.v.name, "overrides": r.v.overrides, "note": r.v.note,
            "precision": r.cfg.train.precision, "metric": "img/s", "higher_is_better": True,
            "value": e2e["median"], "images_per_s": e2e, "images_per_s_per_device": per_device,
            "compute_images_per_s": compute,
            "data_wait_share": sorted(x["data_s"] / x["wall_s"] for x in res)[len(res) // 2],
            "latency_ms": percentiles(latencies), "latencies_ms": latencies,
            "peak_memory_mb": r.peak_mb if rt.device.type == "cuda" else None,
            "setup_s": setup_s, "warmup_s": warmup_s, "flops_per_image": flops_per_image,
            "achieved_tflops_per_device": achieved,
            "mfu": achieved / pk["tflops"] if pk["tflops"] else None, "peak": pk}
