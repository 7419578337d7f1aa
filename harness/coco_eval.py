"""COCO keypoint AP: object keypoint similarity (OKS) scored by pycocotools' own `COCOeval` (iouType
"keypoints"), for `harness score --protocol coco` and `harness eval` on COCO.

Nothing is re-implemented here: this module checks the two files (so that a malformed one is one clear
error naming the file and the entry, not a KeyError deep in pycocotools), hands them to `COCO.loadRes` and
`COCOeval(gt, dt, "keypoints")` with COCOeval's default parameters (all images of the ground truth, OKS
thresholds 0.50:0.05:0.95, at most 20 detections per image, the 17 COCO sigmas), and reads `stats`.

- Ground truth: a COCO keypoint annotation file (`person_keypoints_<split>2017.json`). Annotations with
  `num_keypoints` = 0 are ignored by COCOeval; crowd regions absorb detections without counting them.
- Predictions: the COCO results format, a JSON list of {"image_id", "category_id", "keypoints" (17 x [x, y,
  v], v unused), "score"}, in the file's own 0-based pixels.
- Results are in percent (COCOeval's `stats` x 100) under COCOeval's names: AP, AP50, AP75, APm, APl, AR,
  AR50, AR75, ARm, ARl. A figure COCOeval cannot compute (-1: no ground truth in that area range) is NaN.

`harness eval` predicts one pose per ground-truth person box (top-down, boxes from the annotation file, as
in COCO's "GT boxes" setting) and gives every pose the same score 1: AP then measures localisation only.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipelines.coco import coco_index, read_coco_json
from data_pipelines.errors import AnnotationError, UserError, read_json
from data_pipelines.records import PoseRecord
from data_pipelines.skeletons import COCO as COCO_SKELETON

STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")  # COCOeval.stats order
NUM_VALUES = 3 * COCO_SKELETON.num_joints


@dataclass(frozen=True)
class CocoKeypointResult:
    """COCOeval's keypoint summary in percent (NaN where COCOeval reports -1)."""

    stats: dict[str, float]
    images: int  # images evaluated (all images of the ground truth)
    people: int  # ground-truth person annotations with keypoints (not crowd, num_keypoints > 0)
    detections: int

    @property
    def ap(self) -> float:
        return self.stats["AP"]

    def headline(self) -> dict:
        """PCKResult.headline's keys: COCOeval's AP as the value, its ten stats as the groups; a PCK curve's
        area and per-joint scores do not exist here (None)."""
        return {"metric": "AP (OKS)", "value": self.ap, "auc": None, "per_joint": None,
                "groups": {k: v for k, v in self.to_json().items() if k in STAT_NAMES}}

    def to_json(self) -> dict:
        out = {"protocol": "coco", "metric": "AP (OKS)", "images": self.images, "people": self.people,
               "detections": self.detections}
        out.update({k: (v if math.isfinite(v) else None) for k, v in self.stats.items()})
        out["definitions"] = {
            "AP": "pycocotools COCOeval(iouType='keypoints').stats: AP over OKS 0.50:0.05:0.95, maxDets 20",
            "units": "percent",
        }
        return out

    def render(self):
        from rich import box
        from rich.table import Table

        table = Table(title=f"COCO keypoint AP (OKS), {self.images} images, {self.people} people, "
                            f"{self.detections} detections (%)",
                      box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True)
        for name in self.stats:
            table.add_column(name, justify="right", no_wrap=True)
        table.add_row(*("-" if not math.isfinite(v) else f"{v:.2f}" for v in self.stats.values()))
        return table


def load_ground_truth(path) -> object:
    """A `pycocotools.coco.COCO` of a keypoint annotation file, after checking every field COCOeval reads."""
    path = Path(path)
    data = read_coco_json(path)
    image_ids = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise AnnotationError.at(path, f"images[{i}]: needs an 'id'")
        image_ids.add(img["id"])
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}] (id {ann.get('id') if isinstance(ann, dict) else None})"
        if not isinstance(ann, dict):
            raise AnnotationError.at(path, f"{where}: not an object")
        missing = [k for k in ("id", "image_id", "category_id", "keypoints", "num_keypoints", "area", "bbox",
                               "iscrowd") if k not in ann]
        if missing:
            raise AnnotationError.at(path, f"{where}: missing {', '.join(missing)}")
        if ann["image_id"] not in image_ids:
            raise AnnotationError.at(path, f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        _keypoints(path, where, ann["keypoints"])
        _numbers(path, f"{where}: 'bbox'", ann["bbox"], 4)
        _numbers(path, f"{where}: 'area'", [ann["area"]], 1)
    return _coco_api(path, data)


def load_results(path, gt) -> list[dict]:
    """The detections of a COCO results file (see the module docstring for the format), each checked
    against the ground truth `gt`: a known image_id, the person category, 51 keypoint numbers, a score."""
    path = Path(path)
    results = read_json(path)
    if not isinstance(results, list):
        raise AnnotationError.at(path, "COCO results must be a JSON list of {image_id, category_id, keypoints, "
                                       f"score}}, got {type(results).__name__}")
    if not results:
        raise AnnotationError.at(path, "no detections to score")
    person = person_category(gt)
    for i, det in enumerate(results):
        where = f"detection {i}"
        if not isinstance(det, dict):
            raise AnnotationError.at(path, f"{where}: not an object")
        missing = [k for k in ("image_id", "category_id", "keypoints", "score") if k not in det]
        if missing:
            raise AnnotationError.at(path, f"{where}: missing {', '.join(missing)}")
        if det["image_id"] not in gt.imgs:
            raise AnnotationError.at(path, f"{where}: image_id {det['image_id']!r} is not in the ground truth")
        if det["category_id"] != person:
            raise AnnotationError.at(path, f"{where}: category_id {det['category_id']!r} is not the person "
                                           f"category ({person})")
        _keypoints(path, where, det["keypoints"])
        _numbers(path, f"{where}: 'score'", [det["score"]], 1)
    return results


def evaluate(gt, results: list[dict]) -> CocoKeypointResult:
    """COCOeval(gt, gt.loadRes(results), "keypoints") with default parameters -> its stats in percent.
    `results` are checked detections (`load_results`); they are copied (loadRes writes into them)."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the summary
        dt = gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(gt, dt, "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: (100.0 * float(v) if v >= 0 else math.nan) for name, v in zip(STAT_NAMES, ev.stats)}
    people = sum(1 for a in gt.dataset["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0)
    return CocoKeypointResult(stats=stats, images=len(ev.params.imgIds), people=people,
                              detections=len(results))


def score_files(gt_file, results_file) -> CocoKeypointResult:
    """`score --protocol coco`: a ground-truth annotation file against a results file."""
    gt = load_ground_truth(gt_file)
    return evaluate(gt, load_results(results_file, gt))


def score_records(records: list[PoseRecord], predictions: dict[int, np.ndarray], gt_file) -> CocoKeypointResult:
    """`eval` on COCO: predictions [17, 2] keyed by position in `records` (data_pipelines.coco records, same
    0-based pixels as the file) become one detection per record with score 1; a record without a prediction
    (unreadable image) gets no detection, so its person is missed."""
    gt = load_ground_truth(gt_file)
    person = person_category(gt)
    results = []
    for i, record in enumerate(records):
        if i not in predictions:
            continue
        xy = np.asarray(predictions[i], dtype=np.float64)
        if xy.shape != (COCO_SKELETON.num_joints, 2) or not np.isfinite(xy).all():
            raise ValueError(f"record {i}: prediction must be finite [{COCO_SKELETON.num_joints}, 2], "
                             f"got {xy.shape}")
        keypoints = np.concatenate([xy, np.ones((len(xy), 1))], axis=1).ravel()
        if record.meta.get("image_id") not in gt.imgs:
            raise ValueError(f"record {i}: image_id {record.meta.get('image_id')!r} is not in {gt_file}")
        results.append({"image_id": record.meta["image_id"], "category_id": person,
                        "keypoints": [float(v) for v in keypoints], "score": 1.0})
    if not results:
        raise ValueError("no predictions to score (every held-out image was unreadable?)")
    return evaluate(gt, results)


def person_category(gt) -> int:
    ids = gt.getCatIds(catNms=["person"])
    if len(ids) != 1:
        raise UserError(f"COCO ground truth: expected one 'person' category, found {len(ids)}")
    return ids[0]


def _coco_api(path: Path, data: dict):
    coco = coco_index(path, data)
    if len(coco.getCatIds(catNms=["person"])) != 1:
        raise AnnotationError.at(path, "expected one 'person' category")
    return coco


def _keypoints(path, where: str, values) -> None:
    _numbers(path, f"{where}: 'keypoints'", values, NUM_VALUES)


def _numbers(path, what: str, values, length: int) -> None:
    """`values` must be a list of `length` finite numbers."""
    ok = isinstance(values, list) and len(values) == length and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    if not ok:
        shown = repr(values) if len(repr(values)) < 60 else repr(values)[:57] + "..."
        raise AnnotationError.at(path, f"{what} must be {length} finite number(s), got {shown}")
