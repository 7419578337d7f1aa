"""G prepared for inference (`eval`, `predict`, validation, `bench infer`): one object that turns crops into
last-stack heatmaps, with the flip test, as configured by `infer.*` (harness.config.InferConfig).

    fold_batchnorm  an eval copy of G with every BatchNorm that follows a convolution folded into it
                    (models/fold.py): 125 of the 4-stack G's 185 BatchNorms disappear
    one_pass_flip   the flip test as ONE forward of [images; mirrored images] (eval BatchNorm treats each image
                    alone, so this is the same arithmetic per image as two forwards)
    cast_weights    bf16 / fp16: the copy holds weights in that dtype and takes inputs in it, so no autocast
                    casts every weight on every call (what made bf16 slower than fp32 below batch 64 on an
                    H100: host-bound per-layer casts); false: fp32 weights under autocast, as training runs
    channels_last   (train.channels_last) NHWC copy and inputs
    compile         torch.compile of the copy (train.compile_backend); a second batch size recompiles once with a
                    symbolic batch that later sizes reuse
    cuda_graphs     CUDA only: replay one captured graph per input shape up to cuda_graphs_max_batch images per
                    forward (with compile and inductor: torch.compile's mode="reduce-overhead"; otherwise a
                    torch.cuda.CUDAGraph per shape with static input and output buffers); eager elsewhere,
                    and the reason is in `notes`

With every switch off (`InferConfig(fold_batchnorm=False, one_pass_flip=False, cast_weights=False)`) this runs
G itself exactly as evaluation did before these switches existed: the reference the others are tested and
benchmarked against. Outputs are float32, contiguous, owned by the caller.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.config import InferConfig
from harness.precision import autocast, param_dtype
from models.fold import fold_batchnorm

COMPUTE_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


class _GraphedForward:
    """fn(x) -> tensor replayed from a CUDA graph captured once per (shape, dtype, strides) of x: x is copied
    into the graph's static input, the graph replays, the static output is returned (overwritten by the next
    call: the caller copies it). cuDNN's autotuning and lazy initialisation happen in the warm-up calls on a
    side stream before capture, as the CUDA graph notes ask."""

    def __init__(self, fn, warmup: int = 3):
        self.fn, self.warmup = fn, warmup
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.stride())
        entry = self.graphs.get(key)
        if entry is None:
            static_in = x.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.fn(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.fn(static_in)
            entry = self.graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out


class InferenceModel:
    """Crops [B, 3, H, W] -> G's last-stack heatmaps (float32), and their mirror images' for the flip test."""

    def __init__(self, generator: nn.Module, precision: str = "fp32", options: InferConfig | None = None,
                 channels_last: bool = False, compile_backend: str = "inductor"):
        o = options or InferConfig()
        self.options, self.precision, self.channels_last = o, precision, channels_last
        self.device = next(generator.parameters()).device
        self.cast = o.cast_weights and precision in ("bf16", "fp16")
        self.notes: list[str] = []
        net = generator
        if o.fold_batchnorm:
            net = fold_batchnorm(generator)
        elif self.cast or channels_last or o.compile or o.cuda_graphs:
            import copy

            net = copy.deepcopy(generator).eval().requires_grad_(False)
        elif generator.training:
            raise ValueError("InferenceModel: G is in training mode (BatchNorm would use batch statistics): "
                             "call generator.eval() first")
        if self.cast:
            net = net.to(COMPUTE_DTYPE[precision])
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.input_dtype = COMPUTE_DTYPE[precision] if self.cast else param_dtype(precision)
        cuda = self.device.type == "cuda"
        graphs = o.cuda_graphs and cuda
        if o.cuda_graphs and not cuda:
            self.notes.append(f"infer.cuda_graphs: eager on {self.device.type} (CUDA graphs need a GPU)")
        reduce_overhead = graphs and o.compile and compile_backend == "inductor"
        fn = self._last_stack
        if o.compile:
            # dynamic=None: the first shape compiles static, a second one recompiles with a symbolic batch that
            # every later batch size reuses (a sweep over 4 batch sizes x 2 would otherwise compile 8 times);
            # graphs are still recorded per shape
            fn = torch.compile(fn, backend=compile_backend, dynamic=None,
                               mode="reduce-overhead" if reduce_overhead else None)
        self._fn = fn
        self._reduce_overhead = reduce_overhead
        self._graphed = _GraphedForward(fn) if graphs and not reduce_overhead else None

    def _last_stack(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, "fp32" if self.cast else self.precision):
            return self.net(x)[-1]

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.input_dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        small = x.shape[0] <= self.options.cuda_graphs_max_batch
        if self._graphed is not None and small:
            out = self._graphed(x)
        else:
            if self._reduce_overhead:  # its outputs live in the graph's memory until the next step begins
                torch.compiler.cudagraph_mark_step_begin()
            out = self._fn(x)
        # a copy the caller owns (a graph's output is overwritten by its next replay), float32 NCHW
        return out.to(torch.float32, memory_format=torch.contiguous_format, copy=True)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(heatmaps, heatmaps of the mirrored images or None): float32 [B, J, h, w]; the mirrors' maps are
        as G gives them (not flipped back)."""
        if not flip:
            return self._run(images), None
        if self.options.one_pass_flip:
            out = self._run(torch.cat([images, images.flip(-1)]))
            b = images.shape[0]
            return out[:b], out[b:]
        return self._run(images), self._run(images.flip(-1))


def inference_model(generator: nn.Module, cfg, precision: str | None = None) -> InferenceModel:
    """G's InferenceModel as a run's config asks (`infer.*`, train.channels_last, train.compile_backend), in
    `precision` (default train.precision)."""
    return InferenceModel(generator, precision or cfg.train.precision, cfg.infer, cfg.train.channels_last,
                          cfg.train.compile_backend)
