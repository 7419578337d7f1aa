"""`python -m harness sweep --preset NAME [key=value ...] [--seeds N] [--scheduler fifo|asha]
[--gpus-per-trial G] [--cpus-per-trial C] [--storage DIR] [--name NAME] [--resume]`
`python -m harness sweep report DIR [--out OUT]`

Runs a Ray Tune sweep of `harness train` trials (see sweeps/presets.py for the presets), then writes its
report into the experiment folder. Exit 0: every trial finished (or ASHA stopped it early); 85: the sweep
was interrupted (SIGUSR1/SIGINT to the driver) and `--resume` continues it; 1: some trials failed.
"""

from __future__ import annotations

import argparse
import sys

from data_pipelines.errors import UserError

EXIT_INTERRUPTED = 85  # the requeue contract of slurm/train.sh, kept by slurm/sweep.sh


def register(sub, name: str) -> None:
    from sweeps.presets import PRESETS

    p = sub.add_parser(name, help="Ray Tune sweep of training runs (or: sweep report DIR)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help=f"one of: {', '.join(sorted(PRESETS))}")
    p.add_argument("--seeds", type=int, help="seeds per point (default: the preset's, 3; tiny presets 2)")
    p.add_argument("--scheduler", choices=["fifo", "asha"], default="fifo",
                   help="fifo: every trial to the end (the ablations); asha: stop weak trials early")
    p.add_argument("--gpus-per-trial", type=int, default=0, help="0: CPU trials; >1: torchrun inside the trial")
    p.add_argument("--cpus-per-trial", type=int, default=1)
    p.add_argument("--storage", default="runs/sweeps", help="folder of experiments (default runs/sweeps)")
    p.add_argument("--name", help="experiment name (default: the preset's)")
    p.add_argument("--resume", action="store_true", help="finish the experiment <storage>/<name> if it exists")
    p.add_argument("--out", help="report: output folder (default: DIR)")
    p.add_argument("words", nargs="*", metavar="key=value | report DIR", help="config overrides for every trial")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.words[:1] == ["report"]:
        if len(args.words) != 2 or args.preset:
            raise UserError("usage: python -m harness sweep report DIR [--out OUT]")
        from sweeps.report import write_report

        paths = write_report(args.words[1], args.out)
        print(f"report: {paths['markdown']} {paths['json']} {paths['png']}")
        return 0
    if not args.preset:
        raise UserError("sweep needs --preset NAME (or: sweep report DIR)")
    from sweeps.runner import run_sweep

    result = run_sweep(args.preset, args.words, seeds=args.seeds, scheduler=args.scheduler,
                       gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
                       storage=args.storage, name=args.name, resume=args.resume, report=args.out or True)
    paths = result["report"]
    print(f"sweep {result['experiment_dir']}: report {paths['markdown']}", flush=True)
    if result["errors"]:
        print("error: failed trials:\n  " + "\n  ".join(result["errors"]), file=sys.stderr)
        return 1
    if result["unfinished"]:
        print(f"sweep interrupted: {len(result['unfinished'])} trial(s) unfinished; finish with --resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
