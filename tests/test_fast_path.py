"""The fast training step (train.compile, channels_last, fused_optimizer) keeps the reference step's results.

On CPU, torch.compile runs with the aot_eager backend: Dynamo's whole-graph capture and AOTAutograd's joint
forward/backward graphs, which is where graph breaks and wrong gradients would come from. Inductor's generated
kernels take minutes to compile on 2 cores; scripts/gpu_check.sh runs the inductor path on a GPU.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from harness.build import build_discriminator, build_generator
from harness.config import load_config
from harness.trainer import Trainer

TINY = ["data.name=synthetic", "data.input_size=64", "data.heatmap_size=16", "data.synthetic_train_size=24",
        "data.synthetic_val_size=8", "data.num_workers=0", "model.stacks=2", "model.features=16",
        "discriminator.features=16", "train.batch_size=4", "train.log_every=1", "train.threads=1",
        "train.device=cpu", "train.flip_test=false", "train.val_every=100", "adversarial.sat.k0=0.3"]
FAST = ["train.compile=true", "train.compile_backend=aot_eager", "train.channels_last=true",
        "train.fused_optimizer=true"]


def _losses(run_dir) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def test_g_and_d_compile_as_whole_graphs():
    """Dynamo captures G and D with no graph break (fullgraph=True would raise)."""
    cfg = load_config(None, None, TINY + ["adversarial.objective=sat"])
    g, d = build_generator(cfg, 14), build_discriminator(cfg, 14)
    image, maps = torch.randn(2, 3, 64, 64), torch.rand(2, 14, 16, 16)
    for name, fn, args in (("G", g, (image,)), ("D", d, (maps, image))):
        explained = torch._dynamo.explain(fn)(*args)
        assert explained.graph_break_count == 0, (name, explained.break_reasons)
        assert explained.graph_count == 1, name


# SGD with momentum for the comparisons: RMSprop and Adam divide by sqrt(v), so in their first steps a gradient
# element near zero moves by +-lr whatever its size, and a rounding difference in its sign becomes a full step.
SGD = ["train.generator.name=sgd", "train.generator.lr=0.05", "train.generator.momentum=0.9",
       "train.discriminator.name=sgd", "train.discriminator.lr=0.05", "train.discriminator.momentum=0.9"]
KEYS = ("loss_mse", "loss_g", "loss_d", "loss_adv", "l_real", "l_fake", "k", "d_fake")


def _compare(tmp_path, cfg: list[str], fast: list[str], rel: float) -> list[dict]:
    Trainer(load_config(None, None, cfg), tmp_path / "ref", interactive=False).fit()
    Trainer(load_config(None, None, cfg + fast), tmp_path / "fast", interactive=False).fit()
    ref, got = _losses(tmp_path / "ref"), _losses(tmp_path / "fast")
    assert [r["step"] for r in got] == [r["step"] for r in ref] == list(range(1, 21))
    for a, b in zip(ref, got):
        for k in (k for k in KEYS if k in a):
            assert b[k] == pytest.approx(a[k], rel=rel, abs=rel * 1e-2), (a["step"], k, a[k], b[k])
    return ref


@pytest.mark.parametrize("objective", ["none", "sat", "cgan"])
def test_compiled_fused_step_matches_the_reference_over_20_steps_fp32(tmp_path, objective):
    """fp32: whole-model graphs (aot_eager) and the foreach optimizers compute what the eager step does, in the
    same order (measured: bit-identical). Regional graphs sum some gradients in another order: tests/test_compile.py."""
    ref = _compare(tmp_path, [*TINY, *SGD, f"adversarial.objective={objective}", "train.max_steps=20"],
                   ["train.compile=true", "train.compile_backend=aot_eager", "train.compile_scope=whole",
                    "train.fused_optimizer=true"], 1e-6)
    if objective == "sat":
        assert ref[-1]["k"] != 0.3, "k_t must move for its trajectory to be compared"


def test_channels_last_computes_the_same_function_fp64():
    """G and D in NHWC give the NCHW losses and gradients (fp64, to rounding).

    Trajectories are not compared here: in this tiny BatchNorm network with batch 4, a 1e-14 difference in
    step 1 grows about 30x per step in fp64 as in fp32 (measured: 3% apart after 20 SGD steps), a chaotic
    trajectory rather than a different function."""
    cfg = load_config(None, None, TINY + ["adversarial.objective=sat"])
    torch.manual_seed(0)
    nets = [build_generator(cfg, 14).double(), build_discriminator(cfg, 14).double()]
    image, maps = torch.randn(4, 3, 64, 64, dtype=torch.float64), torch.rand(4, 14, 16, 16, dtype=torch.float64)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        g, d = (copy.deepcopy(n).to(memory_format=layout) for n in nets)
        x = image.contiguous(memory_format=layout)
        loss = sum(((o - maps) ** 2).mean() for o in g(x)) + d(g(x)[-1], x).reconstruction.square().mean()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for n in (g, d) for p in n.parameters()])
        results.append((loss.detach(), grads))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-12, atol=0)
    assert float((g1 - g0).norm() / g0.norm()) < 1e-10


def test_resume_is_bit_exact_with_the_fast_options(tmp_path):
    cfg = [*TINY, *FAST, "adversarial.objective=sat", "train.max_steps=8"]
    full = Trainer(load_config(None, None, cfg), tmp_path / "full", interactive=False)
    full.fit()
    Trainer(load_config(None, None, [*cfg, "train.max_steps=3"]), tmp_path / "split", interactive=False).fit()
    second = Trainer(load_config(None, None, cfg), tmp_path / "split", resume="auto", interactive=False)
    assert second.step == 3
    second.fit()
    a, b = full.state(), second.state()
    assert a["objective"]["k"] == b["objective"]["k"] != 0.3
    for key in ("generator", "discriminator"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
    assert _losses(tmp_path / "full")[-1]["loss_g"] == _losses(tmp_path / "split")[-1]["loss_g"]
