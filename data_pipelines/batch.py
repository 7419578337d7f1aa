"""The batch contract: what every data backend yields per rank, and the per-batch step on the training device.

Host batch - what a loader backend (loaders/cpu.py, loaders/dali.py) yields, B <= batch_size samples:
  image           uint8   [B, S, S, 3]  RGB crops warped with `affine` (bilinear, black border; flip folded in)
  joints          float32 [B, J, 2]     crop pixels (pixel-centre), after the flip relabelling; 0 where non-finite
  visibility      int8    [B, J]        the records' visibility codes, after the flip relabelling
  target_weight   float32 [B, J]        models.heatmap.target_weight of the joints (1: a target is rendered)
  color           float32 [B, 3]        brightness, contrast, saturation factors (1 = unchanged; eval: all 1)
  affine          float64 [B, 2, 3]     original -> crop (invert it to map predictions back)
  center          float64 [B, 2]        the records' person centres; scale float64 [B]: their scales
  index           int64   [B]           the samples' positions in the dataset
  num_samples     int                   B (0: an all-bad batch, only with keep_empty; then no tensors at all)
  skipped, skipped_reasons  list[str]   files and reasons of this batch's bad samples (see BatchLoader)
  batch_index     int                   the batch's position in the epoch (resume with start_batch=batch_index+1)
Every per-sample field comes from sampling.plan_sample, so the backends differ only in how they decode and
warp. `prepare_batch` turns a host batch into what the training step consumes, per batch on the device:
colour jitter, normalisation to float32 NCHW, and the target heatmaps (models.heatmap.render_gaussian: the
fused Triton kernel on CUDA, torch elsewhere).

Bad samples (an unreadable image, or a record sampling.plan_sample refuses):
- `on_bad_sample="skip"`: the sample is left out of its batch and listed in `skipped` / `skipped_reasons`.
  BatchLoader logs one warning per bad file and keeps `skipped_total` / `skipped_files` (the loader's life)
  and `skipped_in_epoch`. A batch whose samples were all bad is not yielded (it still counts in
  `batch_index`; its files are reported with the next yielded batch) unless the loader has `keep_empty=True`
  (data-parallel training: every rank must take part in every step, so the ranks skip such a step together).
- `on_bad_sample="raise"`: one BadSampleError (a UserError: one CLI error line) naming the file and the
  reason, raised in the main process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

from data_pipelines.records import PoseRecord
from data_pipelines.sampling import BadSampleError, EpochBatchSampler, SamplePlan
from models.heatmap import input_to_heatmap, render_gaussian

log = logging.getLogger(__name__)

BAD_SAMPLE_POLICIES = ("skip", "raise")

# Normalisation constants (ImageNet statistics of RGB values in [0, 1]), defined only here.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

# ITU-R BT.601 luma weights, used by the contrast and saturation jitter.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# Per-sample fields of a host batch and their dtypes (numpy side).
SAMPLE_FIELDS = {"image": np.uint8, "joints": np.float32, "visibility": np.int8, "target_weight": np.float32,
                 "color": np.float32, "affine": np.float64, "center": np.float64, "scale": np.float64,
                 "index": np.int64}


class BadSample(NamedTuple):
    """Marker a backend puts in place of a sample it could not make."""

    file: str
    reason: str
    index: int


def sample_fields(crop: np.ndarray, plan: SamplePlan, record: PoseRecord, index: int) -> dict:
    """One sample's entries of SAMPLE_FIELDS (numpy), from its warped crop and its plan."""
    return {"image": crop, "joints": plan.joints, "visibility": plan.visibility,
            "target_weight": plan.target_weight, "color": plan.color, "affine": plan.affine,
            "center": record.center, "scale": record.scale, "index": index}


def collate(items: Sequence[dict | BadSample]) -> dict:
    """Stack the good samples' fields into a host batch (without batch_index) and list the bad ones."""
    good = [s for s in items if not isinstance(s, BadSample)]
    bad = [s for s in items if isinstance(s, BadSample)]
    batch: dict = {k: torch.from_numpy(np.stack([np.asarray(s[k], dtype=t) for s in good]))
                   for k, t in SAMPLE_FIELDS.items()} if good else {}
    batch["num_samples"] = len(good)
    batch["skipped"] = [b.file for b in bad]
    batch["skipped_reasons"] = [b.reason for b in bad]
    return batch


# ---------------------------------------------------------------------------------------------------------
# Per batch, on the training device.

def _luma(x: torch.Tensor) -> torch.Tensor:
    """Gray value [B, H, W] of float RGB images [B, 3, H, W]."""
    w = LUMA_WEIGHTS
    return x[:, 0] * w[0] + x[:, 1] * w[1] + x[:, 2] * w[2]


def color_jitter(x: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """Brightness, then contrast, then saturation on float RGB images [B, 3, H, W] with values in [0, 255],
    factors [B, 3] per sample; clipped to [0, 255] after each step (in place where it can).

    brightness: x * b; contrast: m + (x - m) * c with m the image's mean luma; saturation:
    g + (x - g) * s with g the pixel's luma. Written as torch.lerp(m, x, c), which is that formula and
    returns x exactly for a factor of 1, so unjittered samples of a jittered batch stay untouched.
    """
    b, c, s = (color[:, i, None, None, None].to(x.dtype) for i in range(3))
    x = x.mul_(b).clamp_(0.0, 255.0)
    m = _luma(x).mean(dim=(1, 2))[:, None, None, None]
    x = torch.lerp(m, x, c).clamp_(0.0, 255.0)
    return torch.lerp(_luma(x)[:, None], x, s).clamp_(0.0, 255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """(x / 255 - IMAGE_MEAN) / IMAGE_STD per channel of float32 [B, 3, H, W], in place."""
    mean = torch.tensor(IMAGE_MEAN, dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(IMAGE_STD, dtype=x.dtype, device=x.device)[:, None, None]
    return x.div_(255.0).sub_(mean).div_(std)


def prepare_batch(batch: dict, device: torch.device | str, *, heatmap_size: int | None = None,
                  sigma: float | None = None, targets: bool = True, channels_last: bool = False) -> dict:
    """A host batch on `device`, ready for the step: every tensor moved (non_blocking), `image` replaced by
    float32 [B, 3, S, S] (colour jitter by `color`, then normalisation; channels_last memory format if
    asked) and, with `targets`, `heatmaps` float32 [B, J, heatmap_size, heatmap_size] rendered from
    `joints` where `target_weight` > 0. An empty batch (num_samples 0) is returned as it is."""
    out = dict(batch)
    if batch["num_samples"] == 0:
        return out
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
    x = out["image"].permute(0, 3, 1, 2).float()  # NHWC storage, NCHW view: channels_last strides
    if bool((batch["color"] != 1).any()):  # decided on the host copy: no device sync
        x = color_jitter(x, out["color"])
    x = normalize(x)
    out["image"] = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if targets:
        if heatmap_size is None or sigma is None:
            raise ValueError("prepare_batch: targets=True needs heatmap_size and sigma")
        size = x.shape[-1]
        if size % heatmap_size:
            raise ValueError(f"input_size ({size}) must be a multiple of heatmap_size ({heatmap_size})")
        joints = input_to_heatmap(out["joints"], size // heatmap_size)
        out["heatmaps"] = render_gaussian(joints, out["target_weight"] > 0, (heatmap_size, heatmap_size), sigma)
    return out


# ---------------------------------------------------------------------------------------------------------

class BatchLoader:
    """Base of every backend's per-rank loader: iterates the backend's host batches (one per batch of the
    sampler, in order, `batch_index` not set) and accounts for bad samples in the main process.

    A backend implements `host_batches()`. Reuse a loader across epochs with `set_epoch(epoch, start_batch)`.
    """

    def __init__(self, sampler: EpochBatchSampler, on_bad_sample: str = "skip", keep_empty: bool = False):
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"on_bad_sample must be one of {BAD_SAMPLE_POLICIES}, got {on_bad_sample!r}")
        self.sampler = sampler
        self.on_bad_sample = on_bad_sample
        self.keep_empty = keep_empty
        self.skipped_total = 0
        self.skipped_in_epoch = 0
        self.skipped_files: list[str] = []

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.sampler)

    def host_batches(self) -> Iterator[dict]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict]:
        self.skipped_in_epoch = 0
        start, epoch = self.sampler.start_batch, self.sampler.epoch
        pending: list[tuple[str, str]] = []  # bad samples of all-bad batches, reported with the next batch
        for k, batch in enumerate(self.host_batches()):
            for file, reason in zip(batch["skipped"], batch["skipped_reasons"]):
                if self.on_bad_sample == "raise":
                    raise BadSampleError(f"{file}: bad sample: {reason} (on_bad_sample='raise')", file, reason)
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
