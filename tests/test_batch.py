"""data_pipelines/batch.py: host-batch collation and the per-batch device step (colour jitter, normalisation,
targets), checked against float64 per-pixel loops of the formulas and against models.heatmap.render_gaussian."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_pipelines.batch import (
    IMAGE_MEAN,
    IMAGE_STD,
    LUMA_WEIGHTS,
    BadSample,
    collate,
    color_jitter,
    prepare_batch,
    sample_fields,
)
from data_pipelines.records import PoseRecord
from data_pipelines.sampling import Augmentation, SampleKey, plan_sample
from data_pipelines.skeletons import LSP
from models.heatmap import input_to_heatmap, render_gaussian


def jitter_reference(img: np.ndarray, b: float, c: float, s: float) -> np.ndarray:
    """The colour jitter, pixel by pixel in float64: brightness, clip, contrast around the image's mean luma,
    clip, saturation around each pixel's luma, clip. img: [H, W, 3] with values in [0, 255]."""
    lw = LUMA_WEIGHTS
    h, w = img.shape[:2]
    x = np.clip(img.astype(np.float64) * b, 0, 255)
    m = sum(lw[ch] * x[i, j, ch] for i in range(h) for j in range(w) for ch in range(3)) / (h * w)
    x = np.clip(m + (x - m) * c, 0, 255)
    ref = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            g = sum(lw[ch] * x[i, j, ch] for ch in range(3))
            for ch in range(3):
                ref[i, j, ch] = min(max(g + (x[i, j, ch] - g) * s, 0.0), 255.0)
    return ref


def normalize_reference(x: np.ndarray) -> np.ndarray:
    """(x / 255 - mean) / std per pixel and channel, float64, [H, W, 3] -> [3, H, W]."""
    out = np.zeros((3,) + x.shape[:2])
    for ch in range(3):
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                out[ch, i, j] = (x[i, j, ch] / 255.0 - IMAGE_MEAN[ch]) / IMAGE_STD[ch]
    return out


def host_batch(images: np.ndarray, color) -> dict:
    return {"image": torch.from_numpy(images), "color": torch.tensor(color, dtype=torch.float32),
            "num_samples": len(images)}


def test_color_jitter_and_normalisation_against_pixel_loops():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(4, 6, 7, 3)).astype(np.uint8)
    images[2, :3] = 255  # saturated pixels: the clips matter
    color = [[1.25, 0.8, 1.3], [0.8, 1.2, 0.7], [1.19, 1.0, 1.17], [1.0, 1.0, 1.0]]
    jittered = color_jitter(torch.from_numpy(images).permute(0, 3, 1, 2).float(), torch.tensor(color))
    out = prepare_batch(host_batch(images, color), "cpu", targets=False)
    assert out["image"].dtype == torch.float32 and out["image"].shape == (4, 3, 6, 7)
    assert out["image"].is_contiguous() and "heatmaps" not in out
    for k in range(4):
        ref = jitter_reference(images[k], *color[k])
        np.testing.assert_allclose(jittered[k].permute(1, 2, 0).numpy(), ref, atol=1e-3)
        np.testing.assert_allclose(out["image"][k].numpy(), normalize_reference(ref), atol=2e-5)
    # a factor of 1 leaves the sample exactly as it was, also inside a jittered batch
    assert torch.equal(jittered[3], torch.from_numpy(images[3]).permute(2, 0, 1).float())


def test_normalisation_is_the_float32_formula_bit_for_bit():
    """Without jitter (eval): the float32 ops (x / 255 - mean) / std exactly, as the per-sample numpy code did."""
    images = np.random.default_rng(4).integers(0, 256, size=(2, 5, 4, 3)).astype(np.uint8)
    out = prepare_batch(host_batch(images, np.ones((2, 3))), "cpu", targets=False)
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(IMAGE_MEAN, dtype=np.float32)) / np.asarray(IMAGE_STD, dtype=np.float32)
    np.testing.assert_array_equal(out["image"].numpy(), x.transpose(0, 3, 1, 2))
    for k in range(2):
        np.testing.assert_allclose(out["image"][k].numpy(), normalize_reference(images[k]), atol=1e-5)
    last = prepare_batch(host_batch(images, np.ones((2, 3))), "cpu", targets=False, channels_last=True)["image"]
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, out["image"])


def planned_batch() -> tuple[dict, list]:
    """A host batch of four planned samples of one record (blank crops): some joints outside the crop."""
    joints = np.random.default_rng(5).uniform(40, 200, size=(14, 2))
    joints[6] = [2000.0, 100.0]
    vis = np.full(14, 2, np.int8)
    vis[2] = 0
    record = PoseRecord("x.jpg", joints, vis, (120.0, 120.0), 0.9)
    plans = [plan_sample(record, SampleKey(i, 1, 0), Augmentation(), 128, 32, 1.5, LSP.flip_index)
             for i in range(4)]
    crop = np.zeros((128, 128, 3), np.uint8)
    return collate([sample_fields(crop, p, record, i) for i, p in enumerate(plans)]), plans


def test_heatmaps_are_render_gaussian_of_the_planned_joints():
    batch, plans = planned_batch()
    out = prepare_batch(batch, "cpu", heatmap_size=32, sigma=1.5)
    assert out["heatmaps"].shape == (4, 14, 32, 32) and out["heatmaps"].dtype == torch.float32
    for k, p in enumerate(plans):
        joints = input_to_heatmap(torch.from_numpy(p.joints)[None], 4)
        ref = render_gaussian(joints, torch.from_numpy(p.visibility.astype(np.int64))[None], (32, 32), 1.5)[0]
        assert torch.equal(out["heatmaps"][k], ref)
        assert torch.equal(out["target_weight"][k], torch.from_numpy(p.target_weight))
        assert all(float(out["heatmaps"][k, j].max()) == 0.0 for j in range(14) if p.target_weight[j] == 0)
    assert (out["target_weight"] == 0).any() and (out["target_weight"] == 1).any()
    for key in ("joints", "visibility", "affine", "center", "scale", "index", "color"):
        assert torch.equal(out[key], batch[key])
    assert out["skipped"] == [] and out["num_samples"] == 4
    with pytest.raises(ValueError, match="heatmap_size"):
        prepare_batch(batch, "cpu")


def test_collate_dtypes_and_bad_samples():
    batch, plans = planned_batch()
    dtypes = {"image": torch.uint8, "joints": torch.float32, "visibility": torch.int8,
              "target_weight": torch.float32, "color": torch.float32, "affine": torch.float64,
              "center": torch.float64, "scale": torch.float64, "index": torch.int64}
    shapes = {"image": (4, 128, 128, 3), "joints": (4, 14, 2), "visibility": (4, 14), "target_weight": (4, 14),
              "color": (4, 3), "affine": (4, 2, 3), "center": (4, 2), "scale": (4,), "index": (4,)}
    assert {k: batch[k].dtype for k in dtypes} == dtypes
    assert {k: tuple(batch[k].shape) for k in shapes} == shapes
    assert batch["index"].tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(batch["affine"][2].numpy(), plans[2].affine)
    good = sample_fields(np.zeros((8, 8, 3), np.uint8), plans[0], PoseRecord("x.jpg", np.zeros((14, 2)),
                         np.ones(14), (1, 1), 1.0), 0)
    mixed = collate([good, BadSample("a.jpg", "boom", 1), dict(good, index=2)])
    assert mixed["num_samples"] == 2 and mixed["index"].tolist() == [0, 2]
    assert mixed["skipped"] == ["a.jpg"] and mixed["skipped_reasons"] == ["boom"]
    empty = collate([BadSample("b.jpg", "x", 0)])
    assert empty["num_samples"] == 0 and empty["skipped"] == ["b.jpg"] and "image" not in empty
    assert prepare_batch(empty, "cpu", heatmap_size=32, sigma=1.0) == empty  # nothing to prepare
