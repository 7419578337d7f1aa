"""torch.compile for G and D: regional (the repeated blocks, compiled once and reused) or whole-model graphs.

Regional compilation (`train.compile_scope=regional`, the default) compiles, in place, every top-level
`Hourglass` (each stack's; nested levels are inlined into it), every stem and every post-hourglass
`features_out` block, and leaves the glue between them (heads, remaps, the adds between stacks) eager. Blocks of
one class and shape share one compiled graph: torch.compile caches by code object and guards, and with
`inline_inbuilt_nn_modules` (torch's default since 2.5) a module's parameters are graph inputs, not constants,
so the 4 stacks of G and the 1 of D (same width, same 64x64 input) compile one hourglass graph in all, where a
whole-model graph recompiles the same layers once per stack. `whole` is `Module.compile(fullgraph=True)` of G
and of D, as before.

Every region is compiled in place (`Module.compile`), so state-dict keys, DDP, DeepSpeed and checkpoints see the
same modules as in eager mode. On a cluster, point every rank at one shared inductor cache
(`TORCHINDUCTOR_CACHE_DIR` on a shared file system, and `TORCHINDUCTOR_FX_GRAPH_CACHE=1`, on by default), or ship
saved artifacts (`torch.compiler.save_cache_artifacts` / `load_cache_artifacts`): docs/gpu.md.
"""

from __future__ import annotations

from torch import nn

from models.hourglass import StackedHourglass

# A compiled region is a code object compiled for each new set of guards (shape, dtype, train/eval mode). The
# regions of G and D reach about 2 x 2 x 3 such variants (train/eval, G/D stems, automatic dynamic shapes); 8 is
# torch's default limit per code object, beyond which it falls back to eager without failing.
RECOMPILE_LIMIT = 32


def regions(model: nn.Module) -> list[nn.Module]:
    """The modules regional compilation compiles: for each StackedHourglass in `model`, its stem, each stack's
    top-level Hourglass and each stack's features_out block."""
    out: list[nn.Module] = []
    for net in model.modules():
        if isinstance(net, StackedHourglass):
            out += [net.stem, *net.hourglasses, *net.features_out]
    if not out:
        raise ValueError(f"{type(model).__name__} holds no StackedHourglass to compile regionally")
    return out


def compile_model(model: nn.Module, scope: str, backend: str, mode: str | None = None) -> None:
    """Compile `model` in place: `scope` is "regional" or "whole" (see the module's docstring).

    AOTAutograd's donated buffers (a compiled backward frees saved tensors it may overwrite) are turned off: the
    training step backpropagates D's pass on the fake twice (G's adversarial gradient with retain_graph=True, then
    D's loss), which a backward compiled with donated buffers refuses."""
    import torch._dynamo
    import torch._functorch.config

    torch._functorch.config.donated_buffer = False

    if scope == "whole":
        model.compile(fullgraph=True, backend=backend, mode=mode)
        return
    if scope != "regional":
        raise ValueError(f"compile scope must be 'regional' or 'whole', got {scope!r}")
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, RECOMPILE_LIMIT)
    for region in regions(model):
        region.compile(fullgraph=True, backend=backend, mode=mode, dynamic=False)
