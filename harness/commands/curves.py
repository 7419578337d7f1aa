"""`python -m harness curves RUN_DIR... [--out FILE]`: the curves of one or several `harness train` runs in one PNG
(losses, k_t, learning rates, img/s and the held-out score over steps, read from each run's metrics.jsonl;
several runs overlay, one colour per run). Default output: `<RUN_DIR>/curves.png` for one run (what the run
itself leaves at its end), `curves.png` in the current folder for several."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub, name: str) -> None:
    p = sub.add_parser(name, help="plot (and overlay) the curves of training runs from their metrics.jsonl",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="folders written by `harness train`")
    p.add_argument("--out", help="PNG to write (default: RUN_DIR/curves.png for one run, ./curves.png for several)")
    p.set_defaults(func=run)


def run(args) -> int:
    from harness.curves import run_labels, write_curves

    runs = run_labels(args.run_dirs)
    out = Path(args.out) if args.out else (Path(args.run_dirs[0]) / "curves.png" if len(runs) == 1
                                           else Path("curves.png"))
    drawn = write_curves(runs, out)
    lines = sum(len(v) for v in drawn.values())
    print(f"curves: {out} ({len(runs)} run(s), {lines} lines)")
    return 0
