"""PCK / PCKh: the one implementation used by the trainer's validation pass and by `harness score`.

The rules are those of the official MATLAB evaluation (evalMPII.zip: `computePCK.m`, `area_under_curve.m`,
`genTablePCK.m`) and of the common LSP evaluation derived from it (`eval_pck.m`); both are tested against
those programs' own output (tests/fixtures/mpii_official_eval.json, lsp_eval_pck.json).

Conventions (all protocols):
- Arrays are people-first: predictions and ground truth `[N, J, 2]` (x, y in pixels), `counted [N, J]`
  bool, `norm [N]` the per-person normalising length in the same pixels. Predictions and ground truth
  must be in the same frame (both 0-based or both 1-based); the metric only uses differences, so no
  offset is ever applied here.
- A joint is correct when ``||pred - gt|| / norm <= threshold`` (`computePCK.m`: ``d <= range(k)``). A
  non-finite prediction (NaN) is never correct (evalMPII.m turns it into inf).
- Per-joint PCK = 100 * correct / counted for that joint (NaN when a joint is never counted).
- A group column (Head, Sho., ...: `skeleton.groups`) is the unweighted mean of its joints' PCK.
- Mean = 100 * (correct over counted joints not in `skeleton.mean_excludes`) / (their count), which is
  exactly the count-weighted mean of those joints' PCK (`computePCK.m`'s pooled "full body" column).
- AUC = the area under the Mean-PCK curve over the thresholds ``auc_max * k / auc_steps`` (k = 0..auc_steps),
  with the threshold axis rescaled to [0, 1] and the trapezoid rule (`area_under_curve(scale01(range),
  pck)`: quadgk of the linear interpolant), in % like the other columns. A perfect prediction has AUC 100.
- A person with at least one counted joint must have a finite, positive norm; otherwise `ValueError`
  (naming the 0-based rows). Persons without counted joints are ignored whatever their norm.

Protocols (`PROTOCOLS`):
- "mpii" PCKh (evalMPII.m): norm = head size = 0.6 x the diagonal of the head box
  (``||headbox[1] - headbox[0]||``); only annotated joints count (``jnt_missing == 0``); Mean excludes
  pelvis and thorax (shown per joint; evalMPII.m drops them); also reports Mean PCKh@0.1 ("mean@0.1");
  AUC over thresholds 0, 0.01, ..., 0.5. Default threshold 0.5. Besides the project's columns (Head = head
  top, as in the common Python evaluation), `official` holds the row `genTablePCK.m` prints: Head = mean of
  upper neck and head top, Shoulder .. Ankle = mean of left and right, UBody = pooled over shoulders,
  elbows and wrists, Total = pooled over the 14 joints (= Mean).
- "lsp" PCK (`eval_pck.m` of the common LSP evaluation, github.com/bearpaw/eval_pose, after Sapp & Taskar):
  norm = torso = distance between the ground truth's left shoulder and right hip (`skeleton.torso`); all
  14 joints count, occluded ones too; Mean over all joints; AUC over thresholds 0, 0.01, ..., 0.2 as in
  eval_pck.m. Default threshold 0.2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from data_pipelines.skeletons import LSP, MPII, Skeleton

MPII_HEAD_SIZE_FACTOR = 0.6  # the official SC_BIAS: head size = 0.6 x head-box diagonal


@dataclass(frozen=True)
class Protocol:
    name: str
    skeleton: Skeleton
    metric: str  # column label: "PCKh" or "PCK"
    threshold: float  # default threshold
    normaliser: str  # what `norm` is, in words
    auc_max: float  # AUC thresholds: auc_max * k / auc_steps, k = 0..auc_steps
    auc_steps: int
    extra_thresholds: tuple[float, ...] = ()  # reported as "mean@<t>"


PROTOCOLS: dict[str, Protocol] = {
    "mpii": Protocol("mpii", MPII, "PCKh", 0.5, "head size = 0.6 x head-box diagonal",
                     auc_max=0.5, auc_steps=50, extra_thresholds=(0.1,)),
    "lsp": Protocol("lsp", LSP, "PCK", 0.2, "torso = |left shoulder - right hip| of the ground truth",
                    auc_max=0.2, auc_steps=20),
}

# The columns evalMPII.m prints (genTablePCK.m), by MPII joint name: (name, joints, pooled). pooled=False:
# the unweighted mean of the joints' PCKh; pooled=True: correct / counted over all of them (computePCK.m's
# "UBody" and "full body" columns).
MPII_OFFICIAL_COLUMNS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("Head", ("neck", "head"), False), ("Shoulder", ("lsho", "rsho"), False),
    ("Elbow", ("lelb", "relb"), False), ("Wrist", ("lwri", "rwri"), False), ("Hip", ("lhip", "rhip"), False),
    ("Knee", ("lkne", "rkne"), False), ("Ankle", ("lank", "rank"), False),
    ("UBody", ("rwri", "relb", "rsho", "lsho", "lelb", "lwri"), True),
    ("Total", tuple(n for n in MPII.joints if n not in ("pelv", "thor")), True),
)


@dataclass(frozen=True)
class PCKResult:
    """One evaluation. All figures are percentages (NaN where nothing was counted)."""

    protocol: str
    metric: str
    threshold: float
    count: int  # people scored
    per_joint: dict[str, float]  # joint name -> PCK %
    joint_counts: dict[str, int]  # joint name -> how many counted
    groups: dict[str, float]  # the table: Head, Sho., ..., Ank., Mean -> %
    mean: float
    auc: float
    auc_max: float
    auc_steps: int
    normaliser: str
    mean_excludes: tuple[str, ...] = ()
    extra: dict[str, float] = field(default_factory=dict)  # e.g. "mean@0.1"
    official: dict[str, float] = field(default_factory=dict)  # MPII: the row evalMPII.m prints
    curve: tuple[float, ...] = ()  # Mean at the AUC thresholds auc_max * k / auc_steps, k = 0..auc_steps

    @property
    def auc_definition(self) -> str:
        return (f"area under the Mean {self.metric} (%) curve over thresholds {self.auc_max} * k / "
                f"{self.auc_steps}, k = 0..{self.auc_steps}, rescaled to [0, 1], trapezoid rule "
                "(area_under_curve.m)")

    def headline(self) -> dict:
        """What training reports of one validation, the same keys for every protocol (CocoKeypointResult
        has its own): `metric` (its name), `value` (Mean PCK / PCKh, higher is better), `auc`, `per_joint`,
        `groups`."""
        j = self.to_json()
        return {"metric": f"{self.metric}@{self.threshold:g}", "value": self.mean, "auc": self.auc,
                "per_joint": j["per_joint"], "groups": j["groups"]}

    def render(self):
        """A rich renderable (module-level `render`), as CocoKeypointResult.render."""
        return render(self)

    def to_json(self) -> dict:
        """A JSON-serialisable dict (NaN -> None): per_joint, groups, mean, auc, metric, threshold, count,
        the extras (e.g. "mean@0.1"), MPII's evalMPII.m columns ("official") and the definitions used."""
        out = {
            "protocol": self.protocol,
            "metric": self.metric,
            "threshold": self.threshold,
            "count": self.count,
            "per_joint": {k: _num(v) for k, v in self.per_joint.items()},
            "joint_counts": dict(self.joint_counts),
            "groups": {k: _num(v) for k, v in self.groups.items()},
            "mean": _num(self.mean),
            "auc": _num(self.auc),
        }
        out.update({k: _num(v) for k, v in self.extra.items()})
        if self.official:
            out["official"] = {k: _num(v) for k, v in self.official.items()}
        out["definitions"] = {
            "correct": "||pred - gt|| / norm <= threshold (computePCK.m)",
            "norm": self.normaliser,
            "groups": "unweighted mean of the group's per-joint values",
            "mean": "count-weighted mean of per-joint values"
                    + (f", excluding {', '.join(self.mean_excludes)}" if self.mean_excludes else ""),
            "auc": self.auc_definition,
            "units": "percent",
        }
        if self.official:
            out["definitions"]["official"] = ("evalMPII.m's columns: Head = mean of neck and head top, "
                                              "Shoulder..Ankle = mean of left and right, UBody = pooled "
                                              "over shoulders, elbows, wrists, Total = pooled over 14 joints")
        return out


def _num(v: float) -> float | None:
    return None if not math.isfinite(v) else float(v)


def pck_table(pred, gt, counted, norm, skeleton: Skeleton, threshold: float, *, metric: str = "PCK",
              protocol: str = "", normaliser: str = "", auc_max: float = 0.5, auc_steps: int = 50,
              extra_thresholds: tuple[float, ...] = ()) -> PCKResult:
    """The generic core: see the module docstring for every rule. Shapes: pred, gt [N, J, 2]; counted
    [N, J] bool; norm [N]. Raises ValueError on bad shapes, non-finite counted ground truth, or a bad
    norm for a person with counted joints."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    counted = np.asarray(counted)
    norm = np.asarray(norm, dtype=np.float64)
    n, j = gt.shape[:2] if gt.ndim == 3 else (None, None)
    if gt.ndim != 3 or gt.shape[2] != 2 or j != skeleton.num_joints:
        raise ValueError(f"ground truth must be [N, {skeleton.num_joints}, 2], got {gt.shape}")
    if pred.shape != gt.shape:
        raise ValueError(f"predictions {pred.shape} do not match ground truth {gt.shape}")
    if counted.shape != (n, j) or counted.dtype != np.bool_:
        raise ValueError(f"counted must be a bool [N, J] = [{n}, {j}] array, "
                         f"got {counted.dtype} {counted.shape}")
    if norm.shape != (n,):
        raise ValueError(f"norm must be [N] = [{n}], got {norm.shape}")
    if not (0 <= threshold and math.isfinite(threshold)):
        raise ValueError(f"threshold must be finite and >= 0, got {threshold}")
    if auc_steps < 1 or not auc_max > 0:
        raise ValueError(f"need auc_steps >= 1 and auc_max > 0, got {auc_steps}, {auc_max}")
    bad_gt = counted & ~np.isfinite(gt).all(axis=2)
    if bad_gt.any():
        rows = np.unique(np.nonzero(bad_gt)[0])
        raise ValueError(f"non-finite ground truth at counted joints of {len(rows)} person(s), "
                         f"rows {_first(rows)} (0-based)")
    has_counted = counted.any(axis=1)
    bad_norm = has_counted & ~(np.isfinite(norm) & (norm > 0))
    if bad_norm.any():
        rows = np.nonzero(bad_norm)[0]
        raise ValueError(f"zero or non-finite normalising size ({normaliser or 'norm'}) for {len(rows)} "
                         f"person(s) with counted joints, rows {_first(rows)} (0-based)")

    safe_norm = np.where(has_counted, norm, 1.0)
    scaled = np.linalg.norm(pred - gt, axis=2) / safe_norm[:, None]  # [N, J]; NaN pred -> NaN
    counts = counted.sum(axis=0)
    include = np.ones(j, dtype=bool)
    include[list(skeleton.mean_excludes)] = False
    mean_count = counts[include].sum()

    def per_joint_at(t: float) -> tuple[np.ndarray, np.ndarray]:
        """(per-joint PCK %, per-joint correct count) at threshold t."""
        correct = ((scaled <= t) & counted).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, 100.0 * correct / np.maximum(counts, 1), np.nan), correct

    def mean_at(t: float) -> float:
        _, correct = per_joint_at(t)
        return 100.0 * correct[include].sum() / mean_count if mean_count else math.nan

    pck, _ = per_joint_at(threshold)
    mean = mean_at(threshold)
    groups = {name: float(np.mean(pck[list(idx)])) for name, idx in skeleton.groups.items()}
    groups["Mean"] = mean
    curve = np.array([mean_at(auc_max * k / auc_steps) for k in range(auc_steps + 1)])
    auc = float((curve.sum() - (curve[0] + curve[-1]) / 2) / auc_steps)  # trapezoid on [0, 1]
    return PCKResult(
        protocol=protocol or skeleton.name, metric=metric, threshold=float(threshold), count=int(n),
        per_joint={name: float(v) for name, v in zip(skeleton.joints, pck)},
        joint_counts={name: int(c) for name, c in zip(skeleton.joints, counts)},
        groups=groups, mean=mean, auc=auc, auc_max=float(auc_max), auc_steps=int(auc_steps),
        curve=tuple(float(v) for v in curve),
        normaliser=normaliser, mean_excludes=tuple(skeleton.joints[i] for i in skeleton.mean_excludes),
        extra={f"mean@{t:g}": mean_at(t) for t in extra_thresholds},
    )


def _first(rows: np.ndarray, k: int = 10) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:k])
    return f"[{shown}{', ...' if len(rows) > k else ''}]"


def mpii_head_sizes(headboxes) -> np.ndarray:
    """headboxes [N, 2, 2] = per person [[x1, y1], [x2, y2]] -> head size 0.6 * ||(x2, y2) - (x1, y1)||."""
    hb = np.asarray(headboxes, dtype=np.float64)
    if hb.ndim != 3 or hb.shape[1:] != (2, 2):
        raise ValueError(f"head boxes must be [N, 2, 2] (corner, xy), got {hb.shape}")
    return MPII_HEAD_SIZE_FACTOR * np.linalg.norm(hb[:, 1] - hb[:, 0], axis=1)


def torso_sizes(gt, skeleton: Skeleton) -> np.ndarray:
    """gt [N, J, 2] -> [N] distance between the skeleton's torso joints (LSP: left shoulder, right hip)."""
    if skeleton.torso is None:
        raise ValueError(f"skeleton {skeleton.name!r} defines no torso joints")
    gt = np.asarray(gt, dtype=np.float64)
    a, b = skeleton.torso
    return np.linalg.norm(gt[:, a] - gt[:, b], axis=1)


def score_mpii(pred, gt, annotated, headboxes, threshold: float | None = None) -> PCKResult:
    """Official MPII PCKh. pred, gt [N, 16, 2]; annotated [N, 16] (True / 1 = annotated, i.e.
    ``jnt_missing == 0``); headboxes [N, 2, 2]."""
    p = PROTOCOLS["mpii"]
    annotated = np.asarray(annotated)
    if annotated.dtype != np.bool_:
        annotated = annotated != 0
    result = pck_table(pred, gt, annotated, mpii_head_sizes(headboxes), p.skeleton,
                       p.threshold if threshold is None else threshold, metric=p.metric, protocol=p.name,
                       normaliser=p.normaliser, auc_max=p.auc_max, auc_steps=p.auc_steps,
                       extra_thresholds=p.extra_thresholds)
    return replace(result, official=official_columns(result.per_joint, result.joint_counts))


def official_columns(per_joint: dict[str, float], counts: dict[str, int]) -> dict[str, float]:
    """evalMPII.m's table row (`MPII_OFFICIAL_COLUMNS`) from per-joint PCKh and counts. A pooled column
    is correct / counted over its joints = the count-weighted mean of their PCKh."""
    out = {}
    for name, joints, pooled in MPII_OFFICIAL_COLUMNS:
        values = np.array([per_joint[j] for j in joints])
        if not pooled:
            out[name] = float(np.mean(values))
            continue
        weights = np.array([counts[j] for j in joints], dtype=np.float64)
        total = weights.sum()
        out[name] = float(np.sum(np.nan_to_num(values) * weights) / total) if total else math.nan
    return out


def score_lsp(pred, gt, threshold: float | None = None) -> PCKResult:
    """LSP PCK: pred, gt [N, 14, 2]; every joint counts (occluded too); torso from the ground truth."""
    p = PROTOCOLS["lsp"]
    gt = np.asarray(gt, dtype=np.float64)
    counted = np.ones(gt.shape[:2], dtype=bool)
    return pck_table(pred, gt, counted, torso_sizes(gt, p.skeleton), p.skeleton,
                     p.threshold if threshold is None else threshold, metric=p.metric, protocol=p.name,
                     normaliser=p.normaliser, auc_max=p.auc_max, auc_steps=p.auc_steps,
                     extra_thresholds=p.extra_thresholds)


def score(protocol: str, pred, gt, *, annotated=None, headboxes=None,
          threshold: float | None = None) -> PCKResult:
    """Entry point for the trainer's validation pass and the score command: decoded predictions in,
    result out. "mpii" needs `annotated` and `headboxes`; "lsp" ignores them (all joints count)."""
    if protocol == "mpii":
        if annotated is None or headboxes is None:
            raise ValueError("mpii scoring needs `annotated` [N, 16] and `headboxes` [N, 2, 2]")
        return score_mpii(pred, gt, annotated, headboxes, threshold)
    if protocol == "lsp":
        return score_lsp(pred, gt, threshold)
    raise ValueError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}")


def render(result: PCKResult):
    """A rich renderable: the group table (Head ... Ank., Mean, extras, AUC) and the per-joint table."""
    from rich import box
    from rich.console import Group
    from rich.table import Table

    def fmt(v: float) -> str:
        return "-" if not math.isfinite(v) else f"{v:.2f}"

    title = f"{result.protocol.upper()} {result.metric}@{result.threshold:g}, {result.count} people (%)"
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True)
    cols = dict(result.groups)
    cols.update({f"Mean@{k.split('@', 1)[1]}": v for k, v in result.extra.items()})
    cols["AUC"] = result.auc
    for name in cols:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_row(*(fmt(v) for v in cols.values()))
    tables = [table]
    if result.official:
        official = Table(title="as evalMPII.m prints it (Head: neck + head top)",
                         box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True)
        for name in result.official:
            official.add_column(name, justify="right", no_wrap=True)
        official.add_row(*(fmt(v) for v in result.official.values()))
        tables.append(official)

    joints = Table(title="per joint", box=box.SIMPLE_HEAD, padding=(0, 1))
    joints.add_column("joint")
    joints.add_column(f"{result.metric} %", justify="right")
    joints.add_column("counted", justify="right")
    for name, v in result.per_joint.items():
        note = " (not in Mean)" if name in result.mean_excludes else ""
        joints.add_row(name + note, fmt(v), str(result.joint_counts[name]))
    notes = [f"norm: {result.normaliser}", f"AUC: {result.auc_definition}"]
    if result.mean_excludes:
        notes.append(f"Mean excludes {', '.join(result.mean_excludes)} (count-weighted over the rest)")
    return Group(*tables, joints, *notes)


def print_result(result, console=None) -> None:
    from rich.console import Console

    (console or Console()).print(result.render())
