"""The whole training step in one CUDA graph (`train.cuda_graphs=true`): G and D forward and backward, both
optimizers, the mean over ranks and SAT's k_t update, replayed with one launch per step.

At the paper's per-GPU batch (6) the eager step waits on Python: hundreds of small kernel launches per step. A
graph records them once and replays them. What makes the step capturable, and where it is handled:
- inputs: every step's device batch is copied into static buffers (`GraphedStep`); a batch of another shape (an
  epoch's short last batch) runs eagerly;
- optimizers: capturable Adam / RMSprop with the learning rate held in a device tensor that the schedule fills in
  place (harness/optim.py), so a replay reads the current rate;
- k_t: updated in place (harness/objectives.py); BatchNorm buffers are updated in place by BatchNorm itself;
- outputs: the step's values are static tensors overwritten by the next replay: the trainer reads them (logs,
  non-finite check) before the next step;
- no host sync anywhere in the step (the project's rule already), no GradScaler (fp16: its inf check reads back).
Warm-up: WARMUP_STEPS eager steps on a side stream (cuDNN autotuning, compilation, lazy optimizer state), then
the capture, then a replay that performs the step the capture only recorded. Every one of them is a real
training step.

`refusal(cfg, rt)` says why a run cannot use graphs; the trainer then steps eagerly and prints the reason.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from harness.config import Config
from harness.distributed import Runtime
from harness.objectives import NoAdversary
from harness.step import Model, synchronized_step

WARMUP_STEPS = 3
CAPTURABLE_OPTIMIZERS = ("adam", "rmsprop")
BATCH_KEYS = ("image", "heatmaps", "target_weight")


def refusal(cfg: Config, rt: Runtime) -> str | None:
    """Why `train.cuda_graphs=true` falls back to the eager step here, or None when graphs are used."""
    t = cfg.train
    if not t.cuda_graphs:
        return "train.cuda_graphs is off"
    if rt.device.type != "cuda":
        return f"CUDA graphs need a CUDA device (this run is on {rt.device.type})"
    if t.precision == "fp16":
        return "fp16's GradScaler reads its inf check back to the host; use bf16"
    if cfg.distributed.strategy == "deepspeed":
        return "a DeepSpeed engine's step is not capturable here; use distributed.strategy=ddp"
    if rt.world_size > 1:
        return "multi-process capture (NCCL all-reduces inside the graph, DDP's reducer) has not been verified"
    names = {t.generator.name} | ({t.discriminator.name} if cfg.adversarial.objective != "none" else set())
    if names - set(CAPTURABLE_OPTIMIZERS):
        return f"optimizer {sorted(names - set(CAPTURABLE_OPTIMIZERS))} is not built capturable; use adam or rmsprop"
    return None


def graphed_step(cfg: Config, rt: Runtime, g: Model, d: Model | None, objective: NoAdversary
                 ) -> tuple[GraphedStep | None, str | None]:
    """The run's synchronized step as a GraphedStep (with the gradient norms every step: a graph has no per-step
    switch), or (None, why not); (None, None) where train.cuda_graphs is off. The trainer and `bench train` both
    build theirs here."""
    if not cfg.train.cuda_graphs:
        return None, None
    why = refusal(cfg, rt)
    if why is not None:
        return None, why
    precision = cfg.train.precision
    return GraphedStep(lambda micro: synchronized_step(micro, g, d, objective, rt, precision, True), rt.device), None


def _copy_into(static: list[dict], micro: list[dict]) -> None:
    for s, m in zip(static, micro, strict=True):
        for key in BATCH_KEYS:
            s[key].copy_(m[key], non_blocking=True)


def _same_shapes(static: list[dict], micro: list[dict]) -> bool:
    return len(static) == len(micro) and all(
        s[k].shape == m[k].shape and s[k].dtype == m[k].dtype and s[k].stride() == m[k].stride()
        for s, m in zip(static, micro) for k in BATCH_KEYS)


class GraphedStep:
    """`step(micro)`: `fn(micro)` (the trainer's synchronized step) through one CUDA graph once warmed up.

    `capture=False` runs the same static-buffer bookkeeping without a graph (what the CPU tests check: copying
    into static buffers, the in-place state, values that are overwritten each step)."""

    def __init__(self, fn: Callable[[list[dict]], dict[str, torch.Tensor]], device: torch.device,
                 capture: bool = True):
        self.fn, self.device, self.capture = fn, device, capture
        self.steps = 0
        self.static_in: list[dict] | None = None
        self.static_out: dict[str, torch.Tensor] | None = None
        self.graph = None
        self.eager_steps = 0  # steps run eagerly after the capture (shape changes)

    def __call__(self, micro: list[dict]) -> dict[str, torch.Tensor]:
        self.steps += 1
        if self.static_in is not None and not _same_shapes(self.static_in, micro):
            self.eager_steps += 1
            return self._eager(micro)
        if self.steps <= WARMUP_STEPS or not self.capture:
            if self.static_in is None:
                self.static_in = [{k: m[k].clone() for k in BATCH_KEYS} | {k: v for k, v in m.items()
                                  if k not in BATCH_KEYS} for m in micro]
            _copy_into(self.static_in, micro)
            return self._eager(self.static_in)
        if self.graph is None:
            _copy_into(self.static_in, micro)
            torch.cuda.synchronize(self.device)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_out = self.fn(self.static_in)
        _copy_into(self.static_in, micro)
        self.graph.replay()
        return self.static_out

    def _eager(self, micro: list[dict]) -> dict[str, torch.Tensor]:
        if not self.capture or self.device.type != "cuda":
            return self.fn(micro)
        side = torch.cuda.Stream(self.device)  # warm-up off the default stream, as capture requires
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = self.fn(micro)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out
