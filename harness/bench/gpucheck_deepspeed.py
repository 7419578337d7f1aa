"""The DeepSpeed checks of scripts/gpu_check.sh (its `deepspeed` group), one PASS / FAIL / SKIP line each:

    python -m harness.bench.gpucheck_deepspeed [--dry]

One rank (a one-process group: NCCL on the GPU, gloo with --dry on the CPU). For ZeRO-0 and ZeRO-1 with bf16
and fp16 (fp16 + ZeRO-1 is refused by design: harness.strategies.deepspeed_engine.FP16_ZERO_REFUSAL), the
SAT step through one DeepSpeed engine per model against the plain step (torch optimizers, one GradScaler per
model for fp16) from the same weights on the same batch, STEPS steps: each step's losses and G's total update
must agree within the precision's rounding (TOL below). `--dry`: bf16 only (fp16 needs a GPU), tiny sizes.
Without DeepSpeed: one SKIP line.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import traceback

import torch

from harness.bench.gpucheck import FAILED, _setup, line, tiny_config
from harness.bench.suite_kernels import rel_error
from harness.distributed import Runtime
from harness.objectives import build_objective
from harness.step import train_step

STEPS = 3
# Largest relative difference allowed between the DeepSpeed and the plain step: a few units of the
# precision's rounding (bf16: 2^-8, fp16: 2^-11, on values of order 1), for each step's losses and for G's
# update over STEPS steps (its norm; the optimizers divide by running gradient magnitudes, so rounding
# differences of the gradients reach the update at the same relative size).
TOL = {"bf16": 8 * 2.0 ** -8, "fp16": 8 * 2.0 ** -11}


def run(cfg, rt: Runtime) -> tuple[list[dict[str, float]], list[torch.Tensor], list[torch.Tensor], str]:
    """STEPS SAT steps from the seeded initial weights on one batch: per-step losses, G's weights before and
    after, and the class of G's training handle (DeepSpeedModel under the deepspeed strategy)."""
    _, g, _, hg, hd, batch = _setup(cfg, rt)
    before = [p.detach().clone() for p in g.parameters()]
    obj = build_objective(cfg, (8, 3), rt.device)
    losses = [{k: float(v) for k, v in train_step([batch], hg, hd, obj, cfg.train.precision).items()
               if k.startswith("loss")} for _ in range(STEPS)]
    return losses, before, [p.detach().clone() for p in g.parameters()], type(hg).__name__


def check(dry: bool, rt: Runtime) -> None:
    from data_pipelines.errors import UserError
    from harness.strategies.deepspeed_engine import FP16_ZERO_REFUSAL, deepspeed_config, ensure_distributed

    ensure_distributed(rt.device)
    for stage in (0, 1):
        for precision in ("bf16", "fp16"):
            name = f"deepspeed zero{stage} {precision}"
            if precision == "fp16" and rt.device.type != "cuda":
                line("SKIP", name, "fp16 (GradScaler, DeepSpeed's loss scaler) needs a GPU")
                continue
            if stage == 1 and precision == "fp16":
                try:
                    deepspeed_config(micro_batch=1, precision="fp16", zero_stage=1)
                    line("FAIL", name, "not refused: the config builder accepted fp16 with ZeRO-1")
                except UserError as err:
                    line("PASS" if str(err) == FP16_ZERO_REFUSAL else "FAIL", name,
                         f"refused as designed: {str(err)[:120]}...")
                continue
            common = ["adversarial.objective=sat", f"train.precision={precision}"]
            plain = run(tiny_config(dry, *common), rt)
            ds = run(tiny_config(dry, *common, "distributed.strategy=deepspeed", f"distributed.zero_stage={stage}"),
                     rt)
            worst_loss = max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-3) for a, b in zip(ds[0], plain[0]) for k in b)
            same_start = all(torch.equal(a, b) for a, b in zip(ds[1], plain[1]))
            upd = rel_error([a - b for a, b in zip(ds[2], ds[1])], [a - b for a, b in zip(plain[2], plain[1])])
            moved = any(not torch.equal(a, b) for a, b in zip(ds[2], ds[1]))
            tol = TOL[precision]
            engines = ds[3] == "DeepSpeedModel" != plain[3]
            ok = same_start and moved and engines and worst_loss <= tol and upd <= tol
            line("PASS" if ok else "FAIL", name,
                 f"{STEPS} SAT steps on {rt.device} vs the plain step: losses within {worst_loss:.1e} (relative), "
                 f"G's update within {upd:.1e} (tolerance {tol:.1e}); loss_g "
                 f"{[round(s['loss_g'], 5) for s in ds[0]]} vs {[round(s['loss_g'], 5) for s in plain[0]]}"
                 + ("" if same_start else "; initial weights differ") + ("" if moved else "; G did not move")
                 + ("" if engines else f"; handles {ds[3]} vs {plain[3]}: not a DeepSpeed engine against a plain step"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", help="CPU (gloo), bf16 only, tiny sizes (what CI runs)")
    args = p.parse_args(argv)
    if importlib.util.find_spec("deepspeed") is None:
        line("SKIP", "deepspeed", "DeepSpeed is not installed (GPU image: the offline bundle's deepspeed group, "
                                  "docs/offline-bundle.md; here: pip install '.[deepspeed]')")
        return 0
    if not args.dry and not torch.cuda.is_available():
        line("FAIL", "deepspeed", "no CUDA device visible (use --dry for the CPU rehearsal)")
        return 1
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if args.dry else "cuda")
    device = torch.device("cpu") if args.dry else torch.device("cuda", 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        check(args.dry, Runtime(device=device))
    except Exception as exc:  # a crash is a failed check, with its first line
        line("FAIL", "deepspeed", f"{type(exc).__name__}: {exc}".splitlines()[0][:400])
        traceback.print_exc(file=sys.stderr)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
