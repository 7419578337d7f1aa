"""PoseDataset / EpochBatchSampler / make_loader: deterministic order, stateless per-sample randomness
(identical across worker counts, restarts and persistent workers), real LSP through 2 workers, synthetic
records rendered by the loader."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from data_pipelines import dataset as ds_mod
from data_pipelines.dataset import (
    EpochBatchSampler,
    PoseDataset,
    SampleKey,
    collate_samples,
    make_loader,
    sample_rng,
    seed_worker,
)
from data_pipelines.images import load_image
from data_pipelines.lsp import load_lsp
from data_pipelines.skeletons import LSP
from data_pipelines.transforms import eval_transform, train_transform

TENSOR_KEYS = ("image", "heatmaps", "target_weight", "joints", "visibility", "affine", "center", "scale",
               "index")


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as in DataLoader workers; much faster for per-sample ops on 2 cores
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lsp_train(lsp_root):
    return load_lsp(lsp_root, "train")[:40]


def batches_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in TENSOR_KEYS) and a["skipped"] == b["skipped"]


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


def test_seed_worker_seeds_per_seed_rank_worker():
    def draws(worker, seed, rank):
        seed_worker(worker, seed=seed, rank=rank)
        return random.random(), np.random.random(), float(torch.rand(1))  # noqa: NPY002

    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())  # noqa: NPY002
    try:
        a = draws(0, 7, 0)
        assert a == draws(0, 7, 0)
        assert all(x != y for x, y in zip(a, draws(1, 7, 0)))
        assert all(x != y for x, y in zip(a, draws(0, 7, 1)))
        assert all(x != y for x, y in zip(a, draws(0, 8, 0)))
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])  # noqa: NPY002
        torch.set_rng_state(state[2])


# ------------------------------------------------------------------------------------- real LSP loading

def test_loader_real_lsp_two_workers(lsp_train):
    ds = PoseDataset(lsp_train, LSP, train_transform(LSP, 256, 64, 1.0))
    loader = make_loader(ds, batch_size=6, seed=3, epoch=0, num_workers=2, shuffle=True, drop_last=True)
    assert len(loader) == 40 // 6
    seen = []
    for k, batch in enumerate(loader):
        n = batch["num_samples"]
        assert n == 6 and batch["skipped"] == [] and batch["batch_index"] == k
        assert batch["image"].shape == (6, 3, 256, 256) and batch["image"].dtype == torch.float32
        assert batch["heatmaps"].shape == (6, 14, 64, 64) and batch["target_weight"].shape == (6, 14)
        assert batch["joints"].shape == (6, 14, 2) and batch["affine"].dtype == torch.float64
        assert batch["affine"].shape == (6, 2, 3) and batch["center"].shape == (6, 2)
        assert float(batch["image"].std()) > 0.3  # real pixels, not a blank crop
        seen += batch["index"].tolist()
        if k == 2:
            break
    assert seen == EpochBatchSampler(40, 6, seed=3, drop_last=True).rank_indices()[:18]
    assert loader.skipped_total == 0


def test_same_samples_with_0_or_2_workers_and_after_restart(lsp_train):
    ds = PoseDataset(lsp_train, LSP, train_transform(LSP, 128, 32, 1.0))

    def run(num_workers, start_batch=0, epoch=1):
        loader = make_loader(ds, batch_size=4, seed=11, epoch=epoch, num_workers=num_workers,
                             start_batch=start_batch)
        out = []
        for batch in loader:
            out.append(batch)
            if len(out) == 3:
                break
        return out

    serial, parallel, resumed = run(0), run(2), run(2, start_batch=1)
    for a, b in zip(serial, parallel):
        assert batches_equal(a, b)
        assert a["batch_index"] == b["batch_index"]
    for a, b in zip(serial[1:], resumed):
        assert batches_equal(a, b) and a["batch_index"] == b["batch_index"]
    # a sample is a pure function of (seed, epoch, index): the batch entry equals a direct lookup
    i = int(serial[1]["index"][2])
    direct = ds[SampleKey(i, 11, 1)]
    assert torch.equal(direct["image"], serial[1]["image"][2])
    assert torch.equal(direct["heatmaps"], serial[1]["heatmaps"][2])
    # and another epoch gives other samples
    other = run(0, epoch=2)[0]
    assert not torch.equal(other["index"], serial[0]["index"])
    j = int(serial[0]["index"][0])
    assert not torch.equal(ds[SampleKey(j, 11, 2)]["affine"], ds[SampleKey(j, 11, 1)]["affine"])


def test_persistent_workers_follow_set_epoch(lsp_train):
    ds = PoseDataset(lsp_train[:12], LSP, train_transform(LSP, 64, 16, 1.0))
    loader = make_loader(ds, batch_size=4, seed=2, epoch=0, num_workers=2, persistent_workers=True)
    first = list(loader)
    loader.set_epoch(1)
    second = list(loader)
    fresh0 = list(make_loader(ds, batch_size=4, seed=2, epoch=0, num_workers=0))
    fresh1 = list(make_loader(ds, batch_size=4, seed=2, epoch=1, num_workers=0))
    assert len(first) == len(second) == 3
    assert all(batches_equal(a, b) for a, b in zip(first, fresh0))
    assert all(batches_equal(a, b) for a, b in zip(second, fresh1))


def test_eval_loader_in_order(lsp_train):
    ds = PoseDataset(lsp_train[:10], LSP, eval_transform(LSP, 64, 16, 1.0))
    batches = list(make_loader(ds, batch_size=4, shuffle=False, num_workers=0))
    assert [b["index"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    r = lsp_train[5]
    direct = eval_transform(LSP, 64, 16, 1.0)(load_image(r.image), r)
    assert torch.equal(batches[1]["image"][1], direct["image"])


def test_collate_lists_bad_samples():
    good = {"image": torch.zeros(3), "index": 0}
    batch = collate_samples([good, ds_mod.BadSample("a.jpg", "boom", 1), dict(good, index=2)])
    assert batch["num_samples"] == 2 and batch["index"].tolist() == [0, 2]
    assert batch["skipped"] == ["a.jpg"] and batch["skipped_reasons"] == ["boom"]
    empty = collate_samples([ds_mod.BadSample("b.jpg", "x", 0)])
    assert empty["num_samples"] == 0 and empty["skipped"] == ["b.jpg"] and "image" not in empty


# ------------------------------------------------------------------------------------------------ synthetic

def test_synthetic_records_are_rendered_by_the_loader():
    from data_pipelines.synthetic import PREFIX, SyntheticConfig, SyntheticPeople

    assert PREFIX == ds_mod.SYNTHETIC_PREFIX
    people = SyntheticPeople(seed=4, size=6, config=SyntheticConfig(image_size=96))
    records = people.records()
    ds = PoseDataset(records, LSP, train_transform(LSP, 64, 16, 1.0))
    batches = list(make_loader(ds, batch_size=3, seed=1, num_workers=0))
    assert sum(b["num_samples"] for b in batches) == 6
    b = batches[0]
    i = int(b["index"][0])
    image = people.render(records[i].index)
    assert image.shape == (96, 96, 3)  # the record's own generator settings were used
    expected = ds.transform(image, records[i], sample_rng(1, 0, i))
    assert torch.equal(b["image"][0], expected["image"])
    assert torch.equal(b["joints"][0], expected["joints"])
