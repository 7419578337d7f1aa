"""The memory side of a roofline: bytes a step moves (counted on the real step, like its FLOPs) and where its
time goes by kind of op (torch.profiler), for `bench train` and `bench infer`.

Bytes follow one stated model, TRAFFIC_MODEL: what eager kernels would move if each aten op read its inputs and
wrote its outputs exactly once (model (a) of ../shared/notes/gpu-roofline.md). It is counted by a
TorchDispatchMode on the device the run uses, on fresh eager copies of the variant's models (never compiled:
inductor's fused kernels are not aten ops), at batch 2 and 4; every op's tensors are either per image or fixed
(weights, optimizer state, BatchNorm statistics), so bytes(b) = fixed + b x per_image exactly, and a run at
batch B moves per_image + fixed / B per image.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

TRAFFIC_MODEL = ("eager-kernel traffic: each aten op, as dispatched after autocast, reads each distinct tensor input "
                 "once and writes each output once (an in-place op reads and writes its tensor); views, empty "
                 "allocations and metadata ops move nothing; no cache reuse and no re-reads inside a kernel "
                 "(cuDNN's BatchNorm and convolution backward re-reads are not counted)")
KINDS = ("convolution", "batchnorm", "elementwise", "reduction", "copy/cast", "optimizer", "other")
_NO_TRAFFIC = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_local_scalar_dense",
               "lift_fresh", "set_", "resize_", "detach", "alias", "_unsafe_view", "is_same_size", "record_stream",
               "_has_compatible_shallow_copy_type", "size", "stride", "numel", "sym_size", "sym_stride"}
_COPY = {"_to_copy", "copy", "clone", "cat", "stack", "flip", "contiguous", "index_select", "constant_pad_nd",
         "_copy_from", "_copy_from_and_resize", "to", "index", "gather", "repeat", "roll"}
_REDUCTION = {"sum", "mean", "amax", "amin", "max", "min", "norm", "linalg_vector_norm", "var", "std", "var_mean",
              "prod", "argmax", "argmin", "any", "all", "_foreach_norm", "logsumexp", "cumsum"}
_ELEMENTWISE = {"add", "sub", "rsub", "mul", "div", "relu", "threshold", "threshold_backward", "clamp", "clamp_min",
                "clamp_max", "where", "pow", "sqrt", "rsqrt", "exp", "log", "sigmoid", "sigmoid_backward", "neg",
                "abs", "maximum", "minimum", "lerp", "addcmul", "addcdiv", "fill", "zero", "zeros_like",
                "ones_like", "full_like", "sign", "square", "reciprocal", "eq", "ne", "lt", "gt", "le", "ge",
                "logical_and", "logical_or", "logical_not", "masked_fill", "mse_loss", "mse_loss_backward",
                "binary_cross_entropy_with_logits", "hardtanh", "leaky_relu", "isfinite", "isnan", "nan_to_num",
                "exp2", "expm1", "log1p", "tanh", "tanh_backward", "copysign", "floor", "ceil", "round", "trunc",
                "bitwise_and", "bitwise_or", "bitwise_not", "_softmax", "ones", "zeros", "full", "scalar_tensor"}


def op_kind(name: str) -> str:
    """The kind of an aten op ('aten::add_', 'add_.Tensor' or 'add_'): one of KINDS."""
    name = name.removeprefix("aten::").split(".", 1)[0]
    if name.startswith(("_foreach_", "_fused_")) and name != "_foreach_norm":
        return "optimizer"
    if "conv" in name:
        return "convolution"
    if "batch_norm" in name:
        return "batchnorm"
    base = name.rstrip("_") if not name.startswith("_") else name
    if name in _COPY or base in _COPY:
        return "copy/cast"
    if name in _REDUCTION or base in _REDUCTION:
        return "reduction"
    if name in _ELEMENTWISE or base in _ELEMENTWISE:
        return "elementwise"
    return "other"


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class ByteCounter(TorchDispatchMode):
    """Sums, per op kind, the bytes of every op's distinct tensor inputs and of its outputs (TRAFFIC_MODEL)."""

    def __init__(self):
        super().__init__()
        self.by_kind: dict[str, int] = defaultdict(int)
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if func.is_view or name in _NO_TRAFFIC:
            return out
        seen, moved = set(), 0
        for t in tree_flatten((args, kwargs or {}))[0]:
            if isinstance(t, torch.Tensor) and id(t) not in seen:
                seen.add(id(t))
                moved += _nbytes(t)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                moved += _nbytes(t)
        self.by_kind[op_kind(name)] += moved
        self.ops += 1
        return out

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())


def count_bytes(fn: Callable[[], object]) -> ByteCounter:
    with ByteCounter() as counter:
        fn()
    return counter


def count_traffic(prepare: Callable[[int], Callable[[], object]]) -> dict:
    """The traffic of the call `prepare(b)` returns (one step at batch b on fresh state; what prepare itself
    does, such as building models, is not counted), split by kind into per-image and fixed bytes from b = 2
    and 4 (not 1: training BatchNorm refuses one value per channel at a small model's 1x1 level):
    {"per_image": {kind: bytes}, "fixed": {kind: bytes}, "ops"}."""
    step2 = prepare(2)
    two = count_bytes(step2)
    step4 = prepare(4)
    four = count_bytes(step4)
    per = {k: (four.by_kind.get(k, 0) - two.by_kind.get(k, 0)) / 2 for k in KINDS}
    return {"per_image": per, "fixed": {k: two.by_kind.get(k, 0) - 2 * per[k] for k in KINDS}, "ops": two.ops}


def at_batch(traffic: dict, batch: int) -> dict:
    """count_traffic's result per image at `batch`: {"per_image", "fixed", "at_batch", "by_kind", "ops"}."""
    per, fixed = traffic["per_image"], traffic["fixed"]
    return {"per_image": sum(per.values()), "fixed": sum(fixed.values()),
            "at_batch": sum(per.values()) + sum(fixed.values()) / batch,
            "by_kind": {k: per[k] + fixed[k] / batch for k in KINDS}, "ops": traffic["ops"]}


def bytes_per_image(prepare: Callable[[int], Callable[[], object]], batch: int) -> dict:
    """count_traffic(prepare) per image at `batch` (at_batch)."""
    return at_batch(count_traffic(prepare), batch)


def roofline(traffic: dict, images_per_s: float, bw: dict) -> dict:
    """A row's memory roofline fields: bytes per image (TRAFFIC_MODEL), the rate they imply at the measured
    img/s (per device), and its share of the device's bandwidth (None where unknown)."""
    tbs = traffic["at_batch"] * images_per_s / 1e12
    return {"bytes_per_image": traffic["at_batch"], "bytes_per_image_marginal": traffic["per_image"],
            "bytes_fixed_per_call": traffic["fixed"], "bytes_by_kind": traffic["by_kind"],
            "achieved_tbs_per_device": tbs, "bandwidth": bw,
            "bandwidth_share": tbs / bw["tbs"] if bw.get("tbs") else None,
            "bandwidth_share_of_copy": tbs / bw["copy_tbs"] if bw.get("copy_tbs") else None,
            "images_per_s_at_bandwidth": bw["tbs"] * 1e12 / traffic["at_batch"] if bw.get("tbs") else None}


def profile_kinds(fn: Callable[[], object], calls: int, device: torch.device) -> dict:
    """Time by op kind over `calls` calls of fn under torch.profiler (untimed: run it outside the measured
    repeats): on CUDA each aten op's self device time (the kernels it launched), on CPU its self CPU time; on
    CUDA the device time no aten op launched (compiled kernels, graph replays) is 'other'.
    {"clock", "ms_per_call", "by_kind": {kind: {"ms", "share"}}, "top_ops": [[name, ms, kind], ...]}"""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from harness.bench.timing import sync

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        sync(device)
    events = prof.key_averages()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    ops = [(e.key, getattr(e, attr) / 1e3 / calls) for e in events
           if e.key.startswith("aten::") and e.device_type == DeviceType.CPU and getattr(e, attr) > 0]
    by_kind = dict.fromkeys(KINDS, 0.0)
    for name, ms in ops:
        by_kind[op_kind(name)] += ms
    if cuda:  # kernels on the device: anything not launched by an aten op counts as other
        total = sum(e.self_device_time_total for e in events
                    if e.device_type == DeviceType.CUDA and not e.is_user_annotation) / 1e3 / calls
        by_kind["other"] += max(total - sum(by_kind.values()), 0.0)
    total = sum(by_kind.values()) or 1.0
    top = sorted(ops, key=lambda x: -x[1])[:8]
    return {"clock": "device (self time of each aten op's kernels)" if cuda else "CPU (self time of each aten op)",
            "ms_per_call": sum(by_kind.values()),
            "by_kind": {k: {"ms": v, "share": v / total} for k, v in by_kind.items()},
            "top_ops": [[n.removeprefix("aten::"), ms, op_kind(n)] for n, ms in top]}
