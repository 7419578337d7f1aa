"""A run's data, built from its config: records of both splits, the skeleton, the loaders and the per-batch
device step.

The trainer, `eval`, `bench` and the sweeps get their data here and nowhere else, so the data backend is
chosen in one place (`build_loader`). Every backend yields the host batches of data_pipelines/batch.py;
`RunData.to_device` turns one into what the training step consumes (colour jitter, normalisation and target
heatmaps on the device).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from data_pipelines.batch import BatchLoader, prepare_batch
from data_pipelines.coco import coco_paths
from data_pipelines.errors import UserError
from data_pipelines.loaders.cpu import PoseDataset, make_loader
from data_pipelines.loaders.dali import dali_available, make_dali_loader, require_dali
from data_pipelines.registry import dataset_info, load_records, skeleton_for
from data_pipelines.sampling import Augmentation
from harness.config import Config, DataConfig
from harness.distributed import resolve_device

BACKENDS = ("torch", "dali")


def load_split(c: DataConfig, which: str, split: str | None = None) -> list:
    """Records of the training ("train") or held-out ("val") part of the configured dataset."""
    info = dataset_info(c.name)
    split = split or (c.train_split if which == "train" else c.val_split) or \
        (info.train_split if which == "train" else info.eval_split)
    opts: dict[str, Any] = {}
    if c.name == "synthetic":
        opts = {"seed": c.synthetic_seed,
                "size": c.synthetic_train_size if which == "train" else c.synthetic_val_size}
    elif c.name == "mpii":
        opts = {"annotation_file": c.annotation_file, "validation_gt": c.validation_gt}
    elif c.name == "coco" and c.annotation_file:
        opts = {"annotation_file": c.annotation_file}
    return load_records(c.name, c.root, split, **opts)


def val_annotations(c: DataConfig) -> Path | None:
    """COCO: the annotation file the held-out records are read from (keypoint AP is scored against it, by
    training-time validation and `eval` alike). None for the PCK datasets, whose records carry their truth."""
    if c.name != "coco":
        return None
    return Path(c.annotation_file) if c.annotation_file else \
        coco_paths(c.root, c.val_split or dataset_info("coco").eval_split)[0]


def build_loader(backend: str, dataset: PoseDataset, device: str = "cpu", **kwargs) -> BatchLoader:
    """The one switch between data backends: a per-rank loader of host batches (make_loader's arguments;
    `device`, the training device, tells DALI where to decode and warp: "cuda" or its CPU mode)."""
    if backend == "torch":
        return make_loader(dataset, **kwargs)
    if backend == "dali":
        return make_dali_loader(dataset, device=device, **kwargs)
    raise UserError(f"data backend {backend!r} is not one of {BACKENDS}")


def resolve_backend(backend: str, device: str) -> str:
    """`data.backend` for a run on `device` ("cpu" or "cuda"): auto is dali where DALI is installed and the
    device is CUDA, else torch; an explicit dali without DALI installed is a UserError."""
    if backend == "auto":
        return "dali" if device == "cuda" and dali_available() else "torch"
    if backend == "dali":
        require_dali()
    return backend


class RunData:
    """Records, datasets and loaders of one run (one rank). `train=False` builds the held-out part only.

    Loaders are made once per batch size and reused across epochs (`set_epoch`), so their worker processes
    stay up between epochs and validations."""

    def __init__(self, cfg: Config, rank: int = 0, world_size: int = 1, train: bool = True):
        c = cfg.data
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.device = resolve_device(cfg.train.device)  # as harness.distributed.init_runtime decides
        self.backend = resolve_backend(c.backend, self.device)
        self.skeleton = skeleton_for(c.name)
        self.val_records = load_split(c, "val")[: c.max_val_samples]
        self.val_annotations = val_annotations(c)
        self.val_set = PoseDataset(self.val_records, self.skeleton, c.input_size, c.heatmap_size, c.sigma,
                                   on_bad_sample=c.on_bad_sample)
        self._loaders: dict[tuple[str, int], BatchLoader] = {}
        if not train:
            return
        self.train_records = load_split(c, "train")[: c.max_train_samples]
        if len(self.train_records) < cfg.train.batch_size:
            raise UserError(f"{c.name}: {len(self.train_records)} training samples, fewer than one batch "
                            f"({cfg.train.batch_size})")
        aug = Augmentation(rotation=c.rotation, scale=c.scale_jitter, flip=c.flip, color=c.color_jitter)
        self.train_set = PoseDataset(self.train_records, self.skeleton, c.input_size, c.heatmap_size, c.sigma,
                                     aug, on_bad_sample=c.on_bad_sample)
        self.steps_per_epoch = len(self.train_set) // cfg.train.batch_size

    def train_loader(self, micro_batch: int, epoch: int, start_batch: int = 0) -> BatchLoader:
        """This rank's batches of `epoch` from batch `start_batch` on (a data-parallel run also yields batches
        whose samples were all unreadable, so every rank can agree to skip that step)."""
        loader = self._loaders.get(("train", micro_batch))
        if loader is None:
            loader = self._loaders["train", micro_batch] = build_loader(
                self.backend, self.train_set, self.device, batch_size=micro_batch, seed=self.cfg.train.seed,
                epoch=epoch, rank=self.rank, world_size=self.world_size, num_workers=self.cfg.data.num_workers,
                shuffle=True, drop_last=True, persistent_workers=True, keep_empty=self.world_size > 1)
        loader.set_epoch(epoch, start_batch)
        return loader

    def val_loader(self, batch_size: int) -> BatchLoader:
        """This rank's share of the held-out records, in order."""
        loader = self._loaders.get(("val", batch_size))
        if loader is None:
            loader = self._loaders["val", batch_size] = build_loader(
                self.backend, self.val_set, self.device, batch_size=batch_size, seed=self.cfg.train.seed, epoch=0,
                rank=self.rank, world_size=self.world_size, num_workers=self.cfg.data.num_workers, shuffle=False,
                drop_last=False, persistent_workers=True)
        return loader

    def to_device(self, batch: dict, device: torch.device, channels_last: bool = False) -> dict:
        """One host batch ready for the training step on `device`: float32 NCHW images (colour-jittered and
        normalised), target heatmaps and weights there (data_pipelines.batch.prepare_batch)."""
        c = self.cfg.data
        return prepare_batch(batch, device, heatmap_size=c.heatmap_size, sigma=c.sigma,
                             channels_last=channels_last)
