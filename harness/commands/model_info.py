"""`python -m harness model-info`: parameters and forward GFLOPs of G (or D) for a 256x256 input crop.

G = models.hourglass.StackedHourglass on a 1x3x256x256 crop. With --discriminator:
models.discriminator.PoseDiscriminator on the generator's 1xJx64x64 heatmaps plus (unless
--unconditional) the 1x3x256x256 crop, which D area-resizes to 64x64 itself; --stacks is then D's stacks.

FLOP convention: counted with torch.utils.flop_counter.FlopCounterMode on a batch of 1, eval mode, no
grad: convolutions and matrix multiplies only, 1 multiply-add = 2 FLOPs; bias adds, BatchNorm, ReLU,
pooling, upsampling and residual additions are not counted. The model runs on PyTorch's "meta" device:
FLOPs depend only on shapes, so nothing is allocated or computed.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from data_pipelines.errors import UserError

if TYPE_CHECKING:  # torch is imported lazily: the CLI loads every command module to build its parser
    import torch
    from torch import nn

INPUT_SIZE = 256  # crop side in pixels
HEATMAP_SIZE = INPUT_SIZE // 4  # G's output stride is 4
FLOP_CONVENTION = ("torch.utils.flop_counter.FlopCounterMode, batch 1, eval, no grad: convolutions and "
                   "matmuls only, 1 multiply-add = 2 FLOPs; bias, BatchNorm, ReLU, pooling, upsampling "
                   "and additions not counted")


def register(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="parameters and GFLOPs of the generator or discriminator",
                              description=__doc__.splitlines()[0])
    p.add_argument("--stacks", type=int, required=True, help="hourglass stacks (of D with --discriminator)")
    p.add_argument("--joints", type=int, required=True)
    p.add_argument("--features", type=int, default=256)
    p.add_argument("--residuals", type=int, default=1, help="residual modules per hourglass location")
    p.add_argument("--discriminator", action="store_true", help="measure D instead of G")
    p.add_argument("--unconditional", action="store_true", help="D without the RGB input")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def build(stacks: int, joints: int, features: int = 256, residuals: int = 1, discriminator: bool = False,
          conditional: bool = True) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The model (eval mode) and its example inputs (batch 1), on the current default device."""
    import torch

    from models.discriminator import PoseDiscriminator
    from models.hourglass import StackedHourglass

    if discriminator:
        model = PoseDiscriminator(num_joints=joints, num_stacks=stacks, features=features,
                                  num_residual=residuals, conditional=conditional)
        inputs = (torch.zeros(1, joints, HEATMAP_SIZE, HEATMAP_SIZE),)
        if conditional:
            inputs += (torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE),)
    else:
        model = StackedHourglass(num_stacks=stacks, num_joints=joints, features=features,
                                 num_residual=residuals)
        inputs = (torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE),)
    return model.eval(), inputs


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Forward FLOPs under FlopCounterMode (see FLOP_CONVENTION), eval mode, no grad."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return int(counter.get_total_flops())


def model_info(stacks: int, joints: int, features: int = 256, residuals: int = 1,
               discriminator: bool = False, conditional: bool = True) -> dict:
    """Measure on the meta device; -> dict with params, params_m, gflops, flop_convention, input_shape."""
    import torch

    from models.hourglass import cancelled_bias_count

    with torch.device("meta"):
        model, inputs = build(stacks, joints, features, residuals, discriminator, conditional)
        flops = count_flops(model, *inputs)
    params = count_params(model)
    cancelled = cancelled_bias_count(model)
    names = ("heatmaps", "image") if discriminator else ("image",)
    return {
        "model": ("PoseDiscriminator" + ("" if conditional else " (unconditional)")) if discriminator
        else "StackedHourglass",
        "stacks": stacks, "joints": joints, "features": features, "residuals": residuals,
        "params": params,
        "params_m": params / 1e6,
        # the reference implementation's count: every convolution with a bias, also those BatchNorm cancels
        "params_reference": params + cancelled,
        "params_reference_m": (params + cancelled) / 1e6,
        "flops": flops,
        "gflops": flops / 1e9,
        "flop_convention": FLOP_CONVENTION,
        "input_shape": {n: list(t.shape) for n, t in zip(names, inputs)},
    }


def run(args) -> int:
    if args.unconditional and not args.discriminator:
        raise UserError("--unconditional only applies with --discriminator")
    try:
        info = model_info(args.stacks, args.joints, args.features, args.residuals, args.discriminator,
                          not args.unconditional)
    except ValueError as exc:
        raise UserError(f"cannot build the model: {exc}") from None
    if args.json:
        print(json.dumps(info))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{info['model']}: {args.stacks} stack(s), {args.joints} joints, F={args.features}, "
                        f"{args.residuals} residual(s)")
    for col in ("params", "params (M)", "with cancelled biases (M)", "GFLOPs", "input"):
        table.add_column(col, justify="right")
    shapes = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in info["input_shape"].items())
    table.add_row(f"{info['params']:,}", f"{info['params_m']:.3f}", f"{info['params_reference_m']:.3f}",
                  f"{info['gflops']:.3f}", shapes)
    console = Console()
    console.print(table)
    console.print(f"FLOPs: {FLOP_CONVENTION}")
    return 0
