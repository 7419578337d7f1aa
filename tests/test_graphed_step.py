"""The CUDA-graph step's CPU-checkable parts (harness/graphed_step.py): when it refuses and why, and that its
static-buffer bookkeeping (inputs copied into buffers it owns, k_t and learning rates updated in place, values
overwritten each step) computes exactly the eager step. The capture itself needs a GPU: scripts/gpu_check.sh."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.build import build_discriminator, build_generator
from harness.config import load_config
from harness.distributed import Runtime
from harness.graphed_step import GraphedStep, refusal
from harness.objectives import SAT, build_objective
from harness.optim import build_optimizer, set_lr
from harness.step import Model, synchronized_step

TINY = ["data.name=synthetic", "data.input_size=64", "data.heatmap_size=16", "model.stacks=1", "model.features=16",
        "discriminator.features=16", "adversarial.objective=sat", "adversarial.sat.k0=0.2",
        "adversarial.sat.lambda_k=0.5", "train.generator.name=rmsprop", "train.discriminator.name=adam"]
CUDA = Runtime(device=torch.device("cuda", 0))


def test_refusals_name_the_reason():
    cfg = load_config(None, None, [*TINY, "train.cuda_graphs=true"])
    assert refusal(load_config(None, None, TINY), CUDA) == "train.cuda_graphs is off"
    assert "need a CUDA device" in refusal(cfg, Runtime(device=torch.device("cpu")))
    assert refusal(cfg, CUDA) is None
    assert "GradScaler" in refusal(load_config(None, None, [*TINY, "train.cuda_graphs=true",
                                                            "train.precision=fp16"]), CUDA)
    assert "DeepSpeed" in refusal(load_config(None, None, [*TINY, "train.cuda_graphs=true",
                                                           "distributed.strategy=deepspeed"]), CUDA)
    assert "sgd" in refusal(load_config(None, None, [*TINY, "train.cuda_graphs=true",
                                                     "train.generator.name=sgd"]), CUDA)
    two = Runtime(device=torch.device("cuda", 0), rank=0, world_size=2)
    assert "multi-process" in refusal(cfg, two)
    with pytest.raises(ValueError, match="sgd"):
        build_optimizer([torch.zeros(2, requires_grad=True)], cfg.train.generator.model_copy(update={"name": "sgd"}),
                        capturable=True)


def _batch(seed: int, n: int = 4) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, 64, 64, generator=gen), "heatmaps": torch.rand(n, 14, 16, 16, generator=gen),
            "target_weight": (torch.rand(n, 14, generator=gen) > 0.2).float(), "num_samples": n}


def test_static_buffer_step_equals_the_eager_step_bit_for_bit():
    cfg = load_config(None, None, TINY)
    torch.manual_seed(0)
    g0, d0 = build_generator(cfg, 14), build_discriminator(cfg, 14)
    rt = Runtime(device=torch.device("cpu"))
    runs = []
    for graphed in (False, True):
        g, d = copy.deepcopy(g0), copy.deepcopy(d0)
        gm = Model(g, build_optimizer(g.parameters(), cfg.train.generator))
        dm = Model(d, build_optimizer(d.parameters(), cfg.train.discriminator))
        obj = build_objective(cfg, (9, 2), rt.device)
        k_tensor = obj.k

        def fn(micro, gm=gm, dm=dm, obj=obj):
            return synchronized_step(micro, gm, dm, obj, rt, "fp32", True)

        step = GraphedStep(fn, rt.device, capture=False) if graphed else fn
        values = []
        for i in range(5):
            micro = [_batch(i)]
            out = step(micro)
            values.append({k: float(v) for k, v in out.items()})
        assert obj.k is k_tensor and float(obj.k) != 0.2  # k_t moved, in place
        runs.append((values, copy.deepcopy(g.state_dict()), copy.deepcopy(d.state_dict())))
        if graphed:
            assert step.static_in is not None and step.static_in[0]["image"] is not micro[0]["image"]
            assert torch.equal(step.static_in[0]["image"], micro[0]["image"])  # the last batch, copied in
            assert step([_batch(9, n=2)]) and step.eager_steps == 1  # another shape: eager, counted
    (v0, g_a, d_a), (v1, g_b, d_b) = runs
    assert v0 == v1
    for a, b in ((g_a, g_b), (d_a, d_b)):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_learning_rate_tensors_are_filled_in_place():
    cfg = load_config(None, None, [*TINY, "train.generator.milestones=[2]", "train.generator.gamma=0.1"])
    c = cfg.train.generator
    p = torch.zeros(3, requires_grad=True)
    opt = torch.optim.RMSprop([p], lr=torch.tensor(c.lr))
    opt.param_groups[0]["capturable"] = True  # as a capturable optimizer's group says (CPU: not steppable)
    held = opt.param_groups[0]["lr"]
    set_lr(opt, c, 5, steps_per_epoch=1)
    assert opt.param_groups[0]["lr"] is held and float(held) == pytest.approx(c.lr * 0.1)
    plain = torch.optim.RMSprop([p], lr=c.lr)
    plain.param_groups[0]["lr"] = torch.tensor(1.0)  # a capturable run's checkpoint loaded into a plain optimizer
    set_lr(plain, c, 0, steps_per_epoch=1)
    assert plain.param_groups[0]["lr"] == c.lr and isinstance(plain.param_groups[0]["lr"], float)


def test_sat_k_stays_one_tensor_through_updates_and_loading():
    obj = SAT(gamma=0.5, lambda_k=0.1, lambda_g=1e-4, k0=0.0, device=torch.device("cpu"))
    k = obj.k
    logs = obj.update({"l_real": torch.tensor(1.0, dtype=torch.float64), "l_fake": torch.tensor(0.1,
                                                                                                dtype=torch.float64)})
    assert obj.k is k and float(k) == pytest.approx(0.04) and logs["k"] is not k
    obj.load_state_dict({"k": 0.5, "gamma": 0.5, "lambda_k": 0.1})
    assert obj.k is k and float(k) == 0.5
