"""`bench data`: loader throughput on the configured dataset's real files.

The torch CPU loader with each worker count, beside the decode-only and decode+warp ceilings and the per-batch
device step on this CPU, measured in interleaved rounds on the same records by
data_pipelines.throughput.measure (single-threaded torch and OpenCV). A row's value is per core: samples per
CPU second of the process and its workers, what a shared machine disturbs least; samples/s (wall clock) beside
it. Then, when DALI is installed, its loader (CPU mode; and the GPU where there is one) over the same records,
timed by data_pipelines.loaders.dali.images_per_second after those rounds (not interleaved with them), per
core the same way.
"""

from __future__ import annotations

import statistics

import torch

from data_pipelines import throughput
from data_pipelines.loaders.cpu import PoseDataset
from data_pipelines.loaders.dali import dali_available, images_per_second, make_dali_loader
from data_pipelines.registry import skeleton_for
from data_pipelines.sampling import Augmentation
from harness.bench.variants import Variant
from harness.data import load_split


def run(v: Variant, workers: list[int], samples: int, repeats: int) -> dict:
    cfg, c = v.cfg, v.cfg.data
    skeleton = skeleton_for(c.name)
    records = load_split(c, "train")[:samples]
    bs = cfg.train.batch_size
    res = throughput.measure(records, workers, repeats, bs, c.input_size, c.heatmap_size, c.sigma, skeleton)
    ceiling = res["decode+warp"]["per_core"]
    rows = [{"key": name, "metric": "samples per CPU-second", "higher_is_better": True, "value": r["per_core"],
             "per_core": r["per_core"], "wall_per_s": r["wall_per_s"], "of_ceiling": r["of_ceiling"],
             "rounds": r["rounds"]}
            for name, r in res.items()]
    notes = [f"{len(records)} {c.name} training records from {c.root}, batch {bs}, crops {c.input_size} px, "
             f"default augmentation; {repeats} interleaved rounds, medians"]
    if dali_available():
        dataset = PoseDataset(records, skeleton, c.input_size, c.heatmap_size, c.sigma, Augmentation())
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for dev in devices:
            loader = make_dali_loader(dataset, bs, num_workers=max(1, *workers), device=dev, drop_last=True)
            runs = []
            for r in range(repeats):
                loader.set_epoch(r)
                runs.append(images_per_second(loader, len(loader) - 1, warmup=1))
            ips = statistics.median(x["images_per_s"] for x in runs)
            per_core = 1 / statistics.median(x["cpu_s_per_image"] for x in runs)
            rows.append({"key": f"dali {dev} ({max(1, *workers)} py workers)", "metric": "samples per CPU-second",
                         "higher_is_better": True, "value": per_core, "per_core": per_core, "wall_per_s": ips,
                         "of_ceiling": per_core / ceiling, "rounds": [x["images_per_s"] for x in runs]})
        notes.append("DALI rows: measured after the interleaved rounds, not between them")
    else:
        notes.append("DALI: not installed (pip install '.[dali]'): no DALI rows")
    return {"rows": rows, "notes": notes, "runtime": {"device": "cpu", "world_size": 1}, "config": cfg.to_dict()}
