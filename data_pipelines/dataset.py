"""torch Dataset over PoseRecords, a deterministic epoch/rank batch sampler and the DataLoader factory.

Determinism (the trainer's bit-exact resume depends on it):

- Per-sample randomness is STATELESS: sample `index` of epoch `epoch` under run seed `seed` gets
  `sample_rng(seed, epoch, index)`, a fresh numpy Generator. No worker state is involved, so a sample
  is identical whatever the number of workers, their assignment, persistence, or a restart.
- The epoch's order comes from (seed, epoch) only (`EpochBatchSampler`), padded like
  DistributedSampler so every rank gets the same number of batches; `start_batch` skips the first k
  batches of the epoch for a mid-epoch resume.
- The sampler yields `SampleKey(index, seed, epoch)` keys, so persistent workers see the new epoch
  without any state being pushed into them.

Bad samples (an unreadable image - BadImageError - or no annotated joint inside the crop):
- `on_bad_sample="skip"`: `__getitem__` returns a `BadSample(file, reason, index)` marker instead of a
  sample; `collate_samples` drops markers and lists them in the batch (`skipped`, `skipped_reasons`), so
  the information crosses worker processes inside the batch. `PoseLoader` (main process) logs one
  warning per bad file and accumulates `skipped_total` / `skipped_files` for the trainer to log.
  A batch may therefore hold FEWER than batch_size samples; a batch whose samples were all bad is not
  yielded at all (it is still counted in `batch_index`, see PoseLoader) unless the loader is made with
  `keep_empty=True` (data-parallel training: every rank must take part in every step, so the ranks
  agree to skip such a step together).
- `on_bad_sample="raise"`: a clear `BadSampleError` (a UserError: one CLI error line) naming the file
  and the reason, raised in the MAIN process: directly by `__getitem__` when called there, and by
  PoseLoader when the marker comes from a worker (no worker traceback to dig through).
Unexpected exceptions (bugs) propagate with a note naming the sample's index and file.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from data_pipelines.errors import UserError
from data_pipelines.images import BadImageError, load_image
from data_pipelines.records import PoseRecord
from data_pipelines.skeletons import Skeleton

log = logging.getLogger(__name__)

BAD_SAMPLE_POLICIES = ("skip", "raise")
SYNTHETIC_PREFIX = "synthetic:"

# Leading words of the SeedSequence entropy, so the order stream and the per-sample streams never collide
# (numpy's SeedSequence gives [a, b] and [a, b, 0] the same state).
_SAMPLE_STREAM, _ORDER_STREAM, _WORKER_STREAM = 0x5A3D_0001, 0x5A3D_0002, 0x5A3D_0003


class BadSampleError(UserError):
    """A sample that cannot be used (`on_bad_sample="raise"`); the message starts with the file."""

    def __init__(self, message: str, path: str = "", reason: str = ""):
        super().__init__(message)
        self.path = path
        self.reason = reason

    def __reduce__(self):
        return type(self), (str(self), self.path, self.reason)


class BadSample(NamedTuple):
    """Marker returned instead of a sample under `on_bad_sample="skip"` (and from workers under "raise")."""

    file: str
    reason: str
    index: int


class SampleKey(NamedTuple):
    """What the sampler yields: which sample, under which run seed and epoch."""

    index: int
    seed: int
    epoch: int


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The Generator holding ALL of sample `index`'s randomness in `epoch` of the run seeded `seed`."""
    return np.random.default_rng([_SAMPLE_STREAM, _check_nonneg("seed", seed), _check_nonneg("epoch", epoch),
                                  _check_nonneg("index", index)])


def _check_nonneg(name: str, value) -> int:
    if int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------------------
# Image source: files, or synthetic people rendered on the fly.

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


# ---------------------------------------------------------------------------------------------------------

class PoseDataset(Dataset):
    """Records -> transformed samples (dicts, see data_pipelines/transforms.py) with `index` added.

    `transform(image, record, rng)`; `image_loader(record) -> RGB uint8 [H, W, 3]` (default:
    load_record_image: files and synthetic records). Indexing with an int uses seed 0, epoch 0; the
    loader indexes with SampleKeys.
    """

    def __init__(self, records: Sequence[PoseRecord], skeleton: Skeleton, transform: Callable,
                 image_loader: Callable[[PoseRecord], np.ndarray] | None = None, on_bad_sample: str = "skip"):
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"on_bad_sample must be one of {BAD_SAMPLE_POLICIES}, got {on_bad_sample!r}")
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
        self.transform = transform
        self.image_loader = image_loader or load_record_image
        self.on_bad_sample = on_bad_sample

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key) -> dict | BadSample:
        index, seed, epoch = key if isinstance(key, tuple) else (key, 0, 0)
        index = _check_nonneg("index", index)
        if index >= len(self.records):
            raise IndexError(f"sample index {index} out of range for {len(self.records)} records")
        record = self.records[index]
        try:
            return self._sample(record, index, seed, epoch)
        except (BadImageError, BadSampleError) as err:
            reason = err.reason or str(err)
            if self.on_bad_sample == "raise" and get_worker_info() is None:
                if isinstance(err, BadSampleError):
                    raise
                raise BadSampleError(f"{record.image}: bad sample {index}: {reason}", record.image,
                                     reason) from err
            return BadSample(record.image, reason, index)
        except Exception as err:
            err.add_note(f"while loading sample {index} ({record.image}) of epoch {epoch}")
            raise

    def _sample(self, record: PoseRecord, index: int, seed: int, epoch: int) -> dict:
        if not np.all(np.isfinite(record.center)):
            raise BadSampleError(f"{record.image}: non-finite person centre {record.center.tolist()}",
                                 record.image, "non-finite person centre")
        if not np.any(record.visibility > 0):
            raise BadSampleError(f"{record.image}: no annotated joint", record.image, "no annotated joint")
        image = self.image_loader(record)
        sample = self.transform(image, record, sample_rng(seed, epoch, index))
        if float(sample["target_weight"].sum()) == 0.0:
            raise BadSampleError(f"{record.image}: no annotated joint inside the crop", record.image,
                                 "no annotated joint inside the crop")
        sample["index"] = index
        return sample


def collate_samples(items: list) -> dict:
    """Stack the good samples (default_collate) and list the bad ones: `skipped` (file names),
    `skipped_reasons`. `num_samples` is the number of stacked samples (0: no sample tensors at all)."""
    good = [s for s in items if not isinstance(s, BadSample)]
    bad = [s for s in items if isinstance(s, BadSample)]
    batch = default_collate(good) if good else {}
    batch["num_samples"] = len(good)
    batch["skipped"] = [b.file for b in bad]
    batch["skipped_reasons"] = [b.reason for b in bad]
    return batch


# ---------------------------------------------------------------------------------------------------------

class EpochBatchSampler:
    """Deterministic batches of SampleKeys for one rank; the order depends only on (seed, epoch).

    shuffle: a permutation from a numpy Generator seeded by (seed, epoch); else 0..N-1. Like
    DistributedSampler, the order is padded by repeating its beginning to a multiple of world_size and
    rank r takes positions r, r + world_size, ... (so eval with world_size > 1 sees a few samples twice:
    deduplicate by `index`). Then batches of batch_size (drop_last drops a short final batch), and the
    first `start_batch` batches are skipped (mid-epoch resume).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, epoch: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True, drop_last: bool = False, start_batch: int = 0):
        if num_samples <= 0 or batch_size <= 0:
            raise ValueError(f"num_samples ({num_samples}) and batch_size ({batch_size}) must be positive")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = _check_nonneg("seed", seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.set_epoch(epoch, start_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = _check_nonneg("epoch", epoch)
        self.start_batch = _check_nonneg("start_batch", start_batch)
        if self.start_batch > self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} is past the epoch's "
                             f"{self.batches_per_epoch} batches")

    @property
    def samples_per_rank(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    @property
    def batches_per_epoch(self) -> int:
        n, b = self.samples_per_rank, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def rank_indices(self) -> list[int]:
        """This rank's sample indices for the current epoch, in order (all batches, none skipped)."""
        if self.shuffle:
            rng = np.random.default_rng([_ORDER_STREAM, self.seed, self.epoch])
            order = rng.permutation(self.num_samples).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.samples_per_rank * self.world_size
        while len(order) < total:
            order += order[: total - len(order)]
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        indices = self.rank_indices()
        b = self.batch_size
        for k in range(self.start_batch, self.batches_per_epoch):
            yield [SampleKey(i, self.seed, self.epoch) for i in indices[k * b:(k + 1) * b]]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


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


class PoseLoader:
    """Iterates a DataLoader over a PoseDataset and accounts for bad samples in the main process.

    Each yielded batch is collate_samples' dict plus `batch_index`: the batch's position in the epoch
    (counting skipped-start batches and all-bad batches), so the trainer can resume with
    `set_epoch(epoch, start_batch=batch_index + 1)`. A batch whose samples were all bad is not yielded
    (with `keep_empty`, it is: `num_samples` 0, no tensors); its files are added to the next yielded
    batch's `skipped` list (an all-bad LAST batch shows up only in the counters). The complete record:
    `skipped_total` / `skipped_files` (over the loader's life) and `skipped_in_epoch` (reset by each new
    iteration).
    """

    def __init__(self, dataset: PoseDataset, sampler: EpochBatchSampler, loader: DataLoader,
                 keep_empty: bool = False):
        self.dataset = dataset
        self.sampler = sampler
        self.loader = loader
        self.keep_empty = keep_empty
        self.skipped_total = 0
        self.skipped_in_epoch = 0
        self.skipped_files: list[str] = []

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict]:
        self.skipped_in_epoch = 0
        start, epoch = self.sampler.start_batch, self.sampler.epoch
        pending: list[tuple[str, str]] = []  # bad samples of all-bad batches, reported with the next batch
        for k, batch in enumerate(self.loader):
            for file, reason in zip(batch["skipped"], batch["skipped_reasons"]):
                if self.dataset.on_bad_sample == "raise":
                    raise BadSampleError(f"{file}: bad sample: {reason} (on_bad_sample='raise')",
                                         file, reason)
                log.warning("skipped bad sample %s: %s (epoch %d)", file, reason, epoch)
                self.skipped_total += 1
                self.skipped_in_epoch += 1
                self.skipped_files.append(file)
            if batch["num_samples"] == 0 and not self.keep_empty:
                pending += zip(batch["skipped"], batch["skipped_reasons"])
                continue
            if pending:
                batch["skipped"] = [f for f, _ in pending] + batch["skipped"]
                batch["skipped_reasons"] = [r for _, r in pending] + batch["skipped_reasons"]
                pending = []
            batch["batch_index"] = start + k
            yield batch


def make_loader(dataset: PoseDataset, batch_size: int, seed: int = 0, epoch: int = 0, rank: int = 0,
                world_size: int = 1, num_workers: int = 0, shuffle: bool = True, drop_last: bool = False,
                start_batch: int = 0, persistent_workers: bool = False,
                pin_memory: bool | None = None, keep_empty: bool = False) -> PoseLoader:
    """A PoseLoader for one rank. Reuse it across epochs with `set_epoch(epoch, start_batch)` (works with
    persistent workers too, since the epoch travels in the sample keys). pin_memory defaults to
    torch.cuda.is_available()."""
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    sampler = EpochBatchSampler(len(dataset), batch_size, seed, epoch, rank, world_size, shuffle, drop_last,
                                start_batch)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_samples,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        worker_init_fn=functools.partial(seed_worker, seed=sampler.seed, rank=rank) if num_workers else None,
        persistent_workers=persistent_workers and num_workers > 0,
    )
    return PoseLoader(dataset, sampler, loader, keep_empty)
