"""COCO person keypoints (17 joints, skeletons.COCO) through pycocotools.

One record per person annotation that is not a crowd region and has at least one labelled keypoint
(`num_keypoints` > 0), in the order of the file's `annotations` list (`PoseRecord.index` = position in
that list, so indices have gaps where annotations were skipped).

Conventions:
- keypoints [x1, y1, v1, ...] are used as they are: COCO is 0-based and its evaluation (OKS) compares
  predictions and ground truth in the same frame, so no shift is applied (records.ONE_BASED excludes it).
  Visibility v = 0/1/2 maps directly to NOT_ANNOTATED / OCCLUDED / VISIBLE; joints with v = 0 (written
  as 0, 0 in the file) get NaN coordinates, so that no code can use them by mistake.
- centre and scale come from the box `bbox` [x, y, w, h], first clipped to the image [0, W] x [0, H]
  (annotations whose clipped box is empty are skipped): centre = (x + w/2, y + h/2); the box is then
  grown in one direction to the crop's aspect ratio `aspect_ratio` = crop width / crop height (w > a*h:
  h = w / a, else w = a*h) and scale = h / 200. For the default square crop this is max(w, h) / 200. The
  crop enlargement (geometry.CROP_ENLARGE) is left to the transform, as for every dataset.
- meta: image_id, annotation_id, bbox (clipped, [x, y, w, h]), area, image_width, image_height,
  num_keypoints.

Standard files: `<root>/annotations/person_keypoints_<split>2017.json` with images in `<root>/<split>2017`
(or `<root>/images/<split>2017`); see `coco_paths`.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from data_pipelines.errors import AnnotationError, UserError, read_json
from data_pipelines.records import SCALE_UNIT_PX, PoseRecord
from data_pipelines.skeletons import COCO

SPLITS = ("train", "val")


def coco_paths(root, split: str, year: int = 2017) -> tuple[Path, Path]:
    """(annotation file, image folder) of the standard COCO layout under `root`."""
    if split not in SPLITS:
        raise UserError(f"COCO split must be one of {list(SPLITS)}, got {split!r}")
    root = Path(root)
    ann = root / "annotations" / f"person_keypoints_{split}{year}.json"
    images = root / f"{split}{year}"
    if not images.is_dir() and (root / "images" / f"{split}{year}").is_dir():
        images = root / "images" / f"{split}{year}"
    return ann, images


def load_coco(annotation_file, image_dir, aspect_ratio: float = 1.0) -> list[PoseRecord]:
    """Person records of a COCO keypoint annotation file (see the module docstring for the rules)."""
    if not (np.isfinite(aspect_ratio) and aspect_ratio > 0):
        raise UserError(f"COCO aspect_ratio must be > 0, got {aspect_ratio}")
    path = Path(annotation_file)
    data = read_coco_json(path)
    coco = coco_index(path, data)
    person_ids = coco.getCatIds(catNms=["person"])
    if len(person_ids) != 1:
        raise AnnotationError.at(path, f"expected one 'person' category, found {len(person_ids)}")
    person = coco.loadCats(person_ids)[0]
    if len(person.get("keypoints", [])) != COCO.num_joints:
        raise AnnotationError.at(path, f"the person category lists {len(person.get('keypoints', []))} "
                                       f"keypoints, expected {COCO.num_joints}")
    image_dir = Path(image_dir)
    records = []
    for pos, ann in enumerate(data["annotations"]):
        if ann.get("category_id") != person_ids[0] or ann.get("iscrowd", 0):
            continue
        where = f"annotation {pos} (id {ann.get('id')})"
        kpts = _keypoints(path, where, ann)
        labelled = int(np.count_nonzero(kpts[:, 2]))
        if int(ann.get("num_keypoints", labelled)) == 0 or labelled == 0:
            continue
        image_id = ann.get("image_id")
        if image_id not in coco.imgs:
            raise AnnotationError.at(path, f"{where}: image_id {image_id!r} is not in 'images'")
        img = coco.imgs[image_id]
        width, height = _image_size(path, img)
        box = _clipped_box(path, where, ann, width, height)
        if box is None:
            continue
        x, y, w, h = box
        center = np.array([x + w / 2.0, y + h / 2.0])
        if w > aspect_ratio * h:
            h = w / aspect_ratio
        scale = h / SCALE_UNIT_PX
        records.append(PoseRecord(
            image=str(image_dir / img["file_name"]),
            joints=np.where(kpts[:, 2:] > 0, kpts[:, :2], np.nan), visibility=kpts[:, 2].astype(np.int8),
            center=center, scale=scale, dataset="coco", index=pos,
            meta={"image_id": image_id, "annotation_id": ann.get("id"), "bbox": list(box),
                  "area": float(ann.get("area", 0.0)), "image_width": width, "image_height": height,
                  "num_keypoints": labelled}))
    return records


def read_coco_json(path: Path) -> dict:
    """A COCO annotation file's top level: a JSON object with the lists images, annotations, categories."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise AnnotationError.at(path, f"expected a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError.at(path, f"missing list {key!r}")
    return data


def coco_index(path: Path, data: dict):
    """pycocotools' COCO object over already-read annotation data; a malformed structure is an
    AnnotationError naming the file."""
    try:
        from pycocotools.coco import COCO as CocoApi
    except ImportError as exc:
        raise UserError("reading COCO needs pycocotools: pip install 'satpose[coco]'") from exc
    coco = CocoApi()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            coco.createIndex()
    except (KeyError, TypeError) as exc:
        raise AnnotationError.at(path, f"malformed COCO structure ({type(exc).__name__}: {exc})") from exc
    return coco


def _keypoints(path: Path, where: str, ann: dict) -> np.ndarray:
    try:
        kpts = np.asarray(ann["keypoints"], dtype=np.float64)
    except KeyError:
        raise AnnotationError.at(path, f"{where}: no 'keypoints'") from None
    except (TypeError, ValueError):
        raise AnnotationError.at(path, f"{where}: 'keypoints' must be a list of numbers") from None
    if kpts.shape != (3 * COCO.num_joints,):
        raise AnnotationError.at(path, f"{where}: 'keypoints' has shape {kpts.shape}, expected "
                                       f"({3 * COCO.num_joints},) = {COCO.num_joints} x [x, y, v]")
    if not np.isfinite(kpts).all():
        raise AnnotationError.at(path, f"{where}: 'keypoints' holds non-finite values")
    kpts = kpts.reshape(COCO.num_joints, 3)
    if not np.isin(kpts[:, 2], (0, 1, 2)).all():
        raise AnnotationError.at(path, f"{where}: visibility flags must be 0, 1 or 2, got "
                                       f"{sorted(set(kpts[:, 2].tolist()))}")
    return kpts


def _image_size(path: Path, img: dict) -> tuple[int, int]:
    try:
        width, height = int(img["width"]), int(img["height"])
    except (KeyError, TypeError, ValueError):
        raise AnnotationError.at(path, f"image {img.get('id')!r}: needs integer 'width' and "
                                       f"'height'") from None
    if width <= 0 or height <= 0 or "file_name" not in img:
        raise AnnotationError.at(path, f"image {img.get('id')!r}: bad size {width}x{height} or "
                                       f"no 'file_name'")
    return width, height


def _clipped_box(path: Path, where: str, ann: dict, width: int, height: int):
    try:
        x, y, w, h = (float(v) for v in ann["bbox"])
    except (KeyError, TypeError, ValueError):
        raise AnnotationError.at(path, f"{where}: 'bbox' must be [x, y, w, h]") from None
    if not all(np.isfinite((x, y, w, h))):
        raise AnnotationError.at(path, f"{where}: 'bbox' holds non-finite values")
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2 - x1, y2 - y1
