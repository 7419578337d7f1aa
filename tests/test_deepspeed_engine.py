"""DeepSpeed strategy: the pure config builder, and real DeepSpeed runs on CPU/gloo in subprocesses.

The real runs train a tiny conv G and D (no BatchNorm, so a 1-process run on the global batch is the exact
reference for a 2-process run) with the harness's GAN step pattern: D on real and detached fake, then G's
loss through D's module with D frozen, grad_accum micro-batches with loss / grad_accum, one step each.
This file is also the worker: `python tests/test_deepspeed_engine.py RUN_SPEC_JSON` (under torchrun for 2
processes) writes the exported states to the paths in the spec.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import require

from data_pipelines.errors import UserError
from harness.strategies.deepspeed_engine import FP16_ZERO_REFUSAL, ZERO_STAGE_REFUSAL, deepspeed_config

REPO = Path(__file__).resolve().parents[1]
GLOBAL_BATCH, STEPS, MID = 8, 4, 2

# ------------------------------------------------------------------------------------- pure config


def test_config_fp32_stage0_is_plain_data_parallel():
    c = deepspeed_config(micro_batch=2, grad_accum=3, world_size=4, gradient_clipping=1.5)
    assert c["train_batch_size"] == 24
    assert c["train_micro_batch_size_per_gpu"] == 2 and c["gradient_accumulation_steps"] == 3
    assert c["gradient_clipping"] == 1.5
    assert c["zero_optimization"] == {"stage": 0}
    assert "optimizer" not in c and "scheduler" not in c  # torch objects are passed to initialize
    assert not any(k in c for k in ("bf16", "fp16", "torch_autocast", "zero_allow_untested_optimizer"))


@pytest.mark.parametrize("precision,dtype,stage", [("bf16", "bfloat16", 1), ("fp16", "float16", 0)])
def test_config_mixed_precision_is_torch_autocast_with_fp32_reductions(precision, dtype, stage):
    c = deepspeed_config(micro_batch=1, precision=precision, zero_stage=stage, allow_untested_optimizer=True)
    assert c["torch_autocast"] == {"enabled": True, "dtype": dtype, "lower_precision_safe_modules": []}
    assert "bf16" not in c and "fp16" not in c  # DeepSpeed's native sections cast the weights
    assert c["zero_optimization"] == {"stage": stage}
    assert c.get("zero_allow_untested_optimizer") is (True if stage else None)  # only meaningful for ZeRO


def test_config_refuses_fp16_with_zero1():
    with pytest.raises(UserError) as err:
        deepspeed_config(micro_batch=1, precision="fp16", zero_stage=1)
    assert str(err.value) == FP16_ZERO_REFUSAL and "OVERFLOW! Skipping step" in str(err.value)


@pytest.mark.parametrize("stage", [2, 3])
def test_config_refuses_zero_2_and_3_with_the_reason(stage):
    with pytest.raises(UserError) as err:
        deepspeed_config(micro_batch=1, zero_stage=stage)
    assert str(err.value) == ZERO_STAGE_REFUSAL.format(stage=stage)
    assert f"ZeRO stage {stage}" in str(err.value) and "already been reduced" in str(err.value)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(zero_stage=4), "zero_stage must be 0 or 1"),
    (dict(zero_stage=True), "zero_stage must be 0 or 1"),
    (dict(precision="fp8"), "precision must be one of fp32, bf16, fp16"),
    (dict(micro_batch=0), "micro_batch must be a positive integer"),
    (dict(grad_accum=1.5), "grad_accum must be a positive integer"),
    (dict(world_size=-2), "world_size must be a positive integer"),
    (dict(gradient_clipping=-1.0), "gradient_clipping must be >= 0"),
    (dict(gradient_clipping=float("nan")), "gradient_clipping must be >= 0"),
])
def test_config_rejects_bad_values_by_name(kwargs, needle):
    args = dict(micro_batch=2) | kwargs
    with pytest.raises(UserError, match=needle):
        deepspeed_config(**args)


def test_module_imports_and_builds_config_without_deepspeed():
    code = ("import sys; sys.modules['deepspeed'] = None\n"
            "import harness.strategies.deepspeed_engine as m\n"
            "assert m.deepspeed_config(micro_batch=2)['train_batch_size'] == 2\n"
            "from data_pipelines.errors import UserError\n"
            "try:\n    m._deepspeed()\nexcept UserError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ERR distributed.strategy=deepspeed needs the deepspeed package" in out.stdout


# ---------------------------------------------------------------------------------------- worker


def _models():
    from torch import nn
    torch.manual_seed(0)
    g = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    d = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
    return g, d


def _batch(step: int):
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=gen), torch.randn(GLOBAL_BATCH, 4, 8, 8, generator=gen)


def _train(spec: dict) -> None:
    """One run: build G and D engines, optionally import a state, train to STEPS, export (collective)."""
    import torch.distributed as dist

    from harness.strategies import deepspeed_engine as dse
    from harness.strategies import deepspeed_model as dsm
    from harness.strategies import deepspeed_state as dss

    g_net, d_net = _models()
    accum = spec["grad_accum"]
    dse.ensure_distributed("cpu")
    rank, world = dist.get_rank(), dist.get_world_size()
    micro = GLOBAL_BATCH // world // accum
    common = dict(micro_batch=micro, grad_accum=accum, world_size=world, precision=spec["precision"],
                  zero_stage=spec["zero_stage"], gradient_clipping=spec.get("clip", 0.5))
    g = dsm.DeepSpeedModel(dse.build_engine(g_net, {"type": "adam", "lr": 1e-2}, **common))
    d = dsm.DeepSpeedModel(dse.build_engine(d_net, torch.optim.Adam(d_net.parameters(), lr=1e-2), **common))
    start = 0
    if spec.get("resume"):
        saved = torch.load(spec["resume"], weights_only=True)
        dss.import_state(g.handle, saved["G"])
        dss.import_state(d.handle, saved["D"])
        start = saved["step"]
    checks = {"d_unchanged_by_g": True, "d_no_grad_in_g": True, "g_unchanged_by_d": True}

    def export(step: int, path: str) -> None:
        state = {"G": dss.export_state(g.handle), "D": dss.export_state(d.handle), "step": step,
                 "checks": dict(checks), "world": world,
                 "dtypes": sorted({str(p.dtype) for p in [*g_net.parameters(), *d_net.parameters()]})}
        if rank == 0:
            torch.save(state, path)

    for step in range(start, STEPS):
        images, real = _batch(step)
        first = rank * micro * accum
        parts = [(images[first + k * micro:first + (k + 1) * micro], real[first + k * micro:first + (k + 1) * micro])
                 for k in range(accum)]
        g_before = [p.detach().clone() for p in g_net.parameters()]
        for x, r in parts:  # D: real and detached fake, through D's engine
            with torch.no_grad():
                fake = g.module(x)
            loss_d = (d.module(r).float() - 1).pow(2).mean() + d.module(fake).float().pow(2).mean()
            d.backward(loss_d / accum)
        d.step()
        checks["g_unchanged_by_d"] &= all(torch.equal(a, b) for a, b in zip(g_before, g_net.parameters()))
        d_before = [p.detach().clone() for p in d_net.parameters()]
        for x, _ in parts:  # G: through D's module, D frozen
            fake = g.module(x)
            d_net.requires_grad_(False)
            with _autocast(spec["precision"]):
                loss_g = (d_net(fake).float() - 1).pow(2).mean()
            d_net.requires_grad_(True)
            g.backward(loss_g / accum)
            checks["d_no_grad_in_g"] &= all(p.grad is None for p in d_net.parameters())
        g.step()
        checks["d_unchanged_by_g"] &= all(torch.equal(a, b) for a, b in zip(d_before, d_net.parameters()))
        if step + 1 == MID and spec.get("mid"):
            export(MID, spec["mid"])
    export(STEPS, spec["final"])


def _autocast(precision: str):
    """G's pass calls D's raw module, outside the engine's own autocast: enter the same one."""
    from contextlib import nullcontext
    if precision == "fp32":
        return nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _worker(specs: list[dict]) -> None:
    import torch.distributed as dist
    for spec in specs:
        _train(spec)
    dist.barrier()
    dist.destroy_process_group()


# ------------------------------------------------------------------------------------- real runs


def _launch(specs: list[dict], nproc: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    script = [str(Path(__file__).resolve()), json.dumps(specs)]
    cmd = ([sys.executable, *script] if nproc == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *script])
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, f"{' '.join(cmd[:6])} failed:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """All real runs, in three launches (one 1-process, two 2-process); returns {name: loaded state}."""
    require("deepspeed", "pip install 'satpose[deepspeed]'")
    tmp = tmp_path_factory.mktemp("ds")

    def spec(name, zero_stage, precision="fp32", grad_accum=2, mid=False, resume=None):
        return {"zero_stage": zero_stage, "precision": precision, "grad_accum": grad_accum,
                "final": str(tmp / f"{name}.pt"), "mid": str(tmp / f"{name}-mid.pt") if mid else None,
                "resume": str(tmp / f"{resume}-mid.pt") if resume else None}

    # 1 process, no launcher: the references (grad_accum 2 x micro-batch 4 = the global batch of 8)
    _launch([spec("ref", 0, mid=True), spec("ref_z1_bf16", 1, "bf16"), spec("fp16", 0, "fp16", mid=True),
             spec("fp16_resumed", 0, "fp16", resume="fp16")], nproc=1)
    # 2 processes (grad_accum 2 x micro-batch 2 x 2 ranks): stage 0, stage 1, stage 1 resumed from the
    # 1-process stage-0 checkpoint
    _launch([spec("z0", 0), spec("z1", 1, mid=True), spec("z1_from_ref", 1, resume="ref")], nproc=2)
    # 2 processes: stage 1 and stage 0 resumed from the 2-process ZeRO-1 checkpoint
    _launch([spec("z1_resumed", 1, resume="z1"), spec("z0_from_z1", 0, resume="z1")], nproc=2)
    return {p.stem: torch.load(p, weights_only=True) for p in tmp.glob("*.pt")}


def _max_diff(a: dict, b: dict) -> float:
    """Largest |a - b| over both models' parameters and every optimizer state tensor."""
    worst = 0.0
    for m in ("G", "D"):
        for k, v in a[m]["model"].items():
            worst = max(worst, float((v - b[m]["model"][k]).abs().max()))
        sa, sb = a[m]["optimizer"]["state"], b[m]["optimizer"]["state"]
        assert sorted(sa) == sorted(sb)
        for i in sa:
            assert sorted(sa[i]) == sorted(sb[i])
            for key, v in sa[i].items():
                worst = max(worst, float((v.float() - sb[i][key].float()).abs().max()))
    return worst


def test_gan_step_freezes_d_and_keeps_weights_fp32(runs):
    for name in ("ref", "ref_z1_bf16", "fp16", "z0", "z1", "z1_resumed"):
        assert runs[name]["checks"] == {"d_unchanged_by_g": True, "d_no_grad_in_g": True,
                                        "g_unchanged_by_d": True}, name
        assert runs[name]["dtypes"] == ["torch.float32"], name  # bf16 = autocast: fp32 master weights
    # the runs trained: D and G moved from their initial weights, and bf16 stays near fp32
    g0, d0 = _models()
    init = {"G": g0.state_dict(), "D": d0.state_dict()}
    for m in ("G", "D"):
        for k, v in init[m].items():
            assert float((runs["ref"][m]["model"][k] - v).abs().max()) > 1e-3, (m, k)
    bf16_gap = max(float((runs["ref_z1_bf16"][m]["model"][k] - runs["ref"][m]["model"][k]).abs().max())
                   for m in ("G", "D") for k in init[m])
    assert 0 < bf16_gap < 0.05


@pytest.mark.parametrize("name", ["z0", "z1"])
def test_two_processes_equal_one_process_on_the_same_global_batch(runs, name):
    assert runs[name]["world"] == 2 and runs["ref"]["world"] == 1
    diff = _max_diff(runs[name], runs["ref"])
    print(f"{name} (2 procs) vs stage 0 (1 proc): max abs diff {diff:.3e}")
    assert diff < 2e-6


def test_zero1_export_gathers_the_sharded_optimizer_state_in_torch_format(runs):
    """ZeRO-1 shards Adam's state over 2 ranks; the export must equal the 1-process torch Adam state."""
    z1, ref = runs["z1-mid"], runs["ref-mid"]
    for m, n_params in (("G", 4), ("D", 4)):
        opt = z1[m]["optimizer"]
        assert sorted(opt["state"]) == list(range(n_params))
        assert [g["params"] for g in opt["param_groups"]] == [list(range(n_params))]
        assert opt["param_groups"][0]["lr"] == ref[m]["optimizer"]["param_groups"][0]["lr"] == 1e-2
        for i, st in opt["state"].items():
            assert float(st["step"]) == MID == float(ref[m]["optimizer"]["state"][i]["step"])
            shape = z1[m]["model"][list(z1[m]["model"])[i]].shape
            assert st["exp_avg"].shape == st["exp_avg_sq"].shape == shape
    diff = _max_diff(z1, ref)
    print(f"ZeRO-1 export at step {MID} vs torch Adam state: max abs diff {diff:.3e}")
    assert diff < 2e-6
    # and a plain torch optimizer loads it (the DDP checkpoint format)
    g, _ = _models()
    plain = torch.optim.Adam(g.parameters(), lr=1e-2)
    plain.load_state_dict(z1["G"]["optimizer"])
    assert torch.equal(plain.state[next(iter(g.parameters()))]["exp_avg"], z1["G"]["optimizer"]["state"][0]["exp_avg"])


def test_resume_round_trips_through_one_file(runs):
    exact = _max_diff(runs["z1_resumed"], runs["z1"])
    print(f"ZeRO-1 resumed from its own file vs uninterrupted: max abs diff {exact:.3e}")
    assert exact == 0.0
    assert _max_diff(runs["fp16_resumed"], runs["fp16"]) == 0.0  # stage 0 + DeepSpeed's GradScaler
    for m in ("G", "D"):
        assert runs["fp16_resumed"][m]["grad_scaler"] == runs["fp16"][m]["grad_scaler"]
        assert runs["fp16"][m]["grad_scaler"]["_growth_tracker"] > 0
    for name in ("z1_from_ref", "z0_from_z1"):  # across stages and world sizes
        diff = _max_diff(runs[name], runs["ref"])
        print(f"{name} vs uninterrupted 1-process run: max abs diff {diff:.3e}")
        assert diff < 2e-6


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))


def test_deepspeed_takes_the_run_device_not_cuda_availability():
    """train.device=cpu with DeepSpeed on a GPU machine: the engines must be CPU ones (DeepSpeed alone would pick
    CUDA because it is available). Simulated in a fresh process where CUDA reports itself available."""
    require("deepspeed")
    code = ("import torch\ntorch.cuda.is_available = lambda: True\n"
            "from harness.strategies.deepspeed_engine import _deepspeed\n"
            "_deepspeed('cpu')\nfrom deepspeed.accelerator import get_accelerator\n"
            "print(get_accelerator().device_name())\n")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "cpu"
