"""harness/inference.py: G prepared for inference (BatchNorm folded, the flip test as one doubled forward,
weights in the compute dtype, compiled, CUDA graphs where there is a GPU) gives the predictions of the plain
eval path on real LSP crops: coordinates equal to float tolerance and PCK@0.2 within 0.1 points."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from harness.build import build_generator
from harness.config import InferConfig, load_config
from harness.data import RunData
from harness.evaluate import predict_dataset, predict_heatmaps, score_records
from harness.inference import InferenceModel

pytestmark = pytest.mark.usefixtures("single_torch_thread")

OLD = InferConfig(fold_batchnorm=False, one_pass_flip=False, cast_weights=False)  # the path before the switches


def _randomise_batchnorms(model: nn.Module, seed: int = 0) -> None:
    """Milder than helpers.randomise_batchnorms (scales near 1): an untrained G whose heatmaps keep sane peaks
    for the PCK comparisons on real images."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(1 + 0.3 * torch.randn(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))


def _generator(cfg, joints: int, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    g = build_generator(cfg, joints)
    _randomise_batchnorms(g)
    return g.to(dtype).eval()


@pytest.fixture(scope="module")
def lsp(lsp_root):
    cfg = load_config("lsp-sat-4s", None, [f"data.root={lsp_root}", "data.max_val_samples=24", "model.stacks=1",
                                          "model.features=32", "data.num_workers=0", "train.device=cpu"])
    return cfg, RunData(cfg, train=False)


@pytest.mark.parametrize("precision", ["fp64", "fp32"])
def test_folded_one_pass_flip_predicts_what_the_old_path_does_on_real_lsp(lsp, precision):
    cfg, data = lsp
    dtype = torch.float64 if precision == "fp64" else torch.float32
    g = _generator(cfg, data.skeleton.num_joints, dtype)
    args = (data.val_loader(8), torch.device("cpu"), data.skeleton)
    old = predict_dataset(g, *args, precision=precision, infer=OLD)
    new = predict_dataset(g, *args, precision=precision, infer=InferConfig())
    assert sorted(old) == sorted(new) == list(range(24))
    diff = np.stack([np.abs(old[i] - new[i]) for i in old])
    # fp64: the same argmax everywhere, quarter-pixel shifts equal; fp32: rounding may move an argmax between
    # two near-equal pixels of this untrained G, rarely
    if precision == "fp64":
        assert diff.max() < 1e-9, diff.max()
    else:
        assert np.mean(diff < 1e-4) >= 0.97, np.mean(diff < 1e-4)
    a, b = (score_records(data.val_records, p, "lsp").headline()["value"] for p in (old, new))
    assert abs(a - b) <= 0.1, (a, b)


def _heatmaps_close(model_a, model_b, images, flip_index, tol):
    a, b = predict_heatmaps(model_a, images, flip_index), predict_heatmaps(model_b, images, flip_index)
    assert a.dtype == b.dtype == torch.float32 and a.is_contiguous() and b.is_contiguous()
    rel = float((a - b).norm() / a.norm())
    assert rel < tol, rel
    return rel


def test_each_switch_alone_keeps_the_heatmaps(lsp):
    cfg, data = lsp
    g = _generator(cfg, data.skeleton.num_joints, torch.float64)
    images = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    flip = data.skeleton.flip_index
    ref = InferenceModel(g, "fp64", OLD)
    for opts in (InferConfig(fold_batchnorm=True, one_pass_flip=False), InferConfig(fold_batchnorm=False),
                 InferConfig()):
        _heatmaps_close(ref, InferenceModel(g, "fp64", opts), images, flip, 1e-12)
    nchw = InferenceModel(g, "fp64", InferConfig(), channels_last=True)
    _heatmaps_close(ref, nchw, images.contiguous(memory_format=torch.channels_last), flip, 1e-12)


def test_bf16_holds_bf16_weights_and_matches_autocast(lsp):
    cfg, data = lsp
    g = _generator(cfg, data.skeleton.num_joints)
    images = torch.randn(2, 3, 64, 64)
    cast = InferenceModel(g, "bf16", InferConfig())
    assert {p.dtype for p in cast.net.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in g.parameters()} == {torch.float32}  # G itself untouched
    autocast = InferenceModel(g, "bf16", OLD)
    fp32 = InferenceModel(g, "fp32", OLD)
    # both bf16 paths are about bf16's rounding away from fp32, and from each other
    _heatmaps_close(fp32, autocast, images, data.skeleton.flip_index, 0.05)
    _heatmaps_close(fp32, cast, images, data.skeleton.flip_index, 0.05)


def test_compiled_inference_equals_eager_and_graphs_fall_back_on_cpu(lsp):
    cfg, data = lsp
    g = _generator(cfg, data.skeleton.num_joints)
    images = torch.randn(2, 3, 64, 64)
    eager = InferenceModel(g, "fp32", InferConfig())
    compiled = InferenceModel(g, "fp32", InferConfig(compile=True, cuda_graphs=True), compile_backend="aot_eager")
    assert compiled.notes and "CUDA graphs need a GPU" in compiled.notes[0]
    _heatmaps_close(eager, compiled, images, data.skeleton.flip_index, 1e-6)
    _heatmaps_close(eager, compiled, images[:1], None, 1e-6)  # another shape: a second graph, same numbers


def test_an_unfolded_model_in_training_mode_is_refused(lsp):
    cfg, data = lsp
    g = build_generator(cfg, data.skeleton.num_joints).train()
    with pytest.raises(ValueError, match="training mode"):
        InferenceModel(g, "fp32", OLD)
    assert not InferenceModel(g, "fp32", InferConfig()).net.training  # the folded copy is in eval mode
