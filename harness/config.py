"""Typed, validated run configuration: defaults < preset or YAML file < dotted command-line overrides.

Every key is checked: an unknown key or a bad value is one `UserError` naming the key, e.g.
`config: train.batch_size: Input should be greater than 0 (got -3)`.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from data_pipelines.errors import UserError

# G's output stride: its stem (models.hourglass.StackedHourglass, stem_stride=4) maps an S x S crop to S/4 x S/4
# heatmaps. Kept here as a number so that reading a config does not import torch; tests/test_config.py checks
# it against the model.
G_STRIDE = 4


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    name: Literal["synthetic", "lsp", "mpii", "coco"] = "synthetic"
    root: Path | None = Field(None, description="dataset folder (not used by synthetic)")
    train_split: str | None = Field(None, description="default: the dataset's standard training split")
    val_split: str | None = Field(None, description="default: the dataset's standard held-out split")
    annotation_file: Path | None = Field(None, description="mpii/coco: annotation file other than the default")
    validation_gt: Path | None = Field(
        None, description="mpii: official validation GT .mat; held-out records follow its order, with head boxes")
    input_size: int = Field(256, ge=32, description="side of the square input crop, pixels")
    heatmap_size: int = Field(64, ge=8, description="side of the square heatmaps")
    sigma: float = Field(1.0, gt=0, description="Gaussian sigma of the targets, heatmap pixels")
    rotation: float = Field(30.0, ge=0, le=180, description="max rotation, degrees (uniform +-)")
    scale_jitter: float = Field(0.25, ge=0, lt=1, description="scale drawn from 1 +- this")
    flip: bool = True
    color_jitter: float = Field(0.2, ge=0, le=1)
    num_workers: int = Field(2, ge=0)
    on_bad_sample: Literal["skip", "raise"] = "skip"
    backend: Literal["torch", "dali", "auto"] = Field(
        "torch", description="data loader: torch (DataLoader workers), dali (NVIDIA DALI: GPU decode and warp on "
                             "CUDA, DALI's CPU mode otherwise), auto (dali when installed and the device is CUDA)")
    max_train_samples: int | None = Field(None, ge=1, description="use only the first N training records")
    max_val_samples: int | None = Field(None, ge=1, description="score only the first N held-out records")
    synthetic_train_size: int = Field(4000, ge=1)
    synthetic_val_size: int = Field(256, ge=1)
    synthetic_seed: int = 0

    @model_validator(mode="after")
    def _root(self):
        if self.name != "synthetic" and self.root is None:
            raise ValueError(f"data.root is required for data.name={self.name}")
        return self


class ModelConfig(_Strict):
    stacks: int = Field(4, ge=1)
    features: int = Field(256, ge=8, multiple_of=2)
    residuals: int = Field(1, ge=1, description="residual modules per hourglass location")
    depth: int = Field(4, ge=1, le=6, description="max-pool levels of each hourglass, G's and D's (D is an "
                                                  "hourglass of G's architecture); the heatmap side must be a "
                                                  "multiple of 2^depth")


class DiscriminatorConfig(_Strict):
    stacks: int = Field(1, ge=1)
    features: int = Field(256, ge=8, multiple_of=2)
    residuals: int = Field(1, ge=1)
    conditional: bool = Field(True, description="D also sees the RGB image (3 + J input channels)")


class SATConfig(_Strict):
    """BEGAN-style objective of the SAT paper; defaults from the authors' code."""
    gamma: float = Field(0.5, gt=0, description="target ratio L_fake / L_real; above 1 (as the sat-gamma sweep "
                         "tries) k_t grows while L_fake < gamma L_real")
    lambda_k: float = Field(1e-3, ge=0)
    lambda_g: float = Field(1e-4, ge=0)
    k0: float = Field(0.0, ge=0, le=1)


class CGANConfig(_Strict):
    """cGAN objective with per-joint d_fake targets (the thesis variant)."""
    alpha: float = Field(1 / 200, ge=0)
    delta: float = Field(0.003, gt=0)
    distance: Literal["heatmap", "torso"] = "heatmap"


class AdversarialConfig(_Strict):
    objective: Literal["none", "sat", "cgan"] = "sat"
    sat: SATConfig = SATConfig()
    cgan: CGANConfig = CGANConfig()


class OptimizerConfig(_Strict):
    name: Literal["rmsprop", "adam", "sgd"] = "rmsprop"
    lr: float = Field(2.5e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    alpha: float = Field(0.99, gt=0, lt=1, description="RMSprop smoothing constant")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum")
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    milestones: list[int] = Field(default_factory=list, description="lr x gamma at each milestone")
    milestone_unit: Literal["step", "epoch"] = "step"
    gamma: float = Field(0.1, gt=0)


class TrainConfig(_Strict):
    batch_size: int = Field(6, ge=1, description="global batch (all ranks, one optimizer step)")
    max_steps: int = Field(1000, ge=1, description="optimizer steps")
    max_minutes: float | None = Field(
        None, gt=0, description="also stop once this run's training time (steps and data waits; validation and "
                                "checkpoints excluded) reaches this many minutes; max_steps still caps it")
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16", "fp64"] = Field(
        "fp32", description="bf16/fp16: autocast mixed precision (fp16 GPU only); fp64: for numerical checks")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    val_every: int | None = Field(None, ge=1, description="validate every N steps (default: every epoch)")
    log_every: int = Field(20, ge=1)
    checkpoint_every: int | None = Field(None, ge=1, description="default: at every validation")
    keep_last: int = Field(3, ge=1)
    flip_test: bool = True
    threads: int | None = Field(None, ge=1, description="torch CPU threads per process")
    compile: bool = Field(False, description="torch.compile G and D (compile time is excluded from throughput)")
    compile_scope: Literal["regional", "whole"] = Field(
        "regional", description="regional: the hourglass, stem and features blocks, each compiled once and reused "
                                "across stacks and between G and D (harness/compiling.py); whole: one graph per model")
    compile_backend: Literal["inductor", "aot_eager"] = Field(
        "inductor", description="torch.compile backend: inductor (generated kernels) or aot_eager (graph capture "
                                "and AOTAutograd without code generation: what the CPU tests use)")
    cuda_graphs: bool = Field(False, description="the whole step (G, D, both optimizers, k_t) in one CUDA graph, "
                                                 "replayed each step (harness/graphed_step.py); where it cannot be "
                                                 "used the run steps eagerly and says why")
    channels_last: bool = Field(False, description="NHWC memory format for G, D and the images (GPU tensor cores)")
    fused_optimizer: bool = Field(False, description="fused (CUDA) or multi-tensor foreach (CPU) optimizer kernels")
    deterministic: bool = Field(False, description="CUDA: deterministic algorithms, no TF32, no cuDNN autotuning "
                                                   "(bit-exact resume and fp32 == CPU claims hold only with it)")
    generator: OptimizerConfig = OptimizerConfig()
    discriminator: OptimizerConfig = OptimizerConfig(name="adam", lr=8e-5)


class DistributedConfig(_Strict):
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    sync_batchnorm: bool = False
    zero_stage: int = Field(0, ge=0, le=1, description="DeepSpeed ZeRO stage (2+ refused for a G/D pair)")


class TelemetryConfig(_Strict):
    """Prometheus metrics per rank (harness/sinks/prometheus.py, docs/telemetry.md); TensorBoard event files."""
    tensorboard: bool = Field(False, description="rank 0 also writes TensorBoard scalars to <run_dir>/tensorboard/ "
                              "(needs the tensorboard package: the `tensorboard` extra)")
    enabled: bool = False
    port: int = Field(0, ge=0, le=65535, description="base port, + local rank per process; 0: a free port each")
    bind: str = Field("127.0.0.1", min_length=1, description="listen address; beyond loopback other users can "
                      "read the metrics (a warning)")
    linger_s: float = Field(30.0, ge=0, description="after the run, serve until one more scrape (at most this "
                            "long; not at all if nothing ever scraped)")
    sd_dir: Path | None = Field(None, description="also write the file-SD JSON here (a cluster Prometheus globs "
                                "<sd_dir>/*.json); removed when the run ends")


class InferConfig(_Strict):
    """How G runs for `eval`, `predict`, validation and `bench infer` (harness/inference.py)."""
    fold_batchnorm: bool = Field(True, description="an eval copy of G with each BatchNorm that follows a "
                                                   "convolution folded into it (models/fold.py)")
    one_pass_flip: bool = Field(True, description="flip test as one forward of the images and their mirrors "
                                                  "concatenated (false: two forwards)")
    cast_weights: bool = Field(True, description="bf16/fp16: G's copy holds weights in that dtype and gets "
                                                 "inputs in it (false: fp32 weights under autocast)")
    compile: bool = Field(False, description="torch.compile the inference copy (train.compile_backend)")
    cuda_graphs: bool = Field(False, description="CUDA: replay a captured graph per input shape (with compile "
                                                 "and inductor: mode reduce-overhead); eager elsewhere")
    cuda_graphs_max_batch: int = Field(64, ge=1, description="largest forward batch (images, doubled with the "
                                                             "one-pass flip test) that gets a graph")


class Config(_Strict):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    adversarial: AdversarialConfig = AdversarialConfig()
    train: TrainConfig = TrainConfig()
    distributed: DistributedConfig = DistributedConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    infer: InferConfig = InferConfig()

    @model_validator(mode="after")
    def _model_fits_the_crop(self):
        d, depth = self.data, self.model.depth
        if d.input_size != G_STRIDE * d.heatmap_size:
            raise ValueError(f"G maps an input_size crop to input_size / {G_STRIDE} heatmaps: data.input_size "
                             f"{d.input_size} needs data.heatmap_size {d.input_size / G_STRIDE:g}, not "
                             f"{d.heatmap_size}")
        if d.heatmap_size % 2 ** depth:
            raise ValueError(f"an hourglass of model.depth {depth} halves its input {depth} times: "
                             f"data.heatmap_size ({d.heatmap_size}) must be a multiple of {2 ** depth}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


PRESET_PACKAGE = "harness.presets"


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(PRESET_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of config sections, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _known_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _known_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.batch_size=8` -> (["train", "batch_size"], 8); values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise UserError(f"override {item!r} is not of the form key=value (e.g. train.max_steps=100)")
    key, raw = item.split("=", 1)
    path = key.strip().split(".")
    if key.strip() not in _known_keys():
        hint = difflib.get_close_matches(key.strip(), _known_keys(), n=1)
        raise UserError(f"config: unknown key {key.strip()!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def _validate(data: dict[str, Any], where: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                hint = difflib.get_close_matches(loc, _known_keys(), n=1)
                msg = "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            got = f" (got {err['input']!r})" if err["type"] != "extra_forbidden" and "input" in err \
                and not isinstance(err["input"], dict) else ""
            lines.append(f"{loc}: {msg}{got}" if loc else f"{msg}{got}")
        raise UserError(f"config ({where}): " + "; ".join(lines)) from None


def load_config(preset: str | None = None, config_file: str | Path | None = None,
                overrides: list[str] = ()) -> Config:
    """Resolve a run's config: defaults, then a preset or a YAML file, then `key=value` overrides."""
    if preset and config_file:
        raise UserError("give either --preset or --config, not both")
    data: dict[str, Any] = {}
    where = "defaults"
    if preset:
        if preset not in preset_names():
            raise UserError(f"unknown preset {preset!r}; presets: {', '.join(preset_names())}")
        data = _read_yaml(resources.files(PRESET_PACKAGE).joinpath(f"{preset}.yaml").read_text(), preset)
        where = f"preset {preset}"
    elif config_file:
        path = Path(config_file)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        data = _read_yaml(path.read_text(), str(path))
        where = str(path)
    for item in overrides:
        keys, value = parse_override(item)
        update: dict[str, Any] = {keys[-1]: value}
        for k in reversed(keys[:-1]):
            update = {k: update}
        data = _merge(data, update)
    if overrides:
        where += " + overrides"
    return _validate(data, where)


def config_from_dict(data: dict[str, Any], where: str = "checkpoint") -> Config:
    return _validate(data, where)
