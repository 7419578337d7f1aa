"""Loader throughput per core on real files: how close the CPU loader comes to its decode + warp ceiling.

One run measures, on the same records and in interleaved rounds (so a machine shared with other work loads
every variant alike), the median of:
  decode              images.load_image only
  decode+warp         decode and ONE warp with the sample's planned matrix: the ceiling of any per-sample loader
  loader wN           the CPU backend (loaders/cpu.py) with N worker processes, samples/s out of the iterator;
                      per core = samples/s / max(N, 1) (N = 0: the calling process does all the work)
  prepare_batch (cpu) the per-batch device step (colour, normalisation, targets) run on this CPU
Everything runs single-threaded (torch and OpenCV), so the figures are per core.

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
from data_pipelines.images import load_image
from data_pipelines.loaders.cpu import PoseDataset, make_loader, warp_crop
from data_pipelines.lsp import load_lsp
from data_pipelines.records import PoseRecord
from data_pipelines.sampling import Augmentation, SampleKey, plan_sample
from data_pipelines.skeletons import LSP


def measure(records: Sequence[PoseRecord], workers: Sequence[int] = (0, 1, 2), rounds: int = 5,
            batch_size: int = 16, input_size: int = 256, heatmap_size: int = 64, sigma: float = 1.0,
            skeleton=LSP) -> dict[str, dict]:
    """{variant: {"samples_per_s", "per_core", "of_ceiling", "cores", "rounds": [...]}} (medians over rounds)."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # before any worker is forked: the workers inherit it
    aug = Augmentation()
    plans = [plan_sample(r, SampleKey(i, 0, 0), aug, input_size, heatmap_size, sigma, skeleton.flip_index)
             for i, r in enumerate(records)]
    dataset = PoseDataset(records, skeleton, input_size, heatmap_size, sigma, aug)
    loaders = {w: make_loader(dataset, batch_size, num_workers=w, persistent_workers=True, pin_memory=False)
               for w in workers}
    host = list(loaders[workers[0]])

    def decode():
        for r in records:
            load_image(r.image)

    def decode_warp():
        for r, p in zip(records, plans):
            warp_crop(load_image(r.image), p.affine, input_size)

    def loader(w: int, epoch: int) -> Callable[[], None]:
        def run():
            loaders[w].set_epoch(epoch)
            n = sum(b["num_samples"] for b in loaders[w])
            assert n == len(records), f"{len(records) - n} bad samples: measure on readable records"
        return run

    def device_step():
        for b in host:
            prepare_batch(b, "cpu", heatmap_size=heatmap_size, sigma=sigma)

    cores = {"decode": 1, "decode+warp": 1} | {f"loader w{w}": max(w, 1) for w in workers}
    cores["prepare_batch (cpu)"] = 1
    rates: dict[str, list[float]] = {k: [] for k in cores}
    for w in workers:
        loader(w, 10_000)()  # warm-up: start the persistent workers, fill the page cache
    decode_warp()
    for rnd in range(rounds):
        variants = {"decode": decode, "decode+warp": decode_warp}
        variants |= {f"loader w{w}": loader(w, rnd) for w in workers}
        variants["prepare_batch (cpu)"] = device_step
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            rates[name].append(len(records) / (time.perf_counter() - t))
    ceiling = statistics.median(rates["decode+warp"])
    out = {}
    for name, r in rates.items():
        median = statistics.median(r)
        out[name] = {"samples_per_s": median, "per_core": median / cores[name], "cores": cores[name],
                     "of_ceiling": median / cores[name] / ceiling, "rounds": r}
    return out


def table(result: dict[str, dict]) -> str:
    """The result as a markdown table."""
    lines = ["| variant | samples/s | processes | per core | % of decode+warp (per core) |",
             "|---|---:|---:|---:|---:|"]
    for name, v in result.items():
        lines.append(f"| {name} | {v['samples_per_s']:.0f} | {v['cores']} | {v['per_core']:.0f} | "
                     f"{100 * v['of_ceiling']:.0f}% |")
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
        print(f"{name:20s} rounds: {' '.join(f'{x:.0f}' for x in v['rounds'])}")
    print(table(result))


if __name__ == "__main__":
    main()
