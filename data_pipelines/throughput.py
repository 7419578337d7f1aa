"""Loader throughput per core on real files: how close the CPU loader comes to its decode + warp ceiling.

One run measures, on the same records and in interleaved rounds, the median of:
  decode              images.load_image only
  decode+warp         decode and ONE warp with the sample's planned matrix: the ceiling of any per-sample loader
  loader wN           the CPU backend (loaders/cpu.py) with N worker processes (0: all in this process), over
                      a pass of host batches (loaders.dali.images_per_second, the measure `bench data` uses)
  prepare_batch (cpu) the per-batch device step (colour, normalisation, targets) run on this CPU
Everything runs single-threaded (torch and OpenCV). Per core = samples per CPU second of this process and its
workers, the figure that a machine shared with other work disturbs least; wall-clock rates are given too.

    python -m data_pipelines.throughput --root /work/shared/datasets/lsp --samples 200 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import cv2
import torch

from data_pipelines.batch import prepare_batch
from data_pipelines.errors import UserError
from data_pipelines.images import load_image
from data_pipelines.loaders.cpu import PoseDataset, make_loader, warp_crop
from data_pipelines.loaders.dali import images_per_second
from data_pipelines.lsp import load_lsp
from data_pipelines.records import PoseRecord
from data_pipelines.sampling import Augmentation, SampleKey, plan_sample
from data_pipelines.skeletons import LSP


def measure(records: Sequence[PoseRecord], workers: Sequence[int] = (0, 1, 2), rounds: int = 5,
            batch_size: int = 16, input_size: int = 256, heatmap_size: int = 64, sigma: float = 1.0,
            skeleton=LSP) -> dict[str, dict]:
    """{variant: {"per_core", "of_ceiling", "wall_per_s", "wall_of_ceiling", "rounds"}}: medians over rounds.

    per_core: samples per CPU second of this process and its workers (what sharing the machine with other
    work affects least); wall_per_s: samples per wall second. of_ceiling: per_core / decode+warp's per_core.
    """
    batches = -(-len(records) // batch_size)
    short = [w for w in workers if batches - 1 < 2 * w]
    if short:  # a DataLoader requests 2 batches per worker at once (prefetch_factor): they would be done untimed
        raise UserError(f"loader throughput: {len(records)} samples at batch {batch_size} are {batches} batches, "
                        f"too few to time {max(short)} workers (it needs 1 + 2 x workers = {1 + 2 * max(short)}): "
                        "more samples or a smaller batch")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # before any worker is forked: the workers inherit it
    aug = Augmentation()
    plans = [plan_sample(r, SampleKey(i, 0, 0), aug, input_size, heatmap_size, sigma, skeleton.flip_index)
             for i, r in enumerate(records)]
    dataset = PoseDataset(records, skeleton, input_size, heatmap_size, sigma, aug)
    loaders = {w: make_loader(dataset, batch_size, num_workers=w, persistent_workers=True, pin_memory=False)
               for w in workers}
    host = list(loaders[workers[0]])

    def timed(fn: Callable[[], None]) -> tuple[float, float]:
        t, cpu = time.perf_counter(), time.process_time()
        fn()
        return len(records) / (time.process_time() - cpu), len(records) / (time.perf_counter() - t)

    def decode():
        for r in records:
            load_image(r.image)

    def decode_warp():
        for r, p in zip(records, plans):
            warp_crop(load_image(r.image), p.affine, input_size)

    def device_step():
        for b in host:
            prepare_batch(b, "cpu", heatmap_size=heatmap_size, sigma=sigma)

    def loader(w: int, epoch: int) -> tuple[float, float]:
        loaders[w].set_epoch(epoch)
        r = images_per_second(loaders[w], batches=len(loaders[w]) - 1, warmup=1)
        return 1.0 / r["cpu_s_per_image"], r["images_per_s"]

    names = ["decode", "decode+warp"] + [f"loader w{w}" for w in workers] + ["prepare_batch (cpu)"]
    rates: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    for w in workers:
        loader(w, 10_000)  # warm-up: start the persistent workers, fill the page cache
    for rnd in range(rounds):
        rates["decode"].append(timed(decode))
        rates["decode+warp"].append(timed(decode_warp))
        for w in workers:
            rates[f"loader w{w}"].append(loader(w, rnd))
        rates["prepare_batch (cpu)"].append(timed(device_step))
    ceiling = [statistics.median(r[i] for r in rates["decode+warp"]) for i in (0, 1)]
    out = {}
    for name, r in rates.items():
        per_core, wall = (statistics.median(x[i] for x in r) for i in (0, 1))
        out[name] = {"per_core": per_core, "of_ceiling": per_core / ceiling[0], "wall_per_s": wall,
                     "wall_of_ceiling": wall / ceiling[1], "rounds": r}
    return out


def table(result: dict[str, dict]) -> str:
    """The result as a markdown table."""
    lines = ["| variant | samples per CPU second | % of decode+warp | wall samples/s | % of decode+warp (wall) |",
             "|---|---:|---:|---:|---:|"]
    for name, v in result.items():
        lines.append(f"| {name} | {v['per_core']:.0f} | {100 * v['of_ceiling']:.0f}% | {v['wall_per_s']:.0f} | "
                     f"{100 * v['wall_of_ceiling']:.0f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="LSP folder (images/, joints.mat)")
    p.add_argument("--samples", type=int, default=200, help="first N training records")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    records = load_lsp(args.root, "train")[: args.samples]
    result = measure(records, args.workers, args.rounds, args.batch_size)
    for name, v in result.items():
        print(f"{name:20s} per core / wall, by round: {' '.join(f'{c:.0f}/{w:.0f}' for c, w in v['rounds'])}")
    print(table(result))


if __name__ == "__main__":
    main()
