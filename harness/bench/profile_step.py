"""Where a training step's time goes: per-variant step times on one resident batch, then torch.profiler's
table of the first variant's kernels and ops.

    python -m harness.bench.profile_step --preset lsp-sat-4s [key=value ...] [--variants fast bf16 reference]
        [--steps 5] [--warmup 3] [--rows 30] [--trace FILE.json]

The step is harness.step.synchronized_step on models built by harness.build (exactly what `harness train` and
`bench train` run), on one batch from the configured loader, prepared on the device once. Step times come from
a host clock after a device synchronise, per step; the profile covers `--steps` steps of the first variant.
A table sorted by device time says which kernels dominate; device time far under the wall time says the host
(Python, launches) is the limit. Diagnosis tool for scripts/gpu_check.sh, not a benchmark report.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from harness.bench.suite_train import VariantRun, host_batches
from harness.bench.timing import sync
from harness.bench.variants import resolve
from harness.data import RunData
from harness.distributed import fix_threads, init_runtime
from harness.step import synchronized_step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--preset")
    p.add_argument("--config", dest="config_file")
    p.add_argument("--variants", nargs="+", default=["fast"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--trace", help="also write a Chrome trace of the profiled steps")
    args = p.parse_intermixed_args(argv)
    variants = [v for v in resolve(args.variants, args.preset, args.config_file, args.overrides) if v.cfg]
    cfg = variants[0].cfg
    rt = init_runtime(cfg.train.device, cfg.distributed.backend)
    fix_threads(cfg.train.threads)
    data = RunData(cfg, rt.rank, rt.world_size)
    host = next(host_batches(data, cfg.train.batch_size))
    tmp = tempfile.TemporaryDirectory(prefix="satpose-profile-")
    first = None
    for v in variants:
        run = VariantRun(v, rt, data, cfg.train.batch_size, tmp.name)
        batch = [data.to_device(host, rt.device, v.cfg.train.channels_last)]
        t = v.cfg.train
        times, warm = [], []
        for i in range(args.warmup + args.steps):
            sync(rt.device)
            t0 = time.perf_counter()
            synchronized_step(batch, run.g, run.d, run.objective, rt, t.precision)
            sync(rt.device)
            (times if i >= args.warmup else warm).append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1e3
        print(f"variant {v.name} ({' '.join(v.overrides)}): median step {ms:.1f} ms over {args.steps} "
              f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}), {t.batch_size / ms * 1e3:.0f} img/s, "
              f"batch {t.batch_size}, on {rt.device}; warm-up steps (compile in the first): "
              f"{', '.join(f'{w:.2f}' for w in warm)} s", flush=True)
        if first is None:
            first = (v, run, batch)
    v, run, batch = first
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if rt.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            synchronized_step(batch, run.g, run.d, run.objective, rt, v.cfg.train.precision)
        sync(rt.device)
    key = "self_device_time_total" if rt.device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    print(f"profile of variant {v.name}, {args.steps} steps, sorted by {key}:")
    print(events.table(sort_by=key, row_limit=args.rows, max_name_column_width=70))
    if rt.device.type == "cuda":  # kernels only: an op's row repeats the time of the kernels it launched
        dev = sum(e.self_device_time_total for e in events
                  if e.device_type == DeviceType.CUDA and not e.is_user_annotation) / 1e3 / args.steps
        print(f"device time per step (sum of kernels): {dev:.1f} ms")
    if args.trace:
        prof.export_chrome_trace(args.trace)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
