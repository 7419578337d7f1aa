"""The ablation sweeps of the SAT paper (Chou et al.) and the thesis, as explicit lists of sweep points.

A sweep point is a name and the `key=value` overrides that make it; a trial's config is
`load_config(preset.base, None, user overrides + point overrides)` (the point wins over the user), run
for each seed. Each preset `NAME` has a `NAME-tiny` twin with the same points on synthetic 64 px data,
a 32-feature G and 1000 steps, which runs in about 0.5-4 minutes per trial on one CPU core (two at a
time on 2 cores): the tiny numbers show that the machinery trains and compares, not the papers' claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from data_pipelines.errors import UserError


@dataclass(frozen=True)
class Axis:
    """A numeric sweep axis for the "metric vs X" plot: the value of X at each point, and which line
    (series) each point belongs to."""
    label: str
    x: dict[str, float]
    series: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepPreset:
    name: str
    description: str
    base: str  # harness preset (harness/presets/*.yaml) every point starts from
    points: dict[str, tuple[str, ...]]  # point name -> overrides
    comparisons: tuple[tuple[str, str], ...] = ()  # (point, baseline): paired difference point - baseline
    axis: Axis | None = None
    base_overrides: tuple[str, ...] = ()  # applied before the user's overrides
    seeds: int = 3
    paper: str = ""  # the papers' numbers or findings for this ablation, in words
    paper_values: dict[str, float] = field(default_factory=dict)  # point -> the paper's number for it
    paper_metric: str = ""  # what paper_values are (dataset, metric)


def _grid(stacks: list[int], variants: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    return {f"g{s}-{v}": (f"model.stacks={s}", *ovr) for s in stacks for v, ovr in variants.items()}


def _pairs(stacks: list[int], point: str, baseline: str) -> tuple[tuple[str, str], ...]:
    return tuple((f"g{s}-{point}", f"g{s}-{baseline}") for s in stacks)


NONE = ("adversarial.objective=none",)
SAT = ("adversarial.objective=sat",)
CGAN = ("adversarial.objective=cgan",)
ALPHAS = {"1/270": 1 / 270, "1/200": 1 / 200, "1/110": 1 / 110}
DELTAS = [0.003, 0.01, 0.03, 0.1, 0.8]
STACKS = [1, 2, 4, 8]
# The k_t question (issue 24): SAT's gamma x lambda_k with k_0 = 0, against the plain hourglass.
GAMMAS = [0.5, 1.0, 2.0]
LAMBDA_KS = [1e-3, 1e-2]


def _sat_point(gamma: float, lambda_k: float) -> str:
    return f"sat-g{gamma:g}-lk{lambda_k:g}"


SAT_GAMMA_POINTS = {"none": NONE, **{
    _sat_point(g, lk): (*SAT, f"adversarial.sat.gamma={g}", f"adversarial.sat.lambda_k={lk}", "adversarial.sat.k0=0")
    for lk in LAMBDA_KS for g in GAMMAS}}
# "8-stack baseline vs 4-stack + D, lr x0.1 at epoch 60" (SAT Fig. 11): one lr drop for both.
LR60 = ("train.generator.milestones=[60]", "train.generator.milestone_unit=epoch")

PRESETS: dict[str, SweepPreset] = {p.name: p for p in [
    SweepPreset(
        "sat-fig10", "SAT Fig. 10: conditional D (heatmaps + image) vs unconditional D (heatmaps only), "
        "1- and 2-stack G, SAT objective", "lsp-sat-4s",
        _grid([1, 2], {"cond": ("discriminator.conditional=true",),
                       "uncond": ("discriminator.conditional=false",)}),
        comparisons=_pairs([1, 2], "cond", "uncond"),
        paper="SAT Fig. 10 (LSP PCK curves): the discriminator that also sees the image (conditional) "
              "gives higher PCK than the heatmap-only one, for 1- and 2-stack G; the paper gives curves, "
              "no table."),
    SweepPreset(
        "sat-fig11", "SAT Fig. 11: with vs without the adversary for 1- and 2-stack G; 8-stack baseline "
        "vs 4-stack G + D, both with lr x0.1 at epoch 60", "lsp-sat-4s",
        {**_grid([1, 2], {"none": NONE, "sat": SAT}),
         "g8-none-lr60": ("model.stacks=8", *NONE, *LR60),
         "g4-sat-lr60": ("model.stacks=4", *SAT, *LR60)},
        comparisons=(*_pairs([1, 2], "sat", "none"), ("g4-sat-lr60", "g8-none-lr60")),
        paper="SAT Fig. 11 (LSP PCK curves): the adversary improves the 1- and 2-stack G, and the 4-stack "
              "G with D matches or beats the 8-stack baseline at half the generator size; curves only."),
    SweepPreset(
        "thesis-table6-1", "Thesis Table 6.1: 2- and 4-stack G, hourglass baseline vs cGAN objective",
        "lsp-cgan-4s", _grid([2, 4], {"none": NONE, "cgan": CGAN}),
        comparisons=_pairs([2, 4], "cgan", "none"),
        paper="Thesis Table 6.1, MPII validation PCKh@0.5: 4-stack 90.9 -> 91.3 with the adversary "
              "(+0.4), 2-stack 88.3 -> 87.8 (-0.5). Those are MPII numbers; this preset runs LSP "
              "unless data.* overrides select MPII.",
        paper_values={"g2-none": 88.3, "g2-cgan": 87.8, "g4-none": 90.9, "g4-cgan": 91.3},
        paper_metric="thesis Table 6.1, MPII val PCKh@0.5"),
    SweepPreset(
        "thesis-alpha", "Thesis: cGAN loss weight alpha in {1/270, 1/200, 1/110}, 4-stack G", "lsp-cgan-4s",
        {f"alpha-{k.replace('/', 'over')}": (f"adversarial.cgan.alpha={v!r}",) for k, v in ALPHAS.items()},
        comparisons=(("alpha-1over270", "alpha-1over200"), ("alpha-1over110", "alpha-1over200")),
        axis=Axis("alpha", {f"alpha-{k.replace('/', 'over')}": v for k, v in ALPHAS.items()}),
        paper="Thesis: alpha = 1/200 is the chosen weight (the recipe's default); the comparison is "
              "against it."),
    SweepPreset(
        "thesis-delta", "Thesis: d_fake threshold delta in {0.003, 0.01, 0.03, 0.1, 0.8}, 4-stack G",
        "lsp-cgan-4s", {f"delta-{d:g}": (f"adversarial.cgan.delta={d}",) for d in DELTAS},
        comparisons=tuple((f"delta-{d:g}", "delta-0.003") for d in DELTAS[1:]),
        axis=Axis("delta", {f"delta-{d:g}": d for d in DELTAS}),
        paper="Thesis: delta = 0.003 (same heatmap pixel) is the chosen threshold; the comparison is "
              "against it."),
    SweepPreset(
        "stacks", "G with 1/2/4/8 stacks, with (SAT) and without the adversary", "lsp-sat-4s",
        _grid(STACKS, {"none": NONE, "sat": SAT}),
        comparisons=_pairs(STACKS, "sat", "none"),
        axis=Axis("stacks", {f"g{s}-{v}": s for s in STACKS for v in ("none", "sat")},
                  {f"g{s}-{v}": v for s in STACKS for v in ("none", "sat")}),
        paper="SAT Fig. 11 and Table 6.1 together: the adversary helps small generators most; the "
              "thesis finds it hurts the 2-stack G on MPII (-0.5) and helps the 4-stack G (+0.4)."),
    SweepPreset(
        "sat-gamma", "The k_t question: SAT with gamma in {0.5, 1, 2} x lambda_k in {1e-3, 1e-2} (k_0 = 0) "
        "vs the plain hourglass, 4-stack G", "lsp-sat-4s", SAT_GAMMA_POINTS,
        comparisons=tuple((p, "none") for p in SAT_GAMMA_POINTS if p != "none"),
        axis=Axis("gamma", {_sat_point(g, lk): g for g in GAMMAS for lk in LAMBDA_KS},
                  {_sat_point(g, lk): f"lambda_k={lk:g}" for g in GAMMAS for lk in LAMBDA_KS}),
        paper="SAT (Chou et al.) trains with gamma = 0.5, lambda_k = 1e-3, k_0 = 0 (the authors' code) and "
              "reports no ablation of either; BEGAN (Berthelot et al.) uses lambda_k = 1e-3 and gamma in "
              "[0.3, 0.7]. The question here is whether k_t leaves 0 at all, and when."),
]}

# Tiny twins: the same base recipe and points on synthetic 64 px people (no flip, sigma-2 targets, as in
# the quickstart preset), a 1-stack 32-feature G and 16-feature D unless the point sets the stacks, G lr
# 1e-3 (the quickstart's), batch 8, 1000 steps validated every 100 on 64 held-out images, one thread per
# trial, no lr milestones (the recipes' are past a tiny run's end). Long enough to learn: measured here, a
# 1-stack G alone reached 43% held-out PCK@0.2 at step 1000 (52% at 1200), where the
# earlier 64-step twins stayed at 2-4% (noise). CI runs them with fewer steps (tests/test_sweeps.py).
TINY_OVERRIDES = (
    "data.name=synthetic", "data.root=null", "data.input_size=64", "data.heatmap_size=16", "data.sigma=2.0",
    "data.flip=false", "data.rotation=0", "data.synthetic_train_size=2000", "data.synthetic_val_size=64",
    "data.num_workers=0", "model.stacks=1", "model.features=32", "discriminator.features=16",
    "train.batch_size=8", "train.max_steps=1000", "train.val_every=100", "train.log_every=50", "train.threads=1",
    "train.generator.lr=1e-3",
    "train.flip_test=false", "train.generator.milestones=[]", "train.discriminator.milestones=[]")
TINY_SEEDS = 2

for _p in list(PRESETS.values()):
    PRESETS[f"{_p.name}-tiny"] = replace(
        _p, name=f"{_p.name}-tiny", base_overrides=TINY_OVERRIDES, seeds=TINY_SEEDS,
        description=f"{_p.description} (tiny: synthetic 64 px, 1000 steps)")


# sat-gamma's tiny twin runs real LSP (the question is about real heatmaps), small enough for its 21 trials
# (7 points x 3 seeds) to run one at a time on one core of the shared 2-core machine in ~25 minutes: 64 px
# crops of LSP's 1000 training images, 16 px heatmaps, a 1-stack 32-feature G and 16-feature D, batch 8,
# validated every 100 steps on the first 200 test images, no flip test. `train.log_every=5` logs k_t,
# L_real and L_fake every 5 steps: the step where k_t first leaves 0 is known to 5 steps.
SAT_GAMMA_TINY_OVERRIDES = (
    "data.name=lsp", "data.root=../shared/datasets/lsp", "data.input_size=64", "data.heatmap_size=16",
    "data.sigma=2.0", "data.max_val_samples=200", "data.num_workers=0",
    "model.stacks=1", "model.features=32", "discriminator.features=16",
    "train.batch_size=8", "train.max_steps=300", "train.val_every=100", "train.log_every=5", "train.threads=1",
    "train.generator.lr=1e-3", "train.flip_test=false", "train.generator.milestones=[]",
    "train.discriminator.milestones=[]")
PRESETS["sat-gamma-tiny"] = replace(
    PRESETS["sat-gamma-tiny"], base_overrides=SAT_GAMMA_TINY_OVERRIDES, seeds=3,
    description=PRESETS["sat-gamma"].description.replace("4-stack G", "1-stack G")
    + " (tiny: real LSP at 64 px, 300 steps, k_t logged every 5)")


def get_preset(name: str) -> SweepPreset:
    if name not in PRESETS:
        raise UserError(f"unknown sweep preset {name!r}; sweep presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
