"""Leeds Sports Pose: the 2000-image LSP release and LSP-extended (10000 images), one parser.

Files under `root`: `joints.mat` (one variable `joints`) and `images/`. The layout is detected by shape:

- LSP (`lsp_dataset` / `lsp_dataset_original`): 3 x 14 x N, rows x, y, flag with 0 = visible and
  1 = occluded; images `images/im0001.jpg` ... (`im%04d.jpg`, 1-based).
- LSP-extended (`lspet_dataset`): 14 x 3 x N, columns x, y, flag with 1 = visible and 0 = occluded;
  images `images/im00001.jpg` ... (`im%05d.jpg`).

Both give 14 joints in the LSP order (skeletons.LSP). Every joint carries coordinates, so visibility is
VISIBLE or OCCLUDED, never NOT_ANNOTATED. Coordinates in the files are 1-based (MATLAB): the records
hold them minus 1 (0-based pixel-centre coordinates, records.py).

Standard split of the 2000-image set: images 1-1000 train, 1001-2000 test. LSP-extended is training data
only (split "train" or "all"). `PoseRecord.index` is the 0-based position in the file (image number - 1),
also for the test split (so test records have index 1000..1999).

Centre and scale (LSP has no person box): see `center_scale_from_joints` - the centre is the middle of
the annotated joints' bounding box and `scale * 200` is 1.25 x the box's longer side. The factor makes
the value an estimate of the whole person's size (joints lie inside the body: feet, hands and head
sides reach beyond them), i.e. the same quantity as MPII's `scale_provided` (on the MPII sample the
joints' longer side is 0.72 x `scale * 200` at the median and 0.86-0.98 for upright people). The crop
enlargement (geometry.CROP_ENLARGE) is applied by the transform on top, as for every dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipelines.errors import AnnotationError, UserError
from data_pipelines.records import OCCLUDED, SCALE_UNIT_PX, VISIBLE, PoseRecord
from data_pipelines.skeletons import LSP

# Person size = this factor x the longer side of the annotated joints' bounding box.
PERSON_SIZE_FACTOR = 1.25
# Floor for that side, in pixels, so that a record with a single annotated joint still gets a scale > 0.
MIN_JOINT_EXTENT_PX = 1.0

LSP_NUM_IMAGES = 2000
LSP_TRAIN = range(0, 1000)  # 0-based positions of im0001..im1000
LSP_TEST = range(1000, 2000)  # im1001..im2000
SPLITS = ("train", "test", "all")


def center_scale_from_joints(joints, visibility,
                             factor: float = PERSON_SIZE_FACTOR) -> tuple[np.ndarray, float]:
    """Person centre and scale from the annotated joints (visibility > 0), for datasets without a box.

    centre = middle of the joints' axis-aligned bounding box (same frame as `joints`);
    scale = factor * max(box width, box height, MIN_JOINT_EXTENT_PX) / SCALE_UNIT_PX.
    Raises ValueError when no joint is annotated.
    """
    joints = np.asarray(joints, dtype=np.float64)
    annotated = np.asarray(visibility) > 0
    if not annotated.any():
        raise ValueError("center_scale_from_joints: no annotated joint")
    pts = joints[annotated]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    side = max(float((hi - lo).max()), MIN_JOINT_EXTENT_PX)
    return (lo + hi) / 2.0, factor * side / SCALE_UNIT_PX


def load_lsp(root, split: str = "all", check_images: bool = True) -> list[PoseRecord]:
    """Records of `root/joints.mat` (LSP or LSP-extended, detected by shape) for one split.

    split: "train" (im0001-im1000), "test" (im1001-im2000) or "all"; LSP-extended: "train" or "all".
    check_images: fail if an image file of the returned records is missing.
    Raises AnnotationError (naming the file) for a missing/unreadable/malformed joints.mat and UserError
    for a bad split.
    """
    root = Path(root)
    if split not in SPLITS:
        raise UserError(f"LSP split must be one of {list(SPLITS)}, got {split!r}")
    mat_path = root / "joints.mat"
    xy, visible, layout = read_joints_mat(mat_path)
    n = xy.shape[0]
    if layout == "lspet":
        if split == "test":
            raise UserError(f"{mat_path}: LSP-extended is training data only; use split 'train' or 'all'")
        positions = range(n)
    elif split == "all":
        positions = range(n)
    else:
        if n != LSP_NUM_IMAGES:
            raise AnnotationError.at(mat_path, f"the standard train/test split needs {LSP_NUM_IMAGES} "
                                               f"images, the file has {n}; use split 'all'")
        positions = LSP_TRAIN if split == "train" else LSP_TEST

    image_dir = root / "images"
    name_format = "im{:04d}.jpg" if layout == "lsp" else "im{:05d}.jpg"
    if check_images:
        if not image_dir.is_dir():
            raise AnnotationError.at(image_dir, "image folder not found")
        missing = [name_format.format(i + 1) for i in positions
                   if not (image_dir / name_format.format(i + 1)).is_file()]
        if missing:
            raise AnnotationError.at(image_dir, f"{len(missing)} image(s) of {mat_path.name} missing, "
                                                f"e.g. {', '.join(missing[:3])}")

    records = []
    for i in positions:
        joints = xy[i] - 1.0  # 1-based (MATLAB) -> 0-based pixel centres
        vis = np.where(visible[i], VISIBLE, OCCLUDED)
        center, scale = center_scale_from_joints(joints, vis)
        records.append(PoseRecord(image=str(image_dir / name_format.format(i + 1)), joints=joints,
                                  visibility=vis, center=center, scale=scale, dataset="lsp", index=i,
                                  meta={"layout": layout, "image_number": i + 1}))
    return records


def read_joints_mat(path) -> tuple[np.ndarray, np.ndarray, str]:
    """Validated content of an LSP/LSP-extended joints.mat, in the file's own (1-based) coordinates.

    Returns (xy [N, 14, 2] float64, visible [N, 14] bool, layout "lsp" or "lspet").
    """
    from scipy.io import loadmat  # scipy is slow to import; only the LSP path needs it

    path = Path(path)
    if not path.is_file():
        raise AnnotationError.at(path, "annotation file not found")
    try:
        mat = loadmat(path)
    except Exception as exc:  # scipy raises ValueError, TypeError, NotImplementedError (v7.3), ...
        raise AnnotationError.at(path, f"cannot read as a MATLAB file ({type(exc).__name__}: {exc})") from exc
    if "joints" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise AnnotationError.at(path, f"no variable 'joints' (variables: {found})")
    arr = mat["joints"]
    if not np.issubdtype(arr.dtype, np.number):
        raise AnnotationError.at(path, f"'joints' must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    nj = LSP.num_joints
    if arr.ndim == 3 and arr.shape[:2] == (3, nj):
        layout = "lsp"
        xy = arr[:2].transpose(2, 1, 0)  # [N, 14, 2]
        flag = arr[2].T  # [N, 14]
        visible_flag, occluded_flag = 0, 1
    elif arr.ndim == 3 and arr.shape[:2] == (nj, 3):
        layout = "lspet"
        xy = arr[:, :2].transpose(2, 0, 1)
        flag = arr[:, 2].T
        visible_flag, occluded_flag = 1, 0
    else:
        raise AnnotationError.at(path, f"'joints' has shape {' x '.join(map(str, arr.shape))}; expected "
                                       f"3 x {nj} x N (LSP) or {nj} x 3 x N (LSP-extended)")
    if xy.shape[0] == 0:
        raise AnnotationError.at(path, "'joints' holds no image (N = 0)")
    bad = ~np.isfinite(arr)
    if bad.any():
        img, joint = _first(~np.isfinite(xy).all(axis=2) | ~np.isfinite(flag))
        raise AnnotationError.at(path, f"'joints' has {int(bad.sum())} non-finite value(s), first at image "
                                       f"{img + 1} joint {LSP.joints[joint]!r}")
    odd = (flag != visible_flag) & (flag != occluded_flag)
    if odd.any():
        img, joint = _first(odd)
        raise AnnotationError.at(path, f"visibility flags must be 0 or 1; image {img + 1} joint "
                                       f"{LSP.joints[joint]!r} has {flag[img, joint]:g}")
    return xy.copy(), flag == visible_flag, layout


def _first(mask: np.ndarray) -> tuple[int, int]:
    img, joint = np.argwhere(mask)[0]
    return int(img), int(joint)
