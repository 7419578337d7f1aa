"""`python -m harness bench SUITE`: throughput and efficiency reports (harness/bench), and `bench compare`.

    python -m harness bench train --preset lsp-sat-4s --variants reference fast --steps 5 --repeats 3
    python -m harness bench infer --preset lsp-sat-4s --batch-sizes 1 16 64
    python -m harness bench data --preset lsp-sat-4s --workers 0 1 2
    python -m harness bench kernels
    python -m harness bench scaling --preset quickstart --world-sizes 1 2
    python -m harness bench compile --preset lsp-sat-4s --variants regional:train.compile=true whole:...
    python -m harness bench accuracy --preset lsp-tta-tiny --variants sat none --seeds 2 --target 40
    python -m harness bench compare OLD.json NEW.json --threshold 0.05   (exit 1 on a regression)
"""

from __future__ import annotations

import datetime
import shlex
import sys
from pathlib import Path

from data_pipelines.errors import UserError

SUITES = {"train": "the training step (G and D) per variant: img/s, latency, data wait, FLOPs, MFU, bytes per "
                   "image and bandwidth share, time by op kind",
          "infer": "G alone, with and without flip test, over batch sizes: img/s, latency, bytes per image and "
                   "bandwidth share, time by op kind",
          "data": "loader throughput per backend and worker count beside decode and decode+warp ceilings",
          "kernels": "every fused op against its torch reference: time, GB/s, bandwidth floor",
          "scaling": "the train suite under torchrun at world sizes 1..N: efficiency vs linear",
          "compile": "torch.compile of the training step per variant, cold and warm inductor cache, fresh processes",
          "accuracy": "score vs images and training minutes per variant and seed under one budget, final score "
                      "with flip test, paired differences, time to --target, the mean-pose baseline"}
DEFAULT_VARIANTS = {"accuracy": ["sat", "none"]}
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"


def register(subparsers, name: str) -> None:
    suites = "; ".join(f"{k}: {v}" for k, v in SUITES.items())
    p = subparsers.add_parser(name, help="throughput / latency / MFU reports, and compare two of them",
                              description=f"{__doc__.splitlines()[0]} Suites - {suites}; compare: B against A "
                                          "row by row, exit 1 on a regression beyond --threshold.")
    p.add_argument("suite", choices=[*SUITES, "compare"])
    p.add_argument("items", nargs="*", metavar="key=value | REPORT.json",
                   help="config overrides; compare: the two reports A.json B.json")
    p.add_argument("--preset")
    p.add_argument("--config", dest="config_file")
    p.add_argument("--variants", nargs="+", default=None,
                   help="named variants (reference, fast, bf16, ...; harness/bench/variants.py) or "
                        "name:key=value,key=value; the first is the baseline of the ratios (accuracy: of the "
                        "paired differences; default sat none)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (calls) per variant per repeat")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (compile happens here)")
    p.add_argument("--repeats", type=int, default=3, help="rounds over the variants, interleaved")
    p.add_argument("--input", choices=("loader", "resident"), default="loader",
                   help="train, scaling: batches from the configured loader (end-to-end) or one resident batch")
    p.add_argument("--batch-sizes", type=int, nargs="+", help="infer: batch sizes (default 1 16 64; CPU 1 8)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="data: loader worker counts")
    p.add_argument("--samples", type=int, default=200, help="data: the first N training records")
    p.add_argument("--kernel-batch", type=int, help="kernels: batch of the cases (default 64; CPU 8)")
    p.add_argument("--world-sizes", type=int, nargs="+", help="scaling: world sizes (default 1..GPUs; CPU 1 2)")
    p.add_argument("--peak-tflops", type=float, help="dense peak per device for MFU, overriding the table")
    p.add_argument("--peak-gbps", type=float, help="memory bandwidth per device in GB/s for the roofline, "
                                                   "overriding the table (CPU: unknown without it)")
    p.add_argument("--no-profile", action="store_true",
                   help="train, infer: leave out the per-op-kind profile (torch.profiler, untimed calls)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report folder (default docs/benchmarks)")
    p.add_argument("--formats", nargs="+", default=["json", "md", "png"], choices=("json", "md", "png"))
    p.add_argument("--label", help="name suffix of the report files (default: the preset's name)")
    p.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    p.add_argument("--seeds", type=int, default=2, help="accuracy: seeds per variant (train.seed, +1, ...)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="accuracy: training minutes per run (train.max_minutes)")
    budget.add_argument("--images", type=int, help="accuracy: training images per run (sets train.max_steps)")
    p.add_argument("--target", type=float, help="accuracy: the score whose first crossing is reported")
    p.add_argument("--threshold", type=float, default=0.05, help="compare: relative loss counted as a regression")
    p.set_defaults(func=run)


def _positive(args) -> None:
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    if args.warmup < 0:
        raise UserError("--warmup must be at least 0")


def run(args) -> int:
    if args.suite == "compare":
        return _compare(args)
    _positive(args)
    from harness.bench import SCHEMA
    from harness.bench.variants import resolve

    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    variants = resolve(args.variants or DEFAULT_VARIANTS.get(args.suite, ["default"]), args.preset,
                       args.config_file, args.items)
    if args.suite == "train":
        from harness.bench import suite_train

        result = suite_train.run(variants, args.steps, args.warmup, args.repeats, args.input, args.peak_tflops,
                                 args.peak_gbps, not args.no_profile)
    elif args.suite == "infer":
        from harness.bench import suite_infer

        result = suite_infer.run(variants, args.steps, args.warmup, args.repeats, args.batch_sizes, args.peak_gbps,
                                 not args.no_profile)
    elif args.suite == "data":
        from harness.bench import suite_data

        result = suite_data.run(variants[0], args.workers, args.samples, args.repeats)
    elif args.suite == "compile":
        from harness.bench import suite_compile

        result = suite_compile.run(variants, args.repeats)
    elif args.suite == "kernels":
        from harness.bench import suite_kernels

        result = suite_kernels.run(args.kernel_batch, args.repeats)
    elif args.suite == "accuracy":
        from harness.bench import suite_accuracy

        result = suite_accuracy.run(variants, args.seeds, args.images, args.minutes, args.target)
    else:
        from harness.bench import suite_scaling

        result = suite_scaling.run(args, variants)
    if not result:  # a rank other than 0
        return 0
    import torch

    from harness.bench.machine import device_slug, machine_info
    from harness.bench.report import print_table, write

    machine = machine_info(torch.device(result["runtime"]["device"]))
    settings = {"variants": [v.name for v in variants], "overrides": args.items, "preset": args.preset,
                "config_file": args.config_file, "steps": args.steps, "warmup": args.warmup,
                "repeats": args.repeats}
    if args.suite == "train":
        settings["input"] = args.input
    if args.suite == "accuracy":  # steps, warm-up and repeats do not apply
        for k in ("steps", "warmup", "repeats"):
            settings.pop(k)
        settings.update(seeds=args.seeds, images=args.images, minutes=args.minutes, target=args.target)
    report = {"schema": SCHEMA, "suite": args.suite, "created": created, "label": args.label or args.preset,
              "command": "python -m harness bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"]
                                                                 else [args.suite, *args.items]),
              "machine": machine, "device_slug": device_slug(machine), "settings": settings, **result,
              "notes": result.get("notes", []) + args.note}
    print_table(report)
    for path in write(report, args.out, tuple(args.formats)):
        print(f"wrote {path}")
    return 0


def _compare(args) -> int:
    from harness.bench.report import compare, load

    if len(args.items) != 2:
        raise UserError("bench compare takes two report files: A.json B.json")
    if args.threshold < 0:
        raise UserError("--threshold must be >= 0")
    lines, regressions = compare(load(args.items[0]), load(args.items[1]), args.threshold)
    print("\n".join(lines))
    if regressions:
        print(f"{len(regressions)} regression(s) beyond {args.threshold:.0%}: {', '.join(regressions)}")
        return 1
    print(f"no regression beyond {args.threshold:.0%}")
    return 0
