"""Named variants: config overrides compared in one run (`--variants reference fast`).

A variant is a name from VARIANTS or an ad-hoc `name:key=value,key=value`. Its overrides are applied on top
of the resolved config with harness.config's own parser, so a variant is exactly what `train` would run with
the same `key=value` arguments. A key this config does not have (a fast-path option not added yet) is left
out and listed as unavailable; a variant whose switched-on keys are all unavailable is reported and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_pipelines.errors import UserError
from harness.config import Config, load_config, parse_override

# The fast path of issue 10 (train.compile / channels_last / fused_optimizer) against fp32 eager NCHW unfused.
FAST_KEYS = ("train.compile", "train.channels_last", "train.fused_optimizer")
# may be missing from an older config: "unavailable"
OPTIONAL_KEYS = (*FAST_KEYS, "train.deterministic", "train.cuda_graphs")
# Inference (issue 22 item 5; `bench infer`, eval, predict): the path before it had switches, and each switch.
INFER_OFF = ("infer.fold_batchnorm=false", "infer.one_pass_flip=false", "infer.cast_weights=false",
             "infer.compile=false", "infer.cuda_graphs=false")
INFER_EAGER = ("infer.fold_batchnorm=true", "infer.one_pass_flip=true", "infer.cast_weights=true",
               "infer.compile=false", "infer.cuda_graphs=false")  # folded, one-pass flip, weights in bf16/fp16
VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "reference": ("train.precision=fp32", *(f"{k}=false" for k in FAST_KEYS), *INFER_OFF),
    "fast": ("train.precision=bf16", *(f"{k}=true" for k in FAST_KEYS), *INFER_EAGER[:3], "infer.compile=true",
             "infer.cuda_graphs=true"),
    "fast_graphs": ("train.precision=bf16", *(f"{k}=true" for k in FAST_KEYS), *INFER_EAGER[:3], "infer.compile=true",
                    "infer.cuda_graphs=true", "train.cuda_graphs=true"),  # fast, the training step as one CUDA graph
    "fast_eager": ("train.precision=bf16", "train.compile=false", "train.channels_last=true",
                   "train.fused_optimizer=true", *INFER_EAGER),  # fast without inductor's compile time
    "unfolded": INFER_OFF,  # inference as it ran before the switches (eager, autocast, two flip passes)
    "folded": ("infer.fold_batchnorm=true", *INFER_OFF[1:]),
    "folded_1pass": INFER_EAGER,  # eval's default
    "infer_graphs": (*INFER_EAGER[:4], "infer.cuda_graphs=true"),  # eager, captured per shape
    "infer_compiled": (*INFER_EAGER[:3], "infer.compile=true", "infer.cuda_graphs=false"),
    "infer_compiled_graphs": (*INFER_EAGER[:3], "infer.compile=true", "infer.cuda_graphs=true"),
    "fp32": ("train.precision=fp32",),
    "bf16": ("train.precision=bf16",),
    "fp16": ("train.precision=fp16",),
    "compile": ("train.compile=true",),
    "channels_last": ("train.channels_last=true",),
    "fused_optimizer": ("train.fused_optimizer=true",),
    "telemetry_off": ("telemetry.enabled=false",),
    "telemetry_on": ("telemetry.enabled=true",),
    "sync_batchnorm": ("distributed.sync_batchnorm=true",),
    "sat": ("adversarial.objective=sat",),  # bench accuracy's default pair: SAT against the plain hourglass
    "none": ("adversarial.objective=none",),
}


@dataclass
class Variant:
    name: str
    overrides: list[str]
    cfg: Config | None = None
    unavailable: list[str] = field(default_factory=list)

    @property
    def note(self) -> str:
        return f"without {', '.join(self.unavailable)} (not in this config)" if self.unavailable else ""


def _split(spec: str) -> tuple[str, tuple[str, ...]]:
    if ":" in spec:
        name, items = spec.split(":", 1)
        return name, tuple(i for i in items.split(",") if i)
    if spec not in VARIANTS:
        raise UserError(f"unknown variant {spec!r}; named variants: {', '.join(VARIANTS)} "
                        "(or name:key=value,key=value)")
    return spec, VARIANTS[spec]


def resolve(specs: list[str], preset: str | None, config_file: str | None, overrides: list[str]) -> list[Variant]:
    """The variants' configs: preset/file, then the command line's overrides, then the variant's. Only the
    OPTIONAL_KEYS may be missing from the config; any other unknown key is an error."""
    out = []
    for spec in specs or ["default"]:
        name, items = _split(spec)
        v = Variant(name, [])
        for item in items:
            key = item.split("=", 1)[0].strip()
            try:
                parse_override(item)
                v.overrides.append(item)
            except UserError:
                if key not in OPTIONAL_KEYS:
                    raise
                if not item.endswith("=false"):  # off is the behaviour without the key
                    v.unavailable.append(key)
        if v.overrides or not v.unavailable:
            v.cfg = load_config(preset, config_file, [*overrides, *v.overrides])
        out.append(v)
    if len({v.name for v in out}) != len(out):
        raise UserError(f"variant names repeat: {[v.name for v in out]}")
    return out
