"""Checkpoints written before the convolutions that feed a BatchNorm lost their bias (models/hourglass.py).

Such a bias b changes nothing in training (BatchNorm subtracts the batch mean) and in evaluation it only shifts
the input of the BatchNorm's running mean: BN(conv(x) + b) with running mean m equals BN(conv(x)) with running
mean m - b. So an old state dict loads exactly: each such bias is folded into the running mean of the BatchNorm
after it and dropped. The optimizer state of an old checkpoint lists the dropped biases among its parameters;
`drop_from_optimizer_state` removes their entries so the rest resumes unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import torch

_SEQ_BIAS = re.compile(r"^(?P<seq>.*?)(?P<index>\d+)\.bias$")


def cancelled_bias_keys(state: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(bias key, running-mean key) of every convolution bias under `prefix` that a BatchNorm directly follows in
    a Sequential (`P.N` a 4-D weight, `P.N+1` a running mean): the rule of models.hourglass.drop_cancelled_biases
    read off the keys."""
    pairs = []
    for key in state:
        m = _SEQ_BIAS.match(key)
        if not key.startswith(prefix) or not m:
            continue
        seq, index = m.group("seq"), int(m.group("index"))
        weight, mean = f"{seq}{index}.weight", f"{seq}{index + 1}.running_mean"
        if mean in state and isinstance(state.get(weight), torch.Tensor) and state[weight].dim() == 4:
            pairs.append((key, mean))
    return pairs


def fold_cancelled_biases(state: MutableMapping[str, Any], prefix: str, expected: Mapping[str, Any]) -> list[str]:
    """In place: fold each cancelled bias of `state` (keys under `prefix`) that the module does not have
    (`expected`: the module's own state dict keys, relative) into the following running mean; returns the
    removed keys. The subtraction is done in float64 and stored in the running mean's dtype."""
    removed = []
    for bias_key, mean_key in cancelled_bias_keys(state, prefix):
        if bias_key[len(prefix):] in expected:
            continue  # the module still has this bias: nothing to fold
        bias, mean = state.pop(bias_key), state[mean_key]
        state[mean_key] = (mean.double() - bias.double()).to(mean.dtype)
        removed.append(bias_key)
    return removed


def load_state_dict_pre_hook(module: torch.nn.Module, state: MutableMapping[str, Any], prefix: str,
                             *_args) -> None:
    """For `module.register_load_state_dict_pre_hook`: old state dicts load into the bias-free module."""
    fold_cancelled_biases(state, prefix, module.state_dict().keys())


def drop_from_optimizer_state(optim_state: Mapping[str, Any], old_param_names: Sequence[str],
                              removed: set[str]) -> dict[str, Any]:
    """A torch optimizer state dict ({"state": {index: ...}, "param_groups": [{"params": [index, ...]}]}) of
    parameters `old_param_names` (in the order the optimizer was given them) without the `removed` ones, its
    indices renumbered as the optimizer of the remaining parameters numbers them."""
    if not removed:
        return dict(optim_state)
    groups = optim_state["param_groups"]
    count = sum(len(g["params"]) for g in groups)
    if count != len(old_param_names):
        raise ValueError(f"optimizer state has {count} parameters, the model's old state dict {len(old_param_names)}")
    keep_new: dict[int, int] = {}
    new_groups = []
    for group in groups:
        params = []
        for index in group["params"]:
            if old_param_names[index] not in removed:
                keep_new[index] = len(keep_new)
                params.append(keep_new[index])
        new_groups.append({**group, "params": params})
    new_state = {keep_new[i]: v for i, v in optim_state["state"].items() if i in keep_new}
    return {**optim_state, "state": new_state, "param_groups": new_groups}
