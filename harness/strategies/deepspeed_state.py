"""DeepSpeed optimizer state in torch's format: export and import for stage 0 and for ZeRO-1's sharded flat
partitions, so a checkpoint is interchangeable with a plain/DDP one (harness/strategies/deepspeed_engine.py
builds the engines; docs/deepspeed.md has the evidence). Under ZeRO-1 the export is collective (all_reduce per
tensor) and the import writes each rank's own shard: every rank must call both."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import version
from typing import Any

import torch

from data_pipelines.errors import UserError
from harness.strategies.deepspeed_engine import EngineHandle

# --------------------------------------------------------------------------------------- state dicts

def _cpu_copy(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cpu_copy(v) for v in value)
    return value


def _group_hyper(group: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _cpu_copy(v) for k, v in group.items() if k != "params"}


def _zero_partitions(handle: EngineHandle):
    """(flat fp32 partition, the group's parameters as ZeRO holds them) for each group, in order."""
    zopt = handle.engine.optimizer
    flats = zopt.single_partition_of_fp32_groups
    if len(flats) != len(handle.param_groups):
        raise RuntimeError(f"ZeRO has {len(flats)} parameter groups, the client optimizer had "
                           f"{len(handle.param_groups)}")
    for i, (flat, lp_params) in enumerate(zip(flats, zopt.bit16_groups)):
        if (handle.base_optimizer.param_groups[i]["params"][0] is not flat
                or [id(p) for p in lp_params] != [id(p) for p in handle.param_groups[i]]):
            raise RuntimeError(f"ZeRO group {i} does not match the client optimizer's group (DeepSpeed "
                               f"{version('deepspeed')} changed its layout)")
    return list(zip(flats, zopt.bit16_groups))


def export_optimizer_state(handle: EngineHandle) -> dict[str, Any]:
    """The optimizer state in torch's format, full (not sharded), tensors copied to CPU.

    Keys of "state" count the client optimizer's parameters group by group, exactly as
    `torch.optim.Optimizer.state_dict()` does, so a DDP run with the same optimizer can load it.
    ZeRO-1: collective (every rank calls it; each gets the full state). ZeRO keeps one scalar state
    (e.g. Adam's step) per group; it is repeated for every parameter of the group.
    """
    if handle.zero_stage == 0:
        return _cpu_copy(handle.base_optimizer.state_dict())
    from deepspeed.utils import safe_get_full_optimizer_state

    base = handle.base_optimizer
    state: dict[int, dict[str, Any]] = {}
    groups = []
    index = 0
    for (flat, _), params, group in zip(_zero_partitions(handle), handle.param_groups, base.param_groups):
        flat_state = base.state.get(flat, {})
        tensor_keys = sorted(k for k, v in flat_state.items() if torch.is_tensor(v) and v.shape == flat.shape)
        scalars = {k: v for k, v in flat_state.items() if k not in tensor_keys}
        ids = []
        for p in params:
            ids.append(index)
            if flat_state:
                entry = _cpu_copy(scalars)
                for key in tensor_keys:  # all_reduce of the fragments: same call order on every rank
                    entry[key] = safe_get_full_optimizer_state(p, key).detach().to("cpu", copy=True)
                state[index] = entry
            index += 1
        groups.append({**_group_hyper(group), "params": ids})
    return {"state": state, "param_groups": groups}


def sync_master_weights(handle: EngineHandle) -> None:
    """ZeRO-1 keeps its own fp32 copy of this rank's partition: refresh it from the module's parameters
    (after loading a model state dict into the module)."""
    if handle.zero_stage == 0:
        return
    from deepspeed.utils import safe_set_full_fp32_param

    for params in handle.param_groups:
        for p in params:
            safe_set_full_fp32_param(p, p.detach().float())


def import_optimizer_state(handle: EngineHandle, state_dict: Mapping[str, Any]) -> None:
    """Load a torch-format optimizer state dict (from `export_optimizer_state`, a DDP run or a plain
    torch optimizer over the same parameter groups). ZeRO-1: every rank calls it with the full dict."""
    saved_groups = state_dict.get("param_groups")
    if not isinstance(saved_groups, list) or "state" not in state_dict:
        raise UserError("optimizer state dict needs 'state' and 'param_groups'")
    sizes = [len(g) for g in handle.param_groups]
    saved_sizes = [len(g.get("params", ())) for g in saved_groups]
    if sizes != saved_sizes:
        raise UserError(f"optimizer state has groups of {saved_sizes} parameters, this model's optimizer "
                        f"has {sizes}")
    if handle.zero_stage == 0:
        handle.base_optimizer.load_state_dict(dict(state_dict))
        return
    from deepspeed.utils import lazy_init_hp_params_optimizer_state, safe_set_full_optimizer_state

    zopt, base = handle.engine.optimizer, handle.base_optimizer
    saved_state = state_dict["state"]
    writes = []
    for gi, ((flat, lp_params), params, saved) in enumerate(
            zip(_zero_partitions(handle), handle.param_groups, saved_groups)):
        entries = [saved_state.get(i) for i in saved["params"]]
        base.param_groups[gi].update({k: v for k, v in saved.items() if k != "params"})
        if all(e is None for e in entries):
            base.state.pop(flat, None)  # a fresh optimizer: DeepSpeed relinks after its first step
            zopt._hp_optimizer_states_linked = False
            continue
        if any(e is None for e in entries):
            raise UserError(f"optimizer group {gi}: some parameters have state and some do not; ZeRO keeps "
                            "one state for the whole group (load with zero_stage 0)")
        keys = set(entries[0])
        tensor_keys = {k for k in keys if torch.is_tensor(entries[0][k]) and
                       entries[0][k].shape == params[0].shape and entries[0][k].dim() > 0}
        for i, (p, e) in enumerate(zip(params, entries)):
            if set(e) != keys:
                raise UserError(f"optimizer group {gi}: parameter {i} has state keys {sorted(e)}, "
                                f"expected {sorted(keys)}")
            for k in keys - tensor_keys:
                if not torch.equal(torch.as_tensor(e[k]), torch.as_tensor(entries[0][k])):
                    raise UserError(f"optimizer group {gi}: '{k}' differs between parameters; ZeRO keeps one "
                                    "per group (load with zero_stage 0)")
            for k in tensor_keys:
                if tuple(e[k].shape) != tuple(p.shape):
                    raise UserError(f"optimizer group {gi}, parameter {i}: '{k}' has shape "
                                    f"{tuple(e[k].shape)}, the parameter {tuple(p.shape)}")
                writes.append((p, k, e[k]))
        flat_state = base.state[flat]
        for k in tensor_keys:
            if k not in flat_state or flat_state[k].shape != flat.shape:
                flat_state[k] = torch.zeros_like(flat)
        for k in keys - tensor_keys:
            value = entries[0][k]
            if torch.is_tensor(value):
                on_device = base.param_groups[gi].get("capturable") or base.param_groups[gi].get("fused")
                value = value.detach().to(flat.device if on_device else "cpu", copy=True)
            flat_state[k] = value
        lazy_init_hp_params_optimizer_state(lp_params, flat, base.state)
    if all(flat in base.state for flat, _ in _zero_partitions(handle)):
        zopt._hp_optimizer_states_linked = True
    for p, key, value in writes:
        safe_set_full_optimizer_state(p, value.to(p.device, torch.float32), key)


def export_state(handle: EngineHandle) -> dict[str, Any]:
    """{"model", "optimizer", "lr_scheduler", "grad_scaler"}: plain state dicts (tensors on CPU), loadable
    with torch.load(weights_only=True). ZeRO-1: collective; every rank gets the full state."""
    scheduler, scaler = handle.engine.lr_scheduler, handle.grad_scaler
    return {"model": _cpu_copy(handle.module.state_dict()),
            "optimizer": export_optimizer_state(handle),
            "lr_scheduler": scheduler.state_dict() if scheduler is not None else None,
            "grad_scaler": scaler.state_dict() if scaler is not None else None}


def import_state(handle: EngineHandle, state: Mapping[str, Any]) -> None:
    """Inverse of `export_state` (every rank calls it with the same full state)."""
    handle.module.load_state_dict(state["model"])
    sync_master_weights(handle)
    import_optimizer_state(handle, state["optimizer"])
    if state.get("lr_scheduler") is not None:
        if handle.engine.lr_scheduler is None:
            raise UserError("state has an lr_scheduler, this engine has none")
        handle.engine.lr_scheduler.load_state_dict(state["lr_scheduler"])
    scaler = handle.grad_scaler
    if scaler is not None and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])


