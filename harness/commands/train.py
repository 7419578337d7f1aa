"""`python -m harness train [--preset NAME | --config FILE] [--run-dir DIR] [--resume auto|PATH] [key=value ...]`"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from harness.config import load_config, preset_names


def register(sub, name: str) -> None:
    p = sub.add_parser(name, help="train G (and D) on one process, or on many under torchrun/srun",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help=f"one of: {', '.join(preset_names())}")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--run-dir", help="output folder (default runs/<preset or config>-<time>)")
    p.add_argument("--resume", help="'auto' (newest valid checkpoint in the run dir, if any) or a path")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.set_defaults(func=run)


def write_run_curves(run_dir: Path) -> None:
    """`<run_dir>/curves.png` from the run's metrics.jsonl; a plotting error is a warning, never a lost run."""
    try:
        from harness.curves import write_curves

        write_curves({run_dir.name: run_dir}, run_dir / "curves.png")
    except Exception as exc:  # the run is finished and saved: report, do not fail it
        print(f"warning: {run_dir / 'curves.png'} not written: {type(exc).__name__}: {exc}", file=sys.stderr,
              flush=True)


def run(args) -> int:
    from harness.trainer import EXIT_PREEMPTED, Preempted, Trainer

    cfg = load_config(args.preset, args.config, args.overrides)
    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        stem = args.preset or (Path(args.config).stem if args.config else "run")
        run_dir = Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = Trainer(cfg, run_dir, resume=args.resume)
    clean, code, summary = False, 0, None
    try:
        summary = trainer.fit()
        clean = True
    except Preempted:
        clean, code = True, EXIT_PREEMPTED  # every rank agreed to stop and the checkpoint is written
    finally:
        trainer.rt.shutdown(clean)
    if trainer.rt.is_main and clean:
        write_run_curves(run_dir)
    if summary:
        trainer.sinks.info(f"held-out {summary['metric']} = {summary['value']:.2f}%  "
                         f"(best {summary['best']['value']:.2f}% at step {summary['best']['step']}; "
                         f"{summary['steps']} steps, {summary['steps_this_run']} of them in this run's "
                         f"{summary['wall_s']:.0f} s, "
                         f"{summary['images_per_s']} img/s)  -> {run_dir / 'summary.json'}")
    if trainer.rt.distributed:
        # A multi-process run ends here, with its results on disk and the group left: interpreter teardown
        # after gloo was used sometimes aborted a rank ("terminate called without an active exception",
        # SIGABRT), which torchrun reports as a failed run although everything was written.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
