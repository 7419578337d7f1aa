"""`python -m harness score`: PCKh (MPII) / PCK (LSP) / keypoint AP (COCO) of a predictions file against the
official ground truth.

Ground truth:
- mpii: the official evaluation's .mat (`pos_gt_src` 16x2xN, `jnt_missing` 16xN, `headboxes_src` 2x2xN;
  `dataset_joints`, when present, must list the MPII joint order).
- lsp: a `joints.mat` with variable `joints`, detected by shape: 3x14xN (the original LSP: rows x, y,
  flag with 0 = visible) or 14x3xN (LSP-extended: columns x, y, flag with 1 = visible). The flag is read
  past but not used: the LSP protocol counts every joint, occluded ones too.
Predictions: a .mat with `preds` (people x joints x 2, the official layout) or `pos_pred_src`
(joints x 2 x people, as in the MPII ground-truth file), or a .npy of shape people x joints x 2.

Both files are in the datasets' own 1-based pixel convention; PCK only uses differences, so no offset is
applied. `--images A-B` (1-based, inclusive; lsp default 1001-2000, the test split; mpii default all
people) selects ground-truth rows; predictions may cover just those rows or every ground-truth row (then
the same rows are selected).

coco: `--gt` a COCO keypoint annotation file (person_keypoints_<split>2017.json), `--pred` a COCO results
file (JSON list of {image_id, category_id, keypoints, score}); scored by pycocotools' COCOeval with
iouType "keypoints" (OKS AP over 0.50:0.05:0.95); `--threshold` and `--images` do not apply.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from data_pipelines.errors import UserError
from data_pipelines.lsp import read_joints_mat
from data_pipelines.mpii import load_validation_gt
from harness import coco_eval, metrics

LSP_TEST_IMAGES = (1001, 2000)


def register(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="PCKh / PCK / COCO keypoint AP of a predictions file against the ground truth",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=[*sorted(metrics.PROTOCOLS), "coco"], required=True)
    p.add_argument("--gt", type=Path, required=True,
                   help="ground-truth .mat (official layout); coco: annotation .json")
    p.add_argument("--pred", type=Path, required=True,
                   help="predictions .mat (preds / pos_pred_src) or .npy; coco: results .json")
    p.add_argument("--threshold", type=float, default=None,
                   help="PCK threshold as a fraction of the norm (default: mpii 0.5, lsp 0.2)")
    p.add_argument("--images", default=None, metavar="A-B",
                   help="1-based inclusive ground-truth rows to score (default: lsp 1001-2000, mpii all)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    protocol = args.protocol
    if protocol == "coco":
        return run_coco(args)
    skeleton = metrics.PROTOCOLS[protocol].skeleton
    if protocol == "mpii":
        gt, annotated, headboxes = load_mpii_gt(args.gt)
    else:
        gt, annotated, headboxes = load_lsp_gt(args.gt), None, None
    pred = load_predictions(args.pred, skeleton.num_joints)

    n_gt = gt.shape[0]
    if args.images is not None:
        first, last = parse_images(args.images)
    elif protocol == "lsp":
        first, last = LSP_TEST_IMAGES
    else:
        first, last = 1, n_gt
    if last > n_gt:
        raise UserError(f"--images {first}-{last} is beyond the {n_gt} people/images in {args.gt}"
                        + ("" if args.images else "; pass --images A-B"))
    rows = slice(first - 1, last)
    if pred.shape[0] == n_gt:
        pred = pred[rows]
    elif pred.shape[0] != last - first + 1:
        raise UserError(f"N mismatch: {args.pred} has {pred.shape[0]} people, {args.gt} has {n_gt} and "
                        f"images {first}-{last} select {last - first + 1}")
    gt = gt[rows]
    if annotated is not None:
        annotated, headboxes = annotated[rows], headboxes[rows]

    try:
        result = metrics.score(protocol, pred, gt, annotated=annotated, headboxes=headboxes,
                               threshold=args.threshold)
    except ValueError as exc:
        raise UserError(f"cannot score {args.pred} against {args.gt}: {exc}") from None

    if args.json:
        out = result.to_json()
        out.update(gt=str(args.gt), pred=str(args.pred), images=f"{first}-{last}")
        print(json.dumps(out, allow_nan=False))
    else:
        metrics.print_result(result)
    return 0


def run_coco(args) -> int:
    for flag, value in (("--threshold", args.threshold), ("--images", args.images)):
        if value is not None:
            raise UserError(f"{flag} does not apply to --protocol coco (OKS AP over 0.50:0.05:0.95, all images)")
    result = coco_eval.score_files(args.gt, args.pred)
    if args.json:
        print(json.dumps({**result.to_json(), "gt": str(args.gt), "pred": str(args.pred)}, allow_nan=False))
    else:
        metrics.print_result(result)
    return 0


def parse_images(text: str) -> tuple[int, int]:
    """'A-B' (or 'A') -> (A, B), 1-based inclusive."""
    parts = text.split("-")
    try:
        if len(parts) > 2:
            raise ValueError
        first, last = int(parts[0]), int(parts[-1])
    except ValueError:
        raise UserError(f"--images must look like A-B (1-based, inclusive), got {text!r}") from None
    if not 1 <= first <= last:
        raise UserError(f"--images needs 1 <= A <= B, got {text!r}")
    return first, last


def _loadmat(path: Path) -> dict:
    import scipy.io

    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError:
        raise UserError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save with -v7") from None
    except Exception as exc:  # scipy raises many types (ValueError, TypeError, MatReadError...) on bad files
        raise UserError(f"{path}: not a readable .mat file ({type(exc).__name__}: {exc})") from None


def _variable(mat: dict, name: str, path: Path, ndim: int | None = None) -> np.ndarray:
    """A numeric variable as float64. With `ndim` (people last), a variable one dim short gets its
    trailing N = 1 back (MATLAB drops trailing singletons)."""
    if name not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise UserError(f"{path}: no variable {name!r} (found: {', '.join(found) or 'none'})")
    arr = np.asarray(mat[name])
    if arr.dtype.kind not in "biuf":
        raise UserError(f"{path}: variable {name!r} is not numeric ({arr.dtype})")
    if ndim is not None and arr.ndim == ndim - 1:
        arr = arr[..., None]
    return arr.astype(np.float64)


def _expect(arr: np.ndarray, shape: tuple, what: str, path: Path) -> None:
    """shape uses None for 'any'."""
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        want = " x ".join("N" if s is None else str(s) for s in shape)
        raise UserError(f"{path}: {what} must be {want}, got {' x '.join(map(str, arr.shape))}")


def load_mpii_gt(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> gt [N, 16, 2], annotated [N, 16] bool, headboxes [N, 2, 2] (corner, xy), in the file's own
    1-based coordinates like the predictions it is scored against."""
    gt = load_validation_gt(path)
    return gt.joints + 1.0, ~gt.missing, gt.headboxes + 1.0


def load_lsp_gt(path: Path) -> np.ndarray:
    """-> gt [N, 14, 2] from `joints` 3x14xN (LSP) or 14x3xN (LSP-extended), 1-based as in the file."""
    return read_joints_mat(path)[0]


def load_predictions(path: Path, num_joints: int) -> np.ndarray:
    """-> [N, J, 2] from a .mat (`preds` N x J x 2, else `pos_pred_src` J x 2 x N) or a .npy (N x J x 2)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if not path.is_file():
            raise UserError(f"{path}: file not found")
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:  # ValueError / OSError / UnpicklingError on a bad file
            raise UserError(f"{path}: not a readable .npy file ({type(exc).__name__}: {exc})") from None
        if arr.dtype.kind not in "biuf":
            raise UserError(f"{path}: predictions are not numeric ({arr.dtype})")
        arr = arr.astype(np.float64)
        _expect(arr, (None, num_joints, 2), "predictions", path)
        return arr
    if suffix != ".mat":
        raise UserError(f"{path}: predictions must be a .mat or .npy file")
    mat = _loadmat(path)
    if "preds" in mat:
        arr = _variable(mat, "preds", path)  # people first: nothing trailing for MATLAB to drop
        _expect(arr, (None, num_joints, 2), "preds (people x joints x 2)", path)
        return arr
    if "pos_pred_src" in mat:
        arr = _variable(mat, "pos_pred_src", path, 3)
        _expect(arr, (num_joints, 2, None), "pos_pred_src (joints x 2 x people)", path)
        return arr.transpose(2, 0, 1)
    found = sorted(k for k in mat if not k.startswith("__"))
    raise UserError(f"{path}: no variable 'preds' (people x joints x 2) or 'pos_pred_src' "
                    f"(found: {', '.join(found) or 'none'})")
