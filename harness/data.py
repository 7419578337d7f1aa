"""A run's data, built from its config: records of both splits, the skeleton, and per-epoch loaders.

The trainer, `eval`, `bench` and the sweeps get their data here and nowhere else, so the data backend (the
PyTorch CPU loader today) is chosen in one place.
"""

from __future__ import annotations

from typing import Any

from data_pipelines.dataset import PoseDataset, make_loader
from data_pipelines.errors import UserError
from data_pipelines.registry import dataset_info, load_records, skeleton_for
from data_pipelines.transforms import Augmentation, eval_transform, train_transform
from harness.config import Config, DataConfig


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


class RunData:
    """Records, datasets and loaders of one run (one rank). `train=False` builds the held-out part only."""

    def __init__(self, cfg: Config, rank: int = 0, world_size: int = 1, train: bool = True):
        c = cfg.data
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.skeleton = skeleton_for(c.name)
        self.val_records = load_split(c, "val")[: c.max_val_samples]
        self.val_set = PoseDataset(self.val_records, self.skeleton,
                                   eval_transform(self.skeleton, c.input_size, c.heatmap_size, c.sigma),
                                   on_bad_sample=c.on_bad_sample)
        if not train:
            return
        self.train_records = load_split(c, "train")[: c.max_train_samples]
        if len(self.train_records) < cfg.train.batch_size:
            raise UserError(f"{c.name}: {len(self.train_records)} training samples, fewer than one batch "
                            f"({cfg.train.batch_size})")
        aug = Augmentation(rotation=c.rotation, scale=c.scale_jitter, flip=c.flip, color=c.color_jitter)
        self.train_set = PoseDataset(self.train_records, self.skeleton,
                                     train_transform(self.skeleton, c.input_size, c.heatmap_size, c.sigma, aug),
                                     on_bad_sample=c.on_bad_sample)
        self.steps_per_epoch = len(self.train_set) // cfg.train.batch_size

    def train_loader(self, micro_batch: int, epoch: int, start_batch: int = 0):
        """This rank's batches of `epoch` from batch `start_batch` on (a data-parallel run also yields batches
        whose samples were all unreadable, so every rank can agree to skip that step)."""
        return make_loader(self.train_set, batch_size=micro_batch, seed=self.cfg.train.seed, epoch=epoch,
                           rank=self.rank, world_size=self.world_size, num_workers=self.cfg.data.num_workers,
                           shuffle=True, drop_last=True, start_batch=start_batch, keep_empty=self.world_size > 1)

    def val_loader(self, batch_size: int):
        """This rank's share of the held-out records, in order."""
        return make_loader(self.val_set, batch_size=batch_size, seed=self.cfg.train.seed, epoch=0,
                           rank=self.rank, world_size=self.world_size, num_workers=self.cfg.data.num_workers,
                           shuffle=False, drop_last=False)
