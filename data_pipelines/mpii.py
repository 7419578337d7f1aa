"""MPII Human Pose in the JSON layout common to PyTorch stacked-hourglass code, and the official
validation order.

JSON (a list of person records, or {"root": [...]}): per person `img_paths` (file name), `objpos`
([x, y] person centre), `scale_provided` (person size / 200 px), `joint_self` (16 x [x, y, flag] in the
MPII order, skeletons.MPII), `isValidation` (0/1), optionally `img_width`, `img_height`,
`annolist_index`, `people_index`, `numOtherPeople` (kept in `meta`; `joint_others`/`objpos_other` are
ignored - every person is its own record).

Conventions of the layout, read off the sample and confirmed against the official validation GT:
- coordinates are MPII's own, 1-based (they equal `pos_gt_src` of the official .mat to < 0.001 px);
  records hold them minus 1 (0-based pixel centres, records.py). `objpos` is shifted the same way.
- a joint that is not annotated is written as [0, 0, 0]: x == y == 0 -> NOT_ANNOTATED (whatever the
  flag); the record gives such joints NaN coordinates, so that no code can use them by mistake. Real
  annotations may lie outside the image, even at negative or < 1 coordinates (head tops at y = -12.25
  in the sample), so "x, y < 1" is NOT used as the missing rule.
- flag 1 -> VISIBLE, flag 0 with coordinates -> OCCLUDED (the GT .mat counts those joints as annotated).

Centre and scale are the raw official values (`objpos` - 1, `scale_provided`). The hourglass recipe's
adjustments are NOT applied here: the crop enlargement x1.25 is geometry.CROP_ENLARGE (applied by the
transform for every dataset) and the MPII-only downward centre shift of 15 px x scale is
`hourglass_center()`, for the transform to call when it wants that recipe.

`PoseRecord.index` is the position among the records of the same split in file order. For the
validation split of the full JSON that is the official order: the validation people appear in the same
order as the 2958 columns of valid_gt_with_reference_preds.mat (the 16 validation people of the sample
are columns 0-15). `match_validation_order()` checks this by comparing joints, and sets `index` to the
matched column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from data_pipelines.errors import AnnotationError, UserError, read_json
from data_pipelines.lsp import center_scale_from_joints
from data_pipelines.records import NOT_ANNOTATED, OCCLUDED, VISIBLE, PoseRecord
from data_pipelines.skeletons import MPII

SPLITS = ("train", "valid", "all")
NUM_VALIDATION_PEOPLE = 2958
# The hourglass recipe moves MPII's objpos down by this many pixels per unit of scale.
CENTER_SHIFT_Y_PER_SCALE = 15.0
# Joints of a JSON record and of the GT .mat agree to < 0.001 px; this is the matching tolerance.
MATCH_TOLERANCE_PX = 0.5


def load_mpii(annotation_file, image_dir=None, split: str = "all") -> list[PoseRecord]:
    """Person records of an MPII JSON file. `image_dir` defaults to `<json folder>/images`.

    split: "train" (isValidation 0), "valid" (isValidation 1) or "all" (file order).
    Raises AnnotationError naming the file (and record number) for unreadable or malformed JSON.
    """
    if split not in SPLITS:
        raise UserError(f"MPII split must be one of {list(SPLITS)}, got {split!r}")
    path = Path(annotation_file)
    image_dir = Path(image_dir) if image_dir is not None else path.parent / "images"
    items = _read_json_list(path)
    records = []
    rank = {"train": 0, "valid": 0}
    for pos, item in enumerate(items):
        rec_split = _parse_split(path, pos, item)
        if split in (rec_split, "all"):
            records.append(_parse_record(path, pos, item, image_dir, rec_split, rank[rec_split]))
        rank[rec_split] += 1
    return records


def hourglass_center(record: PoseRecord) -> np.ndarray:
    """The hourglass recipe's crop centre for an MPII record: objpos moved down by 15 px x scale."""
    return record.center + np.array([0.0, CENTER_SHIFT_Y_PER_SCALE * record.scale])


@dataclass(frozen=True)
class ValidationGT:
    """Official MPII validation ground truth, 0-based like the records (file values minus 1).

    joints [N, 16, 2], missing [N, 16] bool (jnt_missing), headboxes [N, 2, 2] ([[x1, y1], [x2, y2]]).
    """

    joints: np.ndarray
    missing: np.ndarray
    headboxes: np.ndarray
    path: str = ""

    @property
    def num_people(self) -> int:
        return self.joints.shape[0]


def load_validation_gt(mat_path) -> ValidationGT:
    """Read valid_gt_with_reference_preds.mat / gt_valid.mat (pos_gt_src, jnt_missing, headboxes_src)."""
    from scipy.io import loadmat

    path = Path(mat_path)
    if not path.is_file():
        raise AnnotationError.at(path, "validation ground-truth file not found")
    try:
        mat = loadmat(path)
    except Exception as exc:
        raise AnnotationError.at(path, f"cannot read as a MATLAB file ({type(exc).__name__}: {exc})") from exc
    for name in ("pos_gt_src", "jnt_missing", "headboxes_src"):
        if name not in mat:
            found = sorted(k for k in mat if not k.startswith("__"))
            raise AnnotationError.at(path, f"no variable {name!r} (variables: {found})")
    try:
        pos, missing, heads = (np.asarray(mat[k], dtype=np.float64)
                               for k in ("pos_gt_src", "jnt_missing", "headboxes_src"))
    except (TypeError, ValueError) as exc:
        raise AnnotationError.at(path, f"'pos_gt_src', 'jnt_missing' and 'headboxes_src' must be numeric "
                                       f"({exc})") from None
    if pos.ndim == 2 and heads.ndim == 2:  # one person: MATLAB drops the trailing singleton dimension
        pos, heads = pos[..., None], heads[..., None]
    nj = MPII.num_joints
    if pos.ndim != 3 or pos.shape[:2] != (nj, 2):
        raise AnnotationError.at(path, f"'pos_gt_src' has shape {pos.shape}, expected ({nj}, 2, N)")
    n = pos.shape[2]
    if missing.shape != (nj, n):
        raise AnnotationError.at(path, f"'jnt_missing' has shape {missing.shape}, expected ({nj}, {n})")
    if heads.shape != (2, 2, n):
        raise AnnotationError.at(path, f"'headboxes_src' has shape {heads.shape}, expected (2, 2, {n})")
    if not (np.isfinite(pos).all() and np.isfinite(heads).all()):
        raise AnnotationError.at(path, "'pos_gt_src' or 'headboxes_src' holds non-finite values")
    if not np.isin(missing, (0, 1)).all():
        raise AnnotationError.at(path, "'jnt_missing' must hold only 0 and 1")
    if "dataset_joints" in mat:
        try:
            names = [str(np.ravel(x)[0]) for x in np.ravel(mat["dataset_joints"])]
        except (IndexError, TypeError):
            names = None
        if names != list(MPII.joints):
            raise AnnotationError.at(path, f"dataset_joints {names} is not the MPII joint order")
    return ValidationGT(joints=pos.transpose(2, 0, 1) - 1.0, missing=missing.T.astype(bool),
                        headboxes=heads.transpose(2, 0, 1) - 1.0, path=str(path))


def match_validation_order(records: list[PoseRecord], gt: ValidationGT, require_complete: bool = False,
                           tolerance_px: float = MATCH_TOLERANCE_PX) -> list[PoseRecord]:
    """Validation records matched to the people of the official GT and sorted into its order.

    A record matches GT person k when the joints annotated in both agree within `tolerance_px` and at
    least half of the record's annotated joints (and >= 2) are annotated in the GT. Person `record.index`
    is tried first (the full JSON's order is the GT order), then all people. The returned records are
    copies with `index` = k and meta `headbox` (0-based [[x1, y1], [x2, y2]] from the GT), `gt_max_error_px`
    and `gt_annotation_differs` (names of joints annotated in one source only; e.g. sample person
    004645041.jpg has two ankles that the GT marks missing).
    Raises AnnotationError for a record that matches no person, two records that match the same person,
    or (require_complete) GT people left unmatched.
    """
    matched: dict[int, PoseRecord] = {}
    for rec in records:
        if rec.num_joints != MPII.num_joints:
            raise UserError(f"{rec.image}: not an MPII record ({rec.num_joints} joints)")
        k, err = _find_person(rec, gt, tolerance_px)
        if k is None:
            raise AnnotationError.at(gt.path, f"no validation person matches {rec.image} (JSON record "
                                              f"{rec.meta.get('json_position', '?')}); closest differs by "
                                              f"{err:.1f} px")
        if k in matched:
            raise AnnotationError.at(gt.path, f"{rec.image} and {matched[k].image} both match person {k}")
        ann = rec.visibility > NOT_ANNOTATED
        differs = [MPII.joints[j] for j in np.flatnonzero(ann == gt.missing[k])]
        matched[k] = replace(rec, index=k, meta={**rec.meta, "headbox": gt.headboxes[k].copy(),
                                                 "gt_max_error_px": err, "gt_annotation_differs": differs})
    if require_complete and len(matched) != gt.num_people:
        left = [k for k in range(gt.num_people) if k not in matched]
        raise AnnotationError.at(gt.path, f"{len(left)} of {gt.num_people} validation people have no JSON "
                                          f"record, e.g. {left[:5]}")
    return [matched[k] for k in sorted(matched)]


def _find_person(rec: PoseRecord, gt: ValidationGT, tol: float) -> tuple[int | None, float]:
    ann = rec.visibility > NOT_ANNOTATED
    need = max(2, math.ceil(ann.sum() / 2))

    def errors(ks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        both = ann[None, :] & ~gt.missing[ks]  # [K, 16]
        diff = np.abs(gt.joints[ks] - rec.joints[None]).max(axis=2)
        return np.where(both, diff, 0.0).max(axis=1), both.sum(axis=1)

    if 0 <= rec.index < gt.num_people:
        err, count = errors(np.array([rec.index]))
        if count[0] >= need and err[0] <= tol:
            return rec.index, float(err[0])
    err, count = errors(np.arange(gt.num_people))
    err = np.where(count >= need, err, np.inf)
    k = int(np.argmin(err))
    return (k if err[k] <= tol else None), float(err[k])


def _read_json_list(path: Path) -> list:
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("root"), list):
        data = data["root"]
    if not isinstance(data, list):
        raise AnnotationError.at(path, f"expected a JSON list of person records (or {{\"root\": [...]}}), "
                                       f"got {type(data).__name__}")
    return data


def _parse_split(path: Path, pos: int, item) -> str:
    if not isinstance(item, dict):
        raise AnnotationError.at(path, f"record {pos}: expected an object, got {type(item).__name__}")
    flag = item.get("isValidation")
    if flag not in (0, 1):  # 0.0 / 1.0 compare equal; True/False too
        raise AnnotationError.at(path, f"record {pos}: 'isValidation' must be 0 or 1, got {flag!r}")
    return "valid" if flag else "train"


def _number_array(path: Path, pos: int, item: dict, key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in item:
        raise AnnotationError.at(path, f"record {pos}: missing key {key!r}")
    try:
        arr = np.asarray(item[key], dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != shape:
        got = "non-numeric or ragged" if arr is None else f"shape {arr.shape}"
        raise AnnotationError.at(path, f"record {pos}: {key!r} must be numbers of shape {shape}, got {got}")
    if not np.isfinite(arr).all():
        raise AnnotationError.at(path, f"record {pos}: {key!r} holds non-finite values")
    return arr


def _parse_record(path: Path, pos: int, item: dict, image_dir: Path, split: str, rank: int) -> PoseRecord:
    name = item.get("img_paths")
    if not isinstance(name, str) or not name:
        raise AnnotationError.at(path, f"record {pos}: 'img_paths' must be a file name, got {name!r}")
    joints = _number_array(path, pos, item, "joint_self", (MPII.num_joints, 3))
    objpos = _number_array(path, pos, item, "objpos", (2,))
    scale = _number_array(path, pos, item, "scale_provided", ())
    if scale <= 0:
        raise AnnotationError.at(path, f"record {pos} ({name}): 'scale_provided' must be > 0, "
                                       f"got {float(scale)}")
    flags = joints[:, 2]
    if not np.isin(flags, (0, 1)).all():
        raise AnnotationError.at(path, f"record {pos} ({name}): joint flags must be 0 or 1, got "
                                       f"{sorted(set(flags.tolist()))}")
    missing = (joints[:, 0] == 0) & (joints[:, 1] == 0)
    vis = np.where(missing, NOT_ANNOTATED, np.where(flags == 1, VISIBLE, OCCLUDED)).astype(np.int8)
    xy = np.where(missing[:, None], np.nan, joints[:, :2] - 1.0)  # 1-based -> 0-based; missing -> NaN
    meta = {"split": split, "json_position": pos}
    if tuple(objpos) == (-1.0, -1.0):  # some MPII people have no objpos: fall back to the joints' box centre
        if missing.all():
            raise AnnotationError.at(path, f"record {pos} ({name}): no objpos and no annotated joint")
        center = center_scale_from_joints(xy, vis)[0]
        meta["objpos_missing"] = True
    else:
        center = objpos - 1.0
    for key, meta_key in (("img_width", "image_width"), ("img_height", "image_height"),
                          ("annolist_index", "annolist_index"), ("people_index", "people_index"),
                          ("numOtherPeople", "num_other_people")):
        value = item.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            meta[meta_key] = int(value)
    return PoseRecord(image=str(image_dir / name), joints=xy, visibility=vis, center=center,
                      scale=float(scale), dataset="mpii", index=rank, meta=meta)
