"""The PyTorch CPU backend: DataLoader workers decode, warp once and plan each sample; uint8 crops out.

Per sample a worker does only what must be per sample - decode (images.load_image), the sample's plan
(sampling.plan_sample: crop matrix, keypoints, weights, colour factors) and ONE cv2.warpAffine of the uint8
image - and `batch.collate` stacks the results into the host batch of data_pipelines/batch.py. Colour jitter,
normalisation and targets are per batch on the training device (batch.prepare_batch).

Bad samples: `PoseDataset.__getitem__` returns a `BadSample` marker instead of a sample (under "raise" too,
when called in a worker, so the error is raised in the main process by BatchLoader, not as a worker
traceback; called in the main process under "raise", it raises BadSampleError directly). Unexpected
exceptions (bugs) propagate with a note naming the sample's index and file.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from data_pipelines.batch import BAD_SAMPLE_POLICIES, BadSample, BatchLoader, collate, sample_fields
from data_pipelines.errors import UserError
from data_pipelines.images import BadImageError, load_image
from data_pipelines.records import PoseRecord
from data_pipelines.sampling import (
    Augmentation,
    BadSampleError,
    EpochBatchSampler,
    SampleKey,
    check_nonneg,
    plan_sample,
)
from data_pipelines.skeletons import Skeleton

SYNTHETIC_PREFIX = "synthetic:"
_WORKER_STREAM = 0x5A3D_0003  # SeedSequence word of the workers' global RNGs (see sampling's streams)


def load_record_image(record: PoseRecord) -> np.ndarray:
    """Default image loader: the record's file via images.load_image, or, for "synthetic:<seed>:<index>"
    records, the image rendered by data_pipelines.synthetic.render_record (generator settings from the
    record's meta). Either way RGB uint8 [H, W, 3]; failures raise BadImageError naming the image."""
    if not record.image.startswith(SYNTHETIC_PREFIX):
        return load_image(record.image)
    from data_pipelines.synthetic import render_record  # lazy: only synthetic runs need it

    try:
        return render_record(record)
    except UserError as err:
        raise BadImageError.for_file(record.image, f"cannot render synthetic image: {err}") from err


def warp_crop(image: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """The S x S uint8 crop of an RGB uint8 image [H, W, 3] through the forward 2x3 matrix (original -> crop,
    pixel centres at integers, as cv2 samples): bilinear, constant black border."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"warp_crop expects an RGB uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    return cv2.warpAffine(image, affine, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


class PoseDataset(Dataset):
    """Records -> one sample's host-batch fields (batch.sample_fields), indexed by SampleKey (an int means
    seed 0, epoch 0). `augmentation=None` is evaluation: the record's centre/scale crop, colour factors 1.
    `image_loader(record) -> RGB uint8 [H, W, 3]` (default: load_record_image: files and synthetic records).
    """

    def __init__(self, records: Sequence[PoseRecord], skeleton: Skeleton, input_size: int = 256,
                 heatmap_size: int = 64, sigma: float = 1.0, augmentation: Augmentation | None = None,
                 image_loader: Callable[[PoseRecord], np.ndarray] | None = None, on_bad_sample: str = "skip"):
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"on_bad_sample must be one of {BAD_SAMPLE_POLICIES}, got {on_bad_sample!r}")
        if input_size <= 0 or heatmap_size <= 0 or input_size % heatmap_size:
            raise ValueError(f"input_size ({input_size}) must be a positive multiple of heatmap_size "
                             f"({heatmap_size})")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        records = list(records)
        if not records:
            raise ValueError("PoseDataset: no records")
        for i, r in enumerate(records):
            if not isinstance(r, PoseRecord):
                raise TypeError(f"PoseDataset: record {i} is a {type(r).__name__}, not a PoseRecord")
            if r.num_joints != skeleton.num_joints:
                raise ValueError(f"PoseDataset: record {i} ({r.image}) has {r.num_joints} joints, skeleton "
                                 f"{skeleton.name!r} has {skeleton.num_joints}")
        self.records = records
        self.skeleton = skeleton
        self.input_size, self.heatmap_size, self.sigma = int(input_size), int(heatmap_size), float(sigma)
        self.augmentation = augmentation
        self.image_loader = image_loader or load_record_image
        self.on_bad_sample = on_bad_sample

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key) -> dict | BadSample:
        key = key if isinstance(key, SampleKey) else SampleKey(key, 0, 0)
        index = check_nonneg("index", key.index)
        if index >= len(self.records):
            raise IndexError(f"sample index {index} out of range for {len(self.records)} records")
        record = self.records[index]
        try:
            plan = plan_sample(record, key, self.augmentation, self.input_size, self.heatmap_size, self.sigma,
                               self.skeleton.flip_index)
            crop = warp_crop(self.image_loader(record), plan.affine, self.input_size)
            return sample_fields(crop, plan, record, index)
        except (BadImageError, BadSampleError) as err:
            reason = err.reason or str(err)
            if self.on_bad_sample == "raise" and get_worker_info() is None:
                if isinstance(err, BadSampleError):
                    raise
                raise BadSampleError(f"{record.image}: bad sample {index}: {reason}", record.image,
                                     reason) from err
            return BadSample(record.image, reason, index)
        except Exception as err:
            err.add_note(f"while loading sample {index} ({record.image}) of epoch {key.epoch}")
            raise


def seed_worker(worker_id: int, seed: int, rank: int) -> None:
    """worker_init_fn: seed python/numpy/torch per (seed, rank, worker).

    The pipeline's own randomness never uses these global states (it is per sample, see sample_rng);
    this only keeps anything else that draws from them reproducible and different across workers.
    Deliberately NOT done here: cv2.setNumThreads - in a forked worker it can deadlock on the thread
    pool inherited from the parent (seen here, opencv-python-headless 5.0.0, in most runs of a repro).
    """
    ss = np.random.SeedSequence([_WORKER_STREAM, seed, rank, worker_id])
    s32, s64 = ss.generate_state(1, np.uint32)[0], ss.generate_state(1, np.uint64)[0]
    random.seed(int(s64))
    np.random.seed(int(s32))  # noqa: NPY002 - legacy global state, seeded for third-party code
    torch.manual_seed(int(s64) & 0x7FFF_FFFF_FFFF_FFFF)


class PoseLoader(BatchLoader):
    """The CPU backend's loader: a DataLoader over a PoseDataset driven by an EpochBatchSampler (the epoch
    travels in the sample keys, so persistent workers follow set_epoch)."""

    def __init__(self, dataset: PoseDataset, sampler: EpochBatchSampler, loader: DataLoader,
                 keep_empty: bool = False):
        super().__init__(sampler, dataset.on_bad_sample, keep_empty)
        self.dataset = dataset
        self.loader = loader

    def host_batches(self) -> Iterator[dict]:
        for batch in self.loader:
            yield {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def collate_for_transfer(items: Sequence[dict | BadSample]) -> dict:
    """batch.collate with the small per-sample fields as numpy arrays (PoseLoader makes them tensors again).

    A worker's torch tensors reach the main process through shared memory, and each costs a file-descriptor
    round trip to the worker; only the uint8 crops are worth that, the rest (a few KB) is cheaper pickled."""
    return {k: v.numpy() if isinstance(v, torch.Tensor) and k != "image" else v
            for k, v in collate(items).items()}


def make_loader(dataset: PoseDataset, batch_size: int, seed: int = 0, epoch: int = 0, rank: int = 0,
                world_size: int = 1, num_workers: int = 0, shuffle: bool = True, drop_last: bool = False,
                start_batch: int = 0, persistent_workers: bool = False,
                pin_memory: bool | None = None, keep_empty: bool = False) -> PoseLoader:
    """A PoseLoader for one rank. Reuse it across epochs with `set_epoch(epoch, start_batch)`; with
    persistent_workers the worker processes stay up between epochs. pin_memory defaults to
    torch.cuda.is_available()."""
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    sampler = EpochBatchSampler(len(dataset), batch_size, seed, epoch, rank, world_size, shuffle, drop_last,
                                start_batch)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_for_transfer,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        worker_init_fn=functools.partial(seed_worker, seed=sampler.seed, rank=rank) if num_workers else None,
        persistent_workers=persistent_workers and num_workers > 0,
    )
    return PoseLoader(dataset, sampler, loader, keep_empty)
