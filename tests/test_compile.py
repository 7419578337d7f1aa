"""Regional compilation (harness/compiling.py): which blocks are compiled, that one compiled hourglass serves every
stack, and that the compiled step computes the eager one's numbers (aot_eager in fp64, inductor in fp32).

Why the multi-step bounds are loose: this tiny BatchNorm network is chaotic. Regional graphs add some gradient
contributions in another order than eager autograd (a tensor used inside and outside a region), a 1e-15 difference
in fp64 at step 2, which grew to 3e-11 by step 4 and 1e-3 by step 10 (cgan, measured); whole-model aot_eager graphs
keep eager's order and stay bit-identical (tests/test_fast_path.py). Inductor's fused kernels round differently from
step 1 on (issue 22 measured loss_g 2e-7 and grad norm 1.5e-5 relative at step 1 on the quickstart step, 0.5% by step
3 with RMSprop/Adam)."""

from __future__ import annotations

import json

import pytest
from torch import nn

from harness.build import build_discriminator, build_generator
from harness.compiling import compile_model, regions
from harness.config import load_config
from harness.trainer import Trainer

TINY = ["data.name=synthetic", "data.input_size=64", "data.heatmap_size=16", "data.synthetic_train_size=24",
        "data.synthetic_val_size=8", "data.num_workers=0", "model.stacks=2", "model.features=16",
        "discriminator.features=16", "train.batch_size=4", "train.log_every=1", "train.threads=1",
        "train.device=cpu", "train.flip_test=false", "train.val_every=100", "adversarial.sat.k0=0.3"]
SGD = ["train.generator.name=sgd", "train.generator.lr=0.05", "train.generator.momentum=0.9",
       "train.discriminator.name=sgd", "train.discriminator.lr=0.05", "train.discriminator.momentum=0.9"]


def _train_rows(run_dir) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-30)


def test_regions_are_each_stacks_blocks_of_g_and_d():
    cfg = load_config(None, None, [*TINY, "adversarial.objective=sat"])
    g, d = build_generator(cfg, 14), build_discriminator(cfg, 14)
    assert regions(g) == [g.stem, *g.hourglasses, *g.features_out]
    assert regions(d) == [d.net.stem, *d.net.hourglasses, *d.net.features_out]
    with pytest.raises(ValueError, match="no StackedHourglass"):
        regions(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="compile scope"):
        compile_model(g, "everything", "aot_eager")
    compile_model(g, "regional", "aot_eager")  # in place: the same state-dict keys as the eager model
    assert list(g.state_dict()) == list(build_generator(cfg, 14).state_dict())


def _graphs_for(stacks: int) -> int:
    import torch._dynamo
    import torch._dynamo.utils

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    cfg = load_config(None, None, [*TINY, f"model.stacks={stacks}"])
    torch.manual_seed(0)
    g = build_generator(cfg, 14)
    compile_model(g, "regional", "aot_eager")
    sum(o.square().mean() for o in g(torch.randn(2, 3, 64, 64))).backward()
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def test_one_compiled_hourglass_serves_every_stack():
    """Compiled graphs do not grow with the stack count: stacks 2..4 reuse the first stack's hourglass and
    features graphs (a whole-model graph holds every stack's layers)."""
    two, four = _graphs_for(2), _graphs_for(4)
    assert two == four == 3, (two, four)  # stem, hourglass, features_out


@pytest.mark.parametrize("objective", ["sat", "cgan"])
def test_regional_aot_eager_step_equals_eager_fp64(tmp_path, objective):
    base = [*TINY, *SGD, f"adversarial.objective={objective}", "train.precision=fp64", "train.max_steps=4"]
    Trainer(load_config(None, None, base), tmp_path / "eager", interactive=False).fit()
    Trainer(load_config(None, None, [*base, "train.compile=true", "train.compile_backend=aot_eager"]),
            tmp_path / "regional", interactive=False).fit()
    ref, got = _train_rows(tmp_path / "eager"), _train_rows(tmp_path / "regional")
    assert [r["step"] for r in got] == [r["step"] for r in ref] == [1, 2, 3, 4]
    keys = ("loss_mse", "loss_g", "loss_d", "l_real", "l_fake", "grad_norm_g", "grad_norm_d")
    for k in keys:  # step 1: the same function
        assert _rel(ref[0][k], got[0][k]) <= 1e-12, (k, ref[0][k], got[0][k])
    for a, b in zip(ref[1:], got[1:]):  # later: rounding order, amplified (measured <= 3.2e-11 by step 4)
        for k in keys:
            assert _rel(a[k], b[k]) <= 1e-8, (a["step"], k, a[k], b[k])


def test_regional_inductor_step_matches_eager_fp32(tmp_path):
    """Inductor's generated kernels on the CPU: tight at step 1, loose over the next steps. Measured (relative to
    eager): step 1 losses <= 4.8e-6 (loss_g 7e-8), grad norms 3.7e-6 (G) and 1.1e-3 (D: its fp32 gradient is
    only good to 1.1e-4 against fp64, eager or inductor alike, and its input, G's output, differs); step 3 losses
    <= 1.4e-3."""
    base = [*TINY, "model.stacks=1", "adversarial.objective=sat", "train.max_steps=3"]
    Trainer(load_config(None, None, base), tmp_path / "eager", interactive=False).fit()
    Trainer(load_config(None, None, [*base, "train.compile=true", "train.compile_backend=inductor"]),
            tmp_path / "inductor", interactive=False).fit()
    ref, got = _train_rows(tmp_path / "eager"), _train_rows(tmp_path / "inductor")
    assert [r["step"] for r in got] == [1, 2, 3]
    for k in ("loss_mse", "loss_g", "loss_d", "l_real", "l_fake"):
        assert _rel(ref[0][k], got[0][k]) <= 5e-5, (k, ref[0][k], got[0][k])
    for k in ("grad_norm_g", "grad_norm_d"):
        assert _rel(ref[0][k], got[0][k]) <= 1e-2, (k, ref[0][k], got[0][k])
    for a, b in zip(ref[1:], got[1:]):
        for k in ("loss_mse", "loss_g", "loss_d"):
            assert _rel(a[k], b[k]) <= 5e-2, (a["step"], k, a[k], b[k])
