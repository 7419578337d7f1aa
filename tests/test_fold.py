"""models/fold.py: BatchNorm folded into the convolution before it gives the same function as the eval-mode
model, in float64, with non-trivial running statistics and affine parameters, with and without conv biases."""

from __future__ import annotations

import pytest
import torch
from helpers import randomise_batchnorms
from torch import nn

from models.discriminator import PoseDiscriminator
from models.fold import count_batchnorms, fold_batchnorm, fold_conv_bn
from models.hourglass import StackedHourglass


def _restore_biases_before_batchnorm(model: nn.Module) -> int:
    """The reference layout: a random bias on every conv -> BN convolution (the model has none since those biases
    were dropped; a checkpoint written before still folds them in, models/legacy.py)."""
    gen = torch.Generator().manual_seed(7)
    restored = 0
    for m in model.modules():
        if isinstance(m, nn.Sequential):
            kids = list(m)
            for a, b in zip(kids, kids[1:]):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and a.bias is None:
                    a.bias = nn.Parameter(torch.randn(a.out_channels, generator=gen, dtype=a.weight.dtype))
                    restored += 1
    return restored


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("biases", [True, False])
def test_folded_hourglass_equals_the_eval_model_in_float64(biases):
    torch.manual_seed(0)
    g = StackedHourglass(num_stacks=2, num_joints=14, features=32).double()
    if biases:
        assert _restore_biases_before_batchnorm(g) > 0
    randomise_batchnorms(g)
    g.eval()
    folded = fold_batchnorm(g)
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ref, out = g(x), folded(x)
    assert len(ref) == len(out) == 2
    for r, o in zip(ref, out):
        assert r.abs().max() > 1e-3  # a non-trivial output
        assert _rel(o, r) < 1e-12, _rel(o, r)
    # the pre-activation residuals' first BatchNorm (behind the skip) stays; the others fold
    assert count_batchnorms(folded) < count_batchnorms(g)
    assert all(m.running_mean is not None for m in folded.modules() if isinstance(m, nn.BatchNorm2d))


def test_fold_leaves_the_model_alone_and_makes_an_eval_copy_without_gradients():
    g = StackedHourglass(num_stacks=1, num_joints=14, features=16).double().train()
    randomise_batchnorms(g, seed=1)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    folded = fold_batchnorm(g)
    assert g.training and not folded.training
    assert not any(p.requires_grad for p in folded.parameters())
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())


def test_the_four_stack_generator_folds_125_of_its_185_batchnorms():
    """The count of ../shared/notes/gpu-roofline.md: each residual's first BatchNorm (60) stays."""
    with torch.device("meta"):
        g = StackedHourglass(num_stacks=4, num_joints=14, features=256)
        folded = fold_batchnorm(g)
    assert (count_batchnorms(g), count_batchnorms(folded)) == (185, 60)
    d = PoseDiscriminator(num_joints=14)
    assert count_batchnorms(fold_batchnorm(d)) < count_batchnorms(d)


def test_fold_conv_bn_against_the_formula_and_bad_input():
    torch.manual_seed(2)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1).double(), nn.BatchNorm2d(6).double()
    randomise_batchnorms(nn.Sequential(bn), seed=3)
    bn.eval()
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # the textbook formula, by hand
    by_hand = (conv(x) - bn.running_mean.view(1, -1, 1, 1)) * s.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    assert _rel(fold_conv_bn(conv, bn)(x), by_hand) < 1e-13
    with pytest.raises(ValueError, match="running statistics"):
        fold_conv_bn(conv, nn.BatchNorm2d(6, track_running_stats=False))
    with pytest.raises(ValueError, match="6 output channels"):
        fold_conv_bn(conv, nn.BatchNorm2d(5))
    with pytest.raises(TypeError, match="Conv2d and a BatchNorm"):
        fold_conv_bn(nn.Linear(2, 2), bn)
