"""data_pipelines/sampling.py: the deterministic epoch/rank order, the stateless per-sample RNG, the augmentation
draws and the pixel-free sample plan (checked against the pre-split code's output and against the geometry)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from data_pipelines.geometry import apply_affine, crop_affine
from data_pipelines.records import NOT_ANNOTATED, PoseRecord
from data_pipelines.sampling import (
    Augmentation,
    BadSampleError,
    EpochBatchSampler,
    SampleKey,
    draw_params,
    plan_sample,
    plan_target_weight,
    sample_rng,
)
from data_pipelines.skeletons import LSP
from models.heatmap import input_to_heatmap, target_weight

# Computed with the code before the sampling/loading split (commit 19bbb12: transforms.train_transform with
# dataset.sample_rng(seed, epoch, index)) for record() below: draws, matrix, joints, visibility, weights.
GOLDEN = {
    (0, 0, 0): dict(
        params=(1.0010525196321498, 19.24342557189182, True, 0.801845261936644, 0.8420159816471401,
                1.1203609813707613),
        affine=[[-1.2072117471111312, -0.4214218061771243, 322.8021441073363],
                [-0.4214218061771243, 1.2072117471111312, 35.528538548452204]],
        joints=[[108.60098266601562, 142.2602996826172], [164.40493774414062, 89.05413055419922], [0.0, 0.0],
                [73.62865447998047, 52.923133850097656], [139.8291473388672, 182.8484344482422],
                [116.34028625488281, 79.54811096191406], [140.56646728515625, 195.36245727539062],
                [172.8034210205078, 136.3806915283203], [-468.69317626953125, -1188.79931640625],
                [43.328857421875, 149.1479034423828], [200.88853454589844, 149.81442260742188],
                [181.20257568359375, 159.30255126953125], [180.33465576171875, 111.62530517578125],
                [94.58381652832031, 80.72924041748047]],
        visibility=[1, 2, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
        weight=[1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
    (1, 2, 3): dict(
        params=(0.9227640369220056, 12.108533520934584, False, 1.040111193796268, 1.1115475894540645,
                1.1810890717871747),
        affine=[[1.3562758378809543, 0.29097163745604904, -70.33863459383278],
                [-0.29097163745604904, 1.3562758378809543, 2.1824644840310725]],
        joints=[[145.97396850585938, 77.3863296508789], [106.77055358886719, 185.4180450439453],
                [195.53805541992188, 54.48123550415039], [0.0, 0.0], [92.95435333251953, 81.14259338378906],
                [145.85482788085938, 145.9351043701172], [65.40716552734375, 154.49749755859375],
                [45.49485397338867, 141.63153076171875], [215.18833923339844, 162.1442108154297],
                [946.6294555664062, -1209.0850830078125], [77.53692626953125, 130.9552001953125],
                [104.29068756103516, 198.789306640625], [72.765625, 103.2927017211914],
                [169.234375, 81.58928680419922]],
        visibility=[2, 2, 2, 0, 2, 1, 2, 2, 2, 2, 2, 2, 2, 2],
        weight=[1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]),
    (7, 5, 123): dict(
        params=(0.7514540203452392, -6.111654400870419, True, 0.9871979849748688, 0.8354672358280605,
                1.1702657814607738),
        affine=[[-1.693682967415197, 0.1813509442180378, 310.1440484197483],
                [0.1813509442180378, 1.693682967415197, -94.63079967512058]]),
    (3, 0, 41): dict(
        params=(0.9303589039609486, 17.114786535372858, False, 0.963981316988936, 1.048472230077693,
                0.901978646133623),
        affine=[[1.3148881376508839, 0.4048838931306582, -78.82154094963184],
                [-0.4048838931306582, 1.3148881376508839, 20.802986845027277]]),
    (11, 9, 8): dict(
        params=(1.178000358095871, -27.737776402933076, False, 1.0900212829342912, 1.1948861428476083,
                0.8953170850849492),
        affine=[[0.9617240702567104, -0.5057255695226496, 71.4142981301197],
                [0.5057255695226496, 0.9617240702567104, -47.16380243533527]]),
}
GOLDEN_EVAL_AFFINE = [[1.28, 0.0, -26.74000000000001], [-0.0, 1.28, -23.860000000000014]]


def record(**changes) -> PoseRecord:
    """The record GOLDEN was computed for: one unannotated (NaN) joint, one occluded, one far outside the crop."""
    joints = np.random.default_rng(2024).uniform(60, 180, size=(14, 2)).round(2)
    joints[3] = np.nan
    joints[9] = [900.0, -700.0]
    vis = np.full(14, 2, np.int8)
    vis[3], vis[5] = 0, 1
    fields = dict(image="x.jpg", joints=joints, visibility=vis, center=(120.5, 118.25), scale=0.8, dataset="lsp")
    fields.update(changes)
    return PoseRecord(**fields)


TRAIN = Augmentation()  # the default ranges, as GOLDEN used


def plan(key_or_rng, aug=TRAIN, rec=None):
    return plan_sample(rec or record(), key_or_rng, aug, 256, 64, 1.0, LSP.flip_index)


# ------------------------------------------------------------------------------------------------ sampler

def test_sampler_order_depends_only_on_seed_and_epoch():
    a = EpochBatchSampler(103, 8, seed=5, epoch=2)
    b = EpochBatchSampler(103, 8, seed=5, epoch=2)
    assert list(a) == list(b)
    assert sorted(a.rank_indices()) == list(range(103))
    assert a.rank_indices() != EpochBatchSampler(103, 8, seed=5, epoch=3).rank_indices()
    assert a.rank_indices() != EpochBatchSampler(103, 8, seed=6, epoch=2).rank_indices()
    keys = [k for batch in a for k in batch]
    assert all(isinstance(k, SampleKey) and k.seed == 5 and k.epoch == 2 for k in keys)
    assert [len(batch) for batch in a] == [8] * 12 + [7]
    assert len(a) == 13
    assert [len(batch) for batch in EpochBatchSampler(103, 8, drop_last=True)] == [8] * 12
    assert EpochBatchSampler(103, 8, shuffle=False).rank_indices() == list(range(103))


def test_sampler_ranks_match_distributed_sampler_padding():
    """Unshuffled rank split == torch DistributedSampler(shuffle=False): same padding, same striding."""
    for n, world in ((103, 4), (10, 3), (2, 5), (64, 8)):
        data = list(range(n))
        counts = set()
        for rank in range(world):
            ours = EpochBatchSampler(n, 4, rank=rank, world_size=world, shuffle=False).rank_indices()
            ref = list(DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False))
            assert ours == ref
            counts.add(len(EpochBatchSampler(n, 4, rank=rank, world_size=world)))
        assert len(counts) == 1  # every rank runs the same number of batches
    # shuffled: rank r takes every 4th entry of the (seed, epoch) permutation padded with its first entry
    perm = EpochBatchSampler(103, 8, seed=1, epoch=4).rank_indices()
    padded = perm + perm[:1]
    for r in range(4):
        assert EpochBatchSampler(103, 8, seed=1, epoch=4, rank=r, world_size=4).rank_indices() == padded[r::4]


def test_sampler_start_batch_skips_exactly():
    full = list(EpochBatchSampler(50, 6, seed=9, epoch=1))
    for k in (0, 1, 5, len(full)):
        assert list(EpochBatchSampler(50, 6, seed=9, epoch=1, start_batch=k)) == full[k:]
    s = EpochBatchSampler(50, 6, seed=9, epoch=1, start_batch=3)
    s.set_epoch(1)
    assert list(s) == full
    with pytest.raises(ValueError, match="start_batch"):
        EpochBatchSampler(50, 6, start_batch=len(full) + 1)
    with pytest.raises(ValueError, match="rank"):
        EpochBatchSampler(50, 6, rank=2, world_size=2)


def test_sample_rng_is_a_pure_function_of_its_key():
    a = sample_rng(1, 2, 3).random(4)
    np.testing.assert_array_equal(a, sample_rng(1, 2, 3).random(4))
    others = [sample_rng(*k).random(4) for k in ((1, 2, 4), (1, 3, 3), (2, 2, 3), (0, 0, 0))]
    assert all(not np.array_equal(a, o) for o in others)
    with pytest.raises(ValueError, match="seed"):
        sample_rng(-1, 0, 0)


# ------------------------------------------------------------------------------------------------ draws

def test_draw_params_ranges_and_reproducibility():
    aug = Augmentation(rotation=30.0, scale=0.25, flip=True, color=0.2)
    draws = [draw_params(aug, np.random.default_rng([7, i])) for i in range(2000)]
    assert draws[5] == draw_params(aug, np.random.default_rng([7, 5]))
    rot = np.array([d.rotation_deg for d in draws])
    sc = np.array([d.scale_factor for d in draws])
    fl = np.array([d.flip for d in draws])
    col = np.array([[d.brightness, d.contrast, d.saturation] for d in draws])
    assert rot.min() >= -30 and rot.max() <= 30 and rot.min() < -28 and rot.max() > 28
    assert sc.min() >= 0.75 and sc.max() <= 1.25 and sc.min() < 0.76 and sc.max() > 1.24
    assert 0.45 < fl.mean() < 0.55
    assert col.min() >= 0.8 and col.max() <= 1.2
    assert not any(d.flip for d in (draw_params(Augmentation(flip=False), np.random.default_rng(i))
                                    for i in range(50)))
    with pytest.raises(ValueError, match="rng"):
        draw_params(aug, None)
    with pytest.raises(ValueError, match="scale"):
        Augmentation(scale=1.5)


# ------------------------------------------------------------------------------------------------ plan

@pytest.mark.parametrize("key", list(GOLDEN))
def test_plan_equals_the_code_before_the_split(key):
    """The same (seed, epoch, index) gives bit for bit the draws, matrix, joints and weights it gave before."""
    seed, epoch, index = key
    expected = GOLDEN[key]
    p = plan(SampleKey(index, seed, epoch))
    q = p.params
    assert (q.scale_factor, q.rotation_deg, q.flip, q.brightness, q.contrast, q.saturation) == expected["params"]
    assert p.affine.dtype == np.float64 and p.affine.tolist() == expected["affine"]
    assert p.color.dtype == np.float32 and p.color.tolist() == np.float32(expected["params"][3:]).tolist()
    if "joints" in expected:
        assert p.joints.dtype == np.float32 and p.joints.tolist() == expected["joints"]
        assert p.visibility.dtype == np.int8 and p.visibility.tolist() == expected["visibility"]
        assert p.target_weight.dtype == np.float32 and p.target_weight.tolist() == expected["weight"]
    # a SampleKey means sample_rng(seed, epoch, index): the same plan as from that Generator
    assert plan(sample_rng(seed, epoch, index)).affine.tolist() == expected["affine"]


def test_eval_plan_is_the_record_crop():
    p = plan(None, aug=None)
    assert p.affine.tolist() == GOLDEN_EVAL_AFFINE
    r = record()
    np.testing.assert_array_equal(p.affine, crop_affine(r.center, r.scale, 256))
    assert p.color.tolist() == [1.0, 1.0, 1.0] and not p.params.flip


def test_plan_joints_are_the_matrix_image_with_flip_relabelling():
    r = record()
    flips = set()
    for i in range(12):
        p = plan(SampleKey(i, 3, 1))
        flips.add(p.params.flip)
        moved = apply_affine(r.joints, p.affine).astype(np.float32)
        order = LSP.flip_index if p.params.flip else list(range(14))
        assert (np.linalg.det(p.affine[:, :2]) < 0) == p.params.flip  # the mirror is folded into the matrix
        for slot, j in enumerate(order):
            expected = moved[j] if np.all(np.isfinite(moved[j])) else np.zeros(2, np.float32)
            np.testing.assert_array_equal(p.joints[slot], expected)
            assert p.visibility[slot] == r.visibility[j]
        # weight: annotated and within 3 sigma of the 64 x 64 grid (heatmap x = (x_in - 1.5) / 4)
        hm = (moved[order] - 1.5) / 4
        inside = np.all((hm >= -3) & (hm <= 63 + 3), axis=1)
        np.testing.assert_array_equal(p.target_weight, (inside & (r.visibility[order] > 0)).astype(np.float32))
    assert flips == {True, False}


def test_plan_refuses_records_without_training_signal():
    with pytest.raises(BadSampleError, match="no annotated joint") as info:
        plan(None, aug=None, rec=record(visibility=np.full(14, NOT_ANNOTATED)))
    assert info.value.reason == "no annotated joint" and str(info.value).startswith("x.jpg")
    far = np.tile(np.array([5000.0, 5000.0]), (14, 1))
    with pytest.raises(BadSampleError) as info:
        plan(None, aug=None, rec=record(joints=far))
    assert info.value.reason == "no annotated joint inside the crop"
    with pytest.raises(BadSampleError) as info:
        plan(None, aug=None, rec=record(center=(np.nan, 3.0)))
    assert info.value.reason == "non-finite person centre"
    with pytest.raises(ValueError, match="multiple"):
        plan_sample(record(), None, None, 250, 64, 1.0, LSP.flip_index)


@pytest.mark.parametrize("input_size, heatmap_size, sigma", [(256, 64, 1.0), (128, 32, 2.0), (256, 32, 1.5)])
def test_plan_target_weight_is_models_target_weight(input_size, heatmap_size, sigma):
    """The numpy weight rule gives exactly models.heatmap.target_weight, on and around the grid's reach."""
    rng = np.random.default_rng(heatmap_size)
    s, reach = input_size // heatmap_size, 3.0 * sigma
    edges = np.array([-reach, heatmap_size - 1 + reach]) * s + (s - 1) / 2  # the reach in crop pixels
    near = edges[rng.integers(0, 2, size=(4000, 2))] + rng.choice([-1e-4, 0.0, 1e-4, -0.5, 0.5], size=(4000, 2))
    joints = np.concatenate([near, rng.uniform(-100, input_size + 100, size=(4000, 2))]).astype(np.float32)
    joints[::97, 0] = np.nan
    joints[::89, 1] = np.inf
    joints = joints.reshape(-1, 16, 2)
    vis = rng.integers(0, 3, size=joints.shape[:2]).astype(np.int8)
    ref = target_weight(input_to_heatmap(torch.from_numpy(joints), s), torch.from_numpy(vis),
                        (heatmap_size, heatmap_size), sigma).numpy()
    got = np.stack([plan_target_weight(j, v, input_size, heatmap_size, sigma) for j, v in zip(joints, vis)])
    assert got.dtype == np.float32 and 0.1 < got.mean() < 0.9  # both outcomes occur
    np.testing.assert_array_equal(got, ref)
