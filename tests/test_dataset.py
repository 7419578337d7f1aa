"""The CPU backend (data_pipelines/loaders/cpu.py) and RunData: host batches of the batch contract, the same
samples whatever the worker count, restart or persistent workers, real LSP through 2 workers, synthetic records
rendered by the loader, and RunData's reused loaders and per-batch device step."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from pose_sample import make_sample

from data_pipelines.batch import prepare_batch
from data_pipelines.images import load_image
from data_pipelines.loaders import cpu as cpu_mod
from data_pipelines.loaders.cpu import PoseDataset, make_loader, seed_worker
from data_pipelines.lsp import load_lsp
from data_pipelines.sampling import Augmentation, EpochBatchSampler, SampleKey, sample_rng
from data_pipelines.skeletons import LSP
from harness.config import config_from_dict
from harness.data import RunData

TENSOR_KEYS = ("image", "joints", "visibility", "target_weight", "color", "affine", "center", "scale", "index")
TRAIN = Augmentation()


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def lsp_train(lsp_root):
    return load_lsp(lsp_root, "train")[:40]


def batches_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in TENSOR_KEYS) and a["skipped"] == b["skipped"]


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
    ds = PoseDataset(lsp_train, LSP, 256, 64, 1.0, TRAIN)
    loader = make_loader(ds, batch_size=6, seed=3, epoch=0, num_workers=2, shuffle=True, drop_last=True)
    assert len(loader) == 40 // 6
    seen = []
    for k, batch in enumerate(loader):
        n = batch["num_samples"]
        assert n == 6 and batch["skipped"] == [] and batch["batch_index"] == k
        assert batch["image"].shape == (6, 256, 256, 3) and batch["image"].dtype == torch.uint8
        assert batch["joints"].shape == (6, 14, 2) and batch["affine"].dtype == torch.float64
        assert batch["affine"].shape == (6, 2, 3) and batch["center"].shape == (6, 2)
        assert batch["color"].shape == (6, 3) and batch["target_weight"].shape == (6, 14)
        step = prepare_batch(batch, "cpu", heatmap_size=64, sigma=1.0)
        assert step["image"].shape == (6, 3, 256, 256) and step["image"].dtype == torch.float32
        assert step["heatmaps"].shape == (6, 14, 64, 64) and step["target_weight"].shape == (6, 14)
        assert float(step["image"].std()) > 0.3  # real pixels, not a blank crop
        seen += batch["index"].tolist()
        if k == 2:
            break
    assert seen == EpochBatchSampler(40, 6, seed=3, drop_last=True).rank_indices()[:18]
    assert loader.skipped_total == 0


def test_same_samples_with_0_or_2_workers_and_after_restart(lsp_train):
    ds = PoseDataset(lsp_train, LSP, 128, 32, 1.0, TRAIN)

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
    for k in ("image", "joints", "target_weight", "color", "affine"):
        np.testing.assert_array_equal(direct[k], serial[1][k][2].numpy())
    # and another epoch gives other samples
    other = run(0, epoch=2)[0]
    assert not torch.equal(other["index"], serial[0]["index"])
    j = int(serial[0]["index"][0])
    assert not np.array_equal(ds[SampleKey(j, 11, 2)]["affine"], ds[SampleKey(j, 11, 1)]["affine"])


def test_persistent_workers_follow_set_epoch(lsp_train):
    ds = PoseDataset(lsp_train[:12], LSP, 64, 16, 1.0, TRAIN)
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
    ds = PoseDataset(lsp_train[:10], LSP, 64, 16, 1.0)
    batches = list(make_loader(ds, batch_size=4, shuffle=False, num_workers=0))
    assert [b["index"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(torch.equal(b["color"], torch.ones(len(b["index"]), 3)) for b in batches)
    r = lsp_train[5]
    direct = make_sample(load_image(r.image), r, None, None, 64, 16, 1.0)
    np.testing.assert_array_equal(batches[1]["image"][1].numpy(), direct["crop"])
    step = prepare_batch(batches[1], "cpu", heatmap_size=16, sigma=1.0)
    assert torch.equal(step["image"][1], direct["image"]) and torch.equal(step["heatmaps"][1], direct["heatmaps"])


# ------------------------------------------------------------------------------------------------ synthetic

def test_synthetic_records_are_rendered_by_the_loader():
    from data_pipelines.synthetic import PREFIX, SyntheticConfig, SyntheticPeople

    assert PREFIX == cpu_mod.SYNTHETIC_PREFIX
    people = SyntheticPeople(seed=4, size=6, config=SyntheticConfig(image_size=96))
    records = people.records()
    ds = PoseDataset(records, LSP, 64, 16, 1.0, TRAIN)
    batches = list(make_loader(ds, batch_size=3, seed=1, num_workers=0))
    assert sum(b["num_samples"] for b in batches) == 6
    b = batches[0]
    i = int(b["index"][0])
    image = people.render(records[i].index)
    assert image.shape == (96, 96, 3)  # the record's own generator settings were used
    expected = make_sample(image, records[i], sample_rng(1, 0, i), TRAIN, 64, 16, 1.0)
    np.testing.assert_array_equal(b["image"][0].numpy(), expected["crop"])
    assert torch.equal(b["joints"][0], expected["joints"])


# ------------------------------------------------------------------------------------------------ RunData

def test_run_data_reuses_loaders_and_prepares_batches(lsp_root):
    cfg = config_from_dict({"data": {"name": "lsp", "root": str(lsp_root), "max_train_samples": 12,
                                     "max_val_samples": 5, "num_workers": 1, "input_size": 64, "heatmap_size": 16,
                                     "sigma": 2.0},
                            "train": {"batch_size": 4, "seed": 6}}, where="test")
    data = RunData(cfg)
    loader = data.train_loader(4, epoch=0)
    epoch0 = list(loader)
    assert data.train_loader(4, epoch=1, start_batch=1) is loader  # one loader, its workers kept
    epoch1 = list(loader)
    fresh = list(make_loader(data.train_set, batch_size=4, seed=6, epoch=1, drop_last=True, start_batch=1))
    assert len(epoch0) == 3 and [b["batch_index"] for b in epoch1] == [1, 2]
    assert all(batches_equal(a, b) for a, b in zip(epoch1, fresh))
    step = data.to_device(epoch1[0], torch.device("cpu"))
    assert step["image"].shape == (4, 3, 64, 64) and step["heatmaps"].shape == (4, 14, 16, 16)
    assert torch.equal(step["heatmaps"], prepare_batch(epoch1[0], "cpu", heatmap_size=16, sigma=2.0)["heatmaps"])
    val = list(data.val_loader(4))
    assert [b["index"].tolist() for b in val] == [[0, 1, 2, 3], [4]] and data.val_loader(4) is data.val_loader(4)
