"""Which launcher started us: torchrun's environment, SLURM's (plain srun), or neither."""

from __future__ import annotations

import os

import pytest

from harness import distributed


@pytest.fixture
def clean_env(monkeypatch):
    """A private copy of the environment without launcher variables (launch_env writes RANK etc. into it,
    which must not leak into later tests)."""
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                "SLURM_LOCALID", "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
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


def test_plain_srun_environment(clean_env):
    clean_env.setenv("SLURM_PROCID", "5")
    clean_env.setenv("SLURM_NTASKS", "8")
    clean_env.setenv("SLURM_LOCALID", "1")
    clean_env.setenv("SLURM_JOB_ID", "4242")
    clean_env.setenv("SLURM_JOB_NODELIST", "gpu-node-a,gpu-node-b")  # no scontrol here: first entry
    clean_env.setattr(distributed, "_slurm_master_addr", lambda: "gpu-node-a")
    assert distributed.launch_env() == (5, 8, 1)
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]) == ("5", "8", "gpu-node-a")
    assert os.environ["MASTER_PORT"] == str(20000 + 4242 % 20000)


def test_one_slurm_task_is_a_single_process(clean_env):
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "1")
    assert distributed.launch_env() == (0, 1, 0)


def test_nccl_needs_cuda(clean_env):
    from data_pipelines.errors import UserError
    with pytest.raises(UserError, match="nccl needs CUDA"):
        distributed.init_runtime("cpu", backend="nccl")
