"""Which launcher started us: torchrun's environment, SLURM's (plain srun), or neither."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from data_pipelines.errors import UserError
from harness import distributed


@pytest.fixture
def clean_env(monkeypatch):
    """A private copy of the environment without launcher variables (launch_env writes RANK etc. into it,
    which must not leak into later tests)."""
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                "SLURM_LOCALID", "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_GPUS_ON_NODE",
                "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in launcher})
    return monkeypatch


def test_single_process(clean_env):
    assert distributed.launch_env() == (0, 1, 0)
    rt = distributed.init_runtime("cpu")
    assert (rt.rank, rt.world_size, rt.backend, rt.is_main) == (0, 1, None, True)


def test_torchrun_environment_wins(clean_env):
    clean_env.setenv("RANK", "3")
    clean_env.setenv("WORLD_SIZE", "8")
    clean_env.setenv("LOCAL_RANK", "1")
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "2")
    assert distributed.launch_env() == (3, 8, 1)


def test_plain_srun_environment(clean_env, tmp_path):
    clean_env.setenv("SLURM_PROCID", "5")
    clean_env.setenv("SLURM_NTASKS", "8")
    clean_env.setenv("SLURM_LOCALID", "1")
    clean_env.setenv("SLURM_JOB_ID", "4242")
    clean_env.setenv("SLURM_JOB_NODELIST", "gpu-node[07-08],login1")
    clean_env.setenv("PATH", str(tmp_path))  # no scontrol: the host list is parsed here
    assert distributed.launch_env() == (5, 8, 1)
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]) == ("5", "8", "gpu-node07")
    assert os.environ["MASTER_PORT"] == str(20000 + 4242 % 20000)


def test_one_slurm_task_is_a_single_process(clean_env):
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "1")
    assert distributed.launch_env() == (0, 1, 0)


def test_nccl_needs_cuda(clean_env):
    with pytest.raises(UserError, match="nccl needs CUDA"):
        distributed.init_runtime("cpu", backend="nccl")


# -- SLURM host lists (scontrol's fallback) ------------------------------------------------------------
@pytest.mark.parametrize("hostlist, hosts", [
    ("node[1-2]", ["node1", "node2"]),
    ("a[01-03,7],b5", ["a01", "a02", "a03", "a7", "b5"]),
    ("r[1-2]-n[9-10]", ["r1-n9", "r1-n10", "r2-n9", "r2-n10"]),
    ("gpu-node-a,gpu-node-b", ["gpu-node-a", "gpu-node-b"]),
    ("single", ["single"]),
])
def test_expand_hostlist(hostlist, hosts):
    assert distributed.expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist", ["node[1-2", "node1-2]", "node[2-1]", "node[a-b]"])
def test_bad_hostlist_is_a_user_error(hostlist):
    with pytest.raises(UserError, match="SLURM host list"):
        distributed.expand_hostlist(hostlist)


@pytest.mark.parametrize("hostlist, first", [("node[1-2]", "node1"), ("a[01-03,7],b5", "a01")])
def test_master_addr_without_scontrol_is_the_first_host(clean_env, tmp_path, hostlist, first):
    clean_env.setenv("PATH", str(tmp_path))  # the real function, no scontrol on PATH
    clean_env.setenv("SLURM_JOB_NODELIST", hostlist)
    assert distributed._slurm_master_addr() == first


def test_master_addr_asks_scontrol_first(clean_env, tmp_path):
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho from-scontrol\necho second\n")
    fake.chmod(0o755)
    clean_env.setenv("PATH", str(tmp_path))
    clean_env.setenv("SLURM_JOB_NODELIST", "node[1-2]")
    assert distributed._slurm_master_addr() == "from-scontrol"


# -- GPUs per process (a fake device count) -----------------------------------------------------------
@pytest.fixture
def fake_gpus(clean_env):
    """A machine with `fake_gpus.count` GPUs as torch.cuda reports them; records set_device and
    init_process_group instead of running them."""
    class Fake:
        count, selected, groups = 1, [], []
    fake = Fake()
    clean_env.setattr(torch.cuda, "is_available", lambda: fake.count > 0)
    clean_env.setattr(torch.cuda, "device_count", lambda: fake.count)
    clean_env.setattr(torch.cuda, "set_device", lambda i: fake.selected.append(i))
    clean_env.setattr(torch.cuda, "current_device", lambda: fake.selected[-1])
    clean_env.setattr(distributed.dist, "is_initialized", lambda: False)
    clean_env.setattr(distributed.dist, "init_process_group", lambda **kw: fake.groups.append(kw))
    return fake


def _torchrun_env(env, rank: int, world: int, local_rank: int) -> None:
    env.setenv("RANK", str(rank))
    env.setenv("WORLD_SIZE", str(world))
    env.setenv("LOCAL_RANK", str(local_rank))
    env.setenv("MASTER_ADDR", "127.0.0.1")
    env.setenv("MASTER_PORT", "29500")


def test_more_local_ranks_than_gpus_is_refused(clean_env, fake_gpus):
    """Two torchrun workers on a 1-GPU machine: rank 1 would share cuda:0 with rank 0 (NCCL "Duplicate GPU
    detected"); it is refused with the counts and CUDA_VISIBLE_DEVICES instead."""
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "3")
    _torchrun_env(clean_env, 1, 2, 1)
    with pytest.raises(UserError, match=r"local rank 1 needs GPU 1 but this process sees 1 GPU\(s\) "
                                        r"\(CUDA_VISIBLE_DEVICES='3'\)"):
        distributed.init_runtime("auto")
    assert fake_gpus.groups == [] and fake_gpus.selected == []


def test_each_local_rank_gets_its_own_gpu(clean_env, fake_gpus):
    fake_gpus.count = 8
    _torchrun_env(clean_env, 13, 16, 5)
    rt = distributed.init_runtime("cuda")
    assert fake_gpus.selected == [5] and rt.device == torch.device("cuda", 5) and rt.backend == "nccl"
    assert fake_gpus.groups[0]["backend"] == "nccl" and fake_gpus.groups[0]["rank"] == 13


def test_plain_srun_with_one_gpu_per_task(clean_env, fake_gpus, tmp_path):
    """srun --ntasks-per-node=8 --gpus-per-task=1 without torchrun: each task sees only its own GPU."""
    clean_env.setenv("PATH", str(tmp_path))
    for key, value in {"SLURM_PROCID": "11", "SLURM_NTASKS": "16", "SLURM_LOCALID": "3", "SLURM_JOB_ID": "7",
                       "SLURM_JOB_NODELIST": "n[1-2]"}.items():
        clean_env.setenv(key, value)
    rt = distributed.init_runtime("auto")
    assert fake_gpus.selected == [0] and (rt.rank, rt.world_size, rt.local_rank) == (11, 16, 3)
    # but a task that sees 2 GPUs for 4 local tasks has a wrong count, not one GPU per task
    fake_gpus.count, fake_gpus.selected = 2, []
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # (written by the first launch_env)
        clean_env.delenv(key)
    with pytest.raises(UserError, match=r"sees 2 GPU\(s\)"):
        distributed.init_runtime("auto")


# -- which device the tests use (issue: the suite on a 1-GPU machine) ---------------------------------
def test_suite_hides_gpus_from_cpu_tests_and_their_subprocesses(clean_env):
    """On a simulated 1-GPU machine whose driver honours CUDA_VISIBLE_DEVICES, each test config with
    train.device=auto resolves to the CPU under the suite's environment (tests/conftest.py), and would
    resolve to the GPU without it; torchrun/sbatch subprocesses inherit the same environment."""
    import test_distributed
    import test_trainer

    from harness.config import load_config

    def visible() -> int:
        return 0 if os.environ.get("CUDA_VISIBLE_DEVICES") == "" else 1
    clean_env.setattr(torch.cuda, "is_available", lambda: visible() > 0)
    clean_env.setattr(torch.cuda, "device_count", visible)
    configs = [test_distributed.TINY, test_trainer.TINY]
    for overrides in configs:
        device = load_config(None, None, overrides).train.device
        assert distributed.resolve_device(device) == "cpu", overrides
    assert test_distributed.ENV["CUDA_VISIBLE_DEVICES"] == ""
    child = subprocess.run([sys.executable, "-c", "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']))"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "''"
    clean_env.delenv("CUDA_VISIBLE_DEVICES")  # what a run outside the suite would do on that machine
    assert distributed.resolve_device(load_config(None, None, test_distributed.TINY).train.device) == "cuda"
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "")  # (conftest checks that no test leaves the GPUs visible)


# -- what a run says about its device -------------------------------------------------------------------
def _fake_nvidia_smi(tmp_path, gpus: int) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: NVIDIA H100 (UUID: GPU-{i})'\n" for i in range(gpus)))
    smi.chmod(0o755)


def test_device_line_and_cpu_fallback_warnings(clean_env, tmp_path):
    cpu1 = distributed.Runtime()
    clean_env.setenv("PATH", str(tmp_path))
    notes = distributed.device_notes("auto", cpu1, 6, False)
    assert notes[0].startswith("device: cpu (") and "train.device=auto" in notes[0] and len(notes) == 1
    # GPUs listed by the driver, but torch sees none: loud, on auto only
    _fake_nvidia_smi(tmp_path, 2)
    clean_env.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    notes = distributed.device_notes("auto", cpu1, 6, False)
    assert len(notes) == 2 and notes[1].startswith("warning: train.device=auto is training on the CPU although "
                                                   "nvidia-smi lists 2 GPU(s)"), notes
    assert len(distributed.device_notes("cpu", cpu1, 6, False)) == 1  # asked for: no warning
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "")  # hidden on purpose (as in this suite)
    assert len(distributed.device_notes("auto", cpu1, 6, False)) == 1
    # a Slurm job with GPUs allocated that trains on the CPU (e.g. a CPU-only torch on the GPU node)
    clean_env.setenv("SLURM_GPUS_ON_NODE", "4")
    notes = distributed.device_notes("auto", cpu1, 6, False)
    assert "Slurm allocated GPUs (SLURM_GPUS_ON_NODE=4)" in notes[1], notes


@pytest.mark.parametrize("world, micro, sync, warned", [(8, 1, False, True), (2, 7, False, True),
                                                        (2, 8, False, False), (8, 1, True, False),
                                                        (1, 6, False, False)])
def test_small_per_process_batchnorm_warning(clean_env, world, micro, sync, warned):
    rt = distributed.Runtime(0, world, 0, torch.device("cpu"), "gloo" if world > 1 else None)
    notes = distributed.device_notes("cpu", rt, micro, sync)
    assert any(f"BatchNorm statistics over {micro} sample(s) per process" in n for n in notes) == warned, notes


def test_bf16_on_a_cpu_without_bf16_kernels_is_warned(clean_env, monkeypatch):
    cpu1 = distributed.Runtime()
    monkeypatch.setattr(distributed, "cpu_has_bf16_kernels", lambda: False)
    notes = distributed.device_notes("cpu", cpu1, 6, False, "bf16")
    assert len(notes) == 2 and notes[1].startswith("warning: train.precision=bf16 on a CPU without oneDNN bf16 "
                                                   "kernels"), notes
    assert len(distributed.device_notes("cpu", cpu1, 6, False, "fp32")) == 1
    monkeypatch.setattr(distributed, "cpu_has_bf16_kernels", lambda: True)
    assert len(distributed.device_notes("cpu", cpu1, 6, False, "bf16")) == 1


def test_the_bf16_kernel_probe_follows_the_isa_cap():
    """oneDNN capped at AVX2 (a CPU without AVX512) has no bf16 kernels; the probe says so in that process."""
    code = "from harness.precision import cpu_has_bf16_kernels as f; print(f())"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- DDP and BatchNorm buffers ----------------------------------------------------------------------------
def test_ddp_buffer_broadcast_only_for_plain_batchnorm(monkeypatch):
    """Synchronised BatchNorm: no per-forward buffer broadcast (the buffers are identical); plain BatchNorm:
    rank 0's buffers broadcast at each forward, refused on CUDA with a torch that lacks pytorch#175851."""
    import torch.distributed as dist

    from harness import build
    from models.sync_batchnorm import CrossRankBatchNorm2d

    assert build.ddp_keeps_buffer_versions()  # the torch this project requires (>= 2.13) has the fix
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        rt = distributed.Runtime(0, 2, 0, torch.device("cpu"), "gloo")
        plain = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))
        synced = nn.Sequential(nn.Conv2d(2, 2, 1), CrossRankBatchNorm2d(2))
        assert build._ddp(plain, rt).forward_sync_buffers is True
        assert build._ddp(synced, rt).forward_sync_buffers is False
    finally:
        dist.destroy_process_group()
    monkeypatch.setattr(build, "ddp_keeps_buffer_versions", lambda: False)
    gpu = distributed.Runtime(0, 2, 0, torch.device("cuda", 0), "nccl")
    with pytest.raises(UserError, match=r"install torch>=2.13 .* or set distributed.sync_batchnorm=true"):
        build._ddp(plain, gpu)


# -- presets: paper-scale ones require CUDA; the 8-GPU recipes split evenly --------------------------------
def test_paper_presets_require_cuda_and_the_quickstart_does_not(clean_env):
    from harness.config import load_config, preset_names

    presets = {name: load_config(name, None, []) for name in preset_names()}
    assert presets["quickstart"].train.device == "auto"
    assert presets["lsp-tta-tiny"].train.device == "cpu"  # the 2-core CPU twin of lsp-tta
    assert {n for n, c in presets.items() if c.train.device == "cuda"} == set(presets) - {"quickstart", "lsp-tta-tiny"}
    clean_env.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"train.device=cuda but no CUDA device is visible .*add train.device=cpu"):
        distributed.init_runtime(presets["lsp-sat-4s"].train.device)
    for name in ("lsp-sat-4s-8gpu", "mpii-sat-4s-8gpu"):
        eight, one = presets[name].train, presets[name.removesuffix("-8gpu")].train
        assert eight.batch_size == 8 * one.batch_size and eight.max_steps * 8 == one.max_steps
        for opt in ("generator", "discriminator"):
            ratio = getattr(eight, opt).lr / getattr(one, opt).lr
            assert ratio == pytest.approx(8 ** 0.5, rel=2e-3), (name, opt, ratio)
