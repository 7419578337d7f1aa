"""What each sample of an epoch is and how it is augmented - backend-neutral (no pixels, no DataLoader).

Every data backend (the PyTorch CPU loader in data_pipelines/loaders/cpu.py, DALI in loaders/dali.py) takes
the epoch's order and every sample's crop from here, so a sample key (seed, epoch, index) means the same
crop, keypoints and colour factors whatever backend, worker count or restart produced it.

Determinism (the trainer's bit-exact resume depends on it):

- Per-sample randomness is STATELESS: sample `index` of epoch `epoch` under run seed `seed` gets
  `sample_rng(seed, epoch, index)`, a fresh numpy Generator. No worker state is involved.
- The epoch's order comes from (seed, epoch) only (`EpochBatchSampler`), padded like DistributedSampler so
  every rank gets the same number of batches; `start_batch` skips the first k batches (mid-epoch resume).
- The sampler yields `SampleKey(index, seed, epoch)` keys, so persistent workers see a new epoch without
  any state being pushed into them.

`plan_sample` turns a record and its key into a `SamplePlan`: the one 2x3 matrix (original -> crop,
geometry.crop_affine, flip folded in) that a backend warps the image with, the keypoints moved by the same
matrix, target weights and colour factors. Flip semantics: output slot j (Skeleton.joints[j], e.g. "lwri")
of a mirrored sample holds the mirrored position of the ORIGINAL joint flip_index[j] ("rwri"): a mark painted
on the original left wrist lands, after a flip, at the output's right-wrist slot.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from data_pipelines.errors import UserError
from data_pipelines.geometry import apply_affine, crop_affine
from data_pipelines.records import PoseRecord

# Leading words of the SeedSequence entropy, so the order stream and the per-sample streams never collide
# (numpy's SeedSequence gives [a, b] and [a, b, 0] the same state).
_SAMPLE_STREAM, _ORDER_STREAM = 0x5A3D_0001, 0x5A3D_0002

# Probability of mirroring a training sample (when Augmentation.flip is on).
FLIP_PROB = 0.5

# models.heatmap.target_weight's reach: a joint farther than this many sigmas outside the grid gets no target.
TRUNCATE_SIGMAS = 3.0


class SampleKey(NamedTuple):
    """What the sampler yields: which sample, under which run seed and epoch."""

    index: int
    seed: int
    epoch: int


def check_nonneg(name: str, value) -> int:
    """`value` as an int; ValueError naming `name` unless it is a non-negative integer."""
    if int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The Generator holding ALL of sample `index`'s randomness in `epoch` of the run seeded `seed`."""
    return np.random.default_rng([_SAMPLE_STREAM, check_nonneg("seed", seed), check_nonneg("epoch", epoch),
                                  check_nonneg("index", index)])


class BadSampleError(UserError):
    """A sample that cannot be used; the message starts with the file, `reason` says why."""

    def __init__(self, message: str, path: str = "", reason: str = ""):
        super().__init__(message)
        self.path = path
        self.reason = reason

    @classmethod
    def for_record(cls, record: PoseRecord, reason: str) -> BadSampleError:
        return cls(f"{record.image}: {reason}", record.image, reason)

    def __reduce__(self):  # keep path/reason when the error crosses a process boundary
        return type(self), (str(self), self.path, self.reason)


# ---------------------------------------------------------------------------------------------------------
# Per-sample augmentation parameters.

@dataclass(frozen=True)
class Augmentation:
    """Training augmentation ranges (field names follow the data config: rotation, scale_jitter, flip,
    color_jitter). Each sample draws six uniforms from its Generator, in this order:
    scale factor ~ U(1 - scale, 1 + scale) (multiplies the person scale: > 1 zooms out),
    rotation ~ U(-rotation, rotation) degrees, flip with probability FLIP_PROB (if `flip`),
    brightness, contrast, saturation factors ~ U(1 - color, 1 + color) each."""

    rotation: float = 30.0
    scale: float = 0.25
    flip: bool = True
    color: float = 0.2

    def __post_init__(self):
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"augmentation rotation must be in [0, 180] degrees, got {self.rotation}")
        if not 0 <= self.scale < 1:
            raise ValueError(f"augmentation scale jitter must be in [0, 1), got {self.scale}")
        if not 0 <= self.color <= 1:
            raise ValueError(f"augmentation colour jitter must be in [0, 1], got {self.color}")


@dataclass(frozen=True)
class SampleParams:
    """The random draws of one sample (identity for evaluation)."""

    scale_factor: float = 1.0
    rotation_deg: float = 0.0
    flip: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0


def draw_params(aug: Augmentation | None, rng: np.random.Generator | None) -> SampleParams:
    """Draw one sample's parameters; always the same number of draws, so the stream layout is fixed."""
    if aug is None:
        return SampleParams()
    if rng is None:
        raise ValueError("a training sample needs a numpy Generator (rng) for its randomness")
    u = 2.0 * rng.random(6) - 1.0  # six U(-1, 1)
    return SampleParams(
        scale_factor=1.0 + aug.scale * u[0],
        rotation_deg=aug.rotation * u[1],
        flip=bool(aug.flip and u[2] < 2.0 * FLIP_PROB - 1.0),
        brightness=1.0 + aug.color * u[3],
        contrast=1.0 + aug.color * u[4],
        saturation=1.0 + aug.color * u[5],
    )


# ---------------------------------------------------------------------------------------------------------
# One sample's plan: everything about it except its pixels.

@dataclass(frozen=True, eq=False)
class SamplePlan:
    """What a backend needs to produce one sample (see data_pipelines/batch.py for the batch it goes into).

    affine        float64 [2, 3]  original -> crop (pixel-centre convention, flip folded in): warp the
                                  image with it (cv2.warpAffine, bilinear, black border); invert it to map
                                  predictions back
    joints        float32 [J, 2]  crop pixels, after the flip relabelling; non-finite -> 0 (weight 0 there)
    visibility    int8    [J]     the record's codes, after the flip relabelling
    target_weight float32 [J]     models.heatmap.target_weight: 1 for an annotated joint whose heatmap
                                  position is within 3 sigma of the grid
    color         float32 [3]     brightness, contrast, saturation factors (1 = unchanged)
    params        SampleParams    the draws the plan was made from
    """

    affine: np.ndarray
    joints: np.ndarray
    visibility: np.ndarray
    target_weight: np.ndarray
    color: np.ndarray
    params: SampleParams


def plan_sample(record: PoseRecord, key_or_rng: SampleKey | np.random.Generator | None,
                aug: Augmentation | None, input_size: int, heatmap_size: int, sigma: float,
                flip_index: Sequence[int]) -> SamplePlan:
    """Plan one sample without touching its pixels: `aug=None` is the evaluation crop (no draws, rng unused).

    Raises BadSampleError for a record that can give no training signal, before any image is decoded:
    a non-finite person centre, no annotated joint, or no annotated joint inside the crop.
    """
    if input_size <= 0 or heatmap_size <= 0 or input_size % heatmap_size:
        raise ValueError(f"input_size ({input_size}) must be a positive multiple of heatmap_size ({heatmap_size})")
    if len(flip_index) != record.num_joints:
        raise ValueError(f"{record.image}: record has {record.num_joints} joints, flip_index {len(flip_index)}")
    if not np.all(np.isfinite(record.center)):
        raise BadSampleError(f"{record.image}: non-finite person centre {record.center.tolist()}", record.image,
                             "non-finite person centre")
    if not np.any(record.visibility > 0):
        raise BadSampleError.for_record(record, "no annotated joint")
    rng = key_or_rng
    if isinstance(rng, SampleKey):
        rng = sample_rng(rng.seed, rng.epoch, rng.index)
    p = draw_params(aug, rng)
    A = crop_affine(record.center, record.scale * p.scale_factor, input_size, p.rotation_deg, p.flip)
    joints = apply_affine(record.joints, A).astype(np.float32)
    visibility = record.visibility
    if p.flip:
        joints, visibility = joints[list(flip_index)], visibility[list(flip_index)]
    weight = plan_target_weight(joints, visibility, input_size, heatmap_size, sigma)
    if not weight.any():
        raise BadSampleError.for_record(record, "no annotated joint inside the crop")
    return SamplePlan(affine=A, joints=np.where(np.isfinite(joints), joints, np.float32(0.0)),
                      visibility=np.ascontiguousarray(visibility, dtype=np.int8), target_weight=weight,
                      color=np.array([p.brightness, p.contrast, p.saturation], dtype=np.float32), params=p)


def plan_target_weight(joints: np.ndarray, visibility: np.ndarray, input_size: int, heatmap_size: int,
                       sigma: float) -> np.ndarray:
    """float32 [J]: models.heatmap.target_weight of crop-pixel joints (float32 [J, 2]), in numpy - the same
    float32 operations (heatmap x = (x_in - (s - 1) / 2) / s; annotated and within TRUNCATE_SIGMAS * sigma of
    the grid; NaN is outside) without a dozen small torch calls per sample. test_sampling checks the two agree."""
    s = input_size // heatmap_size
    hm = (joints - (s - 1.0) / 2.0) / s
    r = TRUNCATE_SIGMAS * sigma
    inside = np.all((hm >= -r) & (hm <= heatmap_size - 1 + r), axis=1)
    return (inside & (visibility > 0)).astype(np.float32)


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
        self.seed = check_nonneg("seed", seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.set_epoch(epoch, start_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = check_nonneg("epoch", epoch)
        self.start_batch = check_nonneg("start_batch", start_batch)
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
