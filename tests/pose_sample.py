"""Test helper: one sample made the way every backend makes it - sampling.plan_sample (no pixels), one uint8
warp (loaders.cpu.warp_crop), then batch.prepare_batch on the CPU - returned without the batch dimension."""

from __future__ import annotations

import numpy as np
import torch

from data_pipelines.batch import collate, prepare_batch, sample_fields
from data_pipelines.loaders.cpu import warp_crop
from data_pipelines.records import PoseRecord
from data_pipelines.sampling import Augmentation, SampleKey, plan_sample
from data_pipelines.skeletons import LSP, Skeleton


def make_sample(image: np.ndarray, record: PoseRecord, rng: np.random.Generator | SampleKey | None = None,
                aug: Augmentation | None = None, input_size: int = 256, heatmap_size: int = 64,
                sigma: float = 1.0, skeleton: Skeleton = LSP) -> dict:
    """The prepared sample (float32 `image` [3, S, S], `heatmaps`, `target_weight`, `joints`, `affine`, ...)
    plus `crop`: the uint8 warp [S, S, 3] the loader ships."""
    plan = plan_sample(record, rng, aug, input_size, heatmap_size, sigma, skeleton.flip_index)
    crop = warp_crop(image, plan.affine, input_size)
    batch = prepare_batch(collate([sample_fields(crop, plan, record, 0)]), "cpu", heatmap_size=heatmap_size,
                          sigma=sigma)
    sample = {k: v[0] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    sample["crop"] = crop
    return sample
