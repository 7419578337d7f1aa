"""COCO keypoint AP (harness.coco_eval, `score --protocol coco`, `eval`'s scoring) against pycocotools'
COCOeval run directly on the same small COCO-format files, against the OKS formula written out by hand, and
one clear error per malformed file."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import coco_eval
from harness.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
# the 17 per-keypoint OKS sigmas of the COCO keypoint evaluation (cocodataset.org/#keypoints-eval)
SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0


@pytest.fixture(autouse=True, scope="module")
def _pycocotools():
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("pycocotools is not installed (pip install 'satpose[coco]')")
        pytest.skip("pycocotools is not installed")


def person(ann_id, image_id, box, rng, labelled=17, crowd=False):
    """A person annotation: keypoints spread over `box` [x, y, w, h], the first `labelled` visible (v = 2 or 1),
    the rest unlabelled (0, 0, 0); area = 0.8 * box area."""
    x, y, w, h = box
    kpts = []
    for j in range(17):
        if j < labelled and not crowd:
            kpts += [float(x + rng.uniform(0.1, 0.9) * w), float(y + rng.uniform(0.1, 0.9) * h), int(1 + j % 2)]
        else:
            kpts += [0, 0, 0]
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": [float(v) for v in box],
            "area": 0.8 * w * h, "iscrowd": int(crowd), "keypoints": kpts,
            "num_keypoints": 0 if crowd else labelled}


def make_gt(rng) -> dict:
    """4 images: large and medium people, one with unlabelled joints, a crowd region, a person with no
    keypoints (ignored by COCOeval), and an image id that is not 1..N."""
    anns = [person(1, 1, (100, 50, 120, 260), rng), person(2, 1, (400, 300, 50, 60), rng, labelled=11),
            person(3, 2, (50, 40, 200, 300), rng), person(4, 2, (300, 100, 150, 200), rng, crowd=True),
            person(5, 3, (200, 200, 100, 150), rng, labelled=0), person(6, 7, (30, 30, 70, 90), rng),
            person(7, 7, (300, 120, 160, 320), rng, labelled=14)]
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in (1, 2, 3, 7)]
    names = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
             "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
             "right_knee", "left_ankle", "right_ankle"]
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "supercategory": "person", "keypoints": names,
                            "skeleton": []}]}


def perturbed(gt: dict, rng) -> list[dict]:
    """Detections: every labelled person with errors of the order of its size (so OKS straddles the AP
    thresholds), one person missed, a duplicate and a false positive with lower scores."""
    dets = []
    for ann in gt["annotations"]:
        if ann["iscrowd"] or ann["num_keypoints"] == 0 or ann["id"] == 6:  # person 6 is missed
            continue
        k = np.array(ann["keypoints"], dtype=np.float64).reshape(17, 3)
        size = math.sqrt(ann["area"])
        xy = k[:, :2] + rng.normal(0.0, rng.uniform(0.02, 0.12) * size, (17, 2))
        dets.append({"image_id": ann["image_id"], "category_id": 1, "score": float(rng.uniform(0.5, 1.0)),
                     "keypoints": [float(v) for v in np.concatenate([xy, np.ones((17, 1))], 1).ravel()]})
    dup = dict(dets[0], score=0.3, keypoints=[v + 3.0 for v in dets[0]["keypoints"]])
    fp = {"image_id": 3, "category_id": 1, "score": 0.2,
          "keypoints": [float(v) for v in np.tile([250.0, 260.0, 1.0], 17)]}
    return dets + [dup, fp]


def cocoeval_directly(gt_file: Path, dt_file: Path) -> np.ndarray:
    """What pycocotools' documentation does: COCO(gt), loadRes(results file), COCOeval keypoints."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(str(dt_file)), iouType="keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    gt = make_gt(rng)
    dets = perturbed(gt, rng)
    gt_file, dt_file = tmp_path / "person_keypoints_val2017.json", tmp_path / "results.json"
    gt_file.write_text(json.dumps(gt))
    dt_file.write_text(json.dumps(dets))
    return gt_file, dt_file, gt, dets


def assert_stats(result: coco_eval.CocoKeypointResult, stats: np.ndarray) -> None:
    assert list(result.stats) == ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
    for name, v in zip(result.stats, stats):
        if v < 0:
            assert math.isnan(result.stats[name]), name
        else:
            assert result.stats[name] == pytest.approx(100.0 * v, abs=1e-12), name


def test_ap_equals_cocoeval_run_directly(files):
    gt_file, dt_file, gt, dets = files
    stats = cocoeval_directly(gt_file, dt_file)
    assert 0.1 < stats[0] < 0.95 and stats[3] >= 0 and stats[4] >= 0  # not degenerate; medium and large
    result = coco_eval.score_files(gt_file, dt_file)
    assert_stats(result, stats)
    assert result.ap == result.stats["AP"]
    assert (result.images, result.people, result.detections) == (4, 5, len(dets))
    assert json.loads(dt_file.read_text()) == dets  # the caller's detections are not modified


def test_ap_of_one_person_follows_the_oks_formula(tmp_path):
    """One large person, one detection: OKS by hand (exp(-d^2 / (2 s^2 k^2)) averaged over labelled joints,
    s^2 = area, k = 2 sigma); COCOeval then matches at the thresholds 0.50:0.05:0.95 that OKS reaches."""
    rng = np.random.default_rng(3)
    gt = make_gt(rng)
    gt["images"], gt["annotations"] = gt["images"][:1], [dict(gt["annotations"][0])]
    k = np.array(gt["annotations"][0]["keypoints"], dtype=np.float64).reshape(17, 3)
    area = gt["annotations"][0]["area"]
    offset = 0.045 * math.sqrt(area)
    pred = k[:, :2] + offset
    e = [((pred[j, 0] - k[j, 0]) ** 2 + (pred[j, 1] - k[j, 1]) ** 2) / (2 * (2 * SIGMAS[j]) ** 2 * area)
         for j in range(17) if k[j, 2] > 0]
    oks = sum(math.exp(-x) for x in e) / len(e)
    thresholds = [0.5 + 0.05 * i for i in range(10)]
    reached = sum(oks >= t for t in thresholds)
    assert 0 < reached < 10, oks  # straddles the thresholds
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    det = {"image_id": 1, "category_id": 1, "score": 0.9,
           "keypoints": [float(v) for v in np.concatenate([pred, np.ones((17, 1))], 1).ravel()]}
    (tmp_path / "dt.json").write_text(json.dumps([det]))
    r = coco_eval.score_files(tmp_path / "gt.json", tmp_path / "dt.json")
    assert r.ap == pytest.approx(100.0 * reached / 10, abs=1e-9)
    assert r.stats["AP50"] == pytest.approx(100.0, abs=1e-9)
    assert r.stats["AP75"] == pytest.approx(100.0 if oks >= 0.75 else 0.0, abs=1e-9)
    assert math.isnan(r.stats["APm"]) and r.to_json()["APm"] is None  # no medium person: COCOeval's -1


def test_eval_scoring_of_records_equals_cocoeval(files, tmp_path):
    """`eval`'s path: data_pipelines.coco records + predictions keyed by record -> one score-1 detection per
    record, scored against the annotation file; one unreadable image leaves its person undetected."""
    from data_pipelines.coco import load_coco
    from harness.evaluate import score_records

    gt_file, _, gt, _ = files
    records = load_coco(gt_file, tmp_path)
    assert len(records) == 5
    rng = np.random.default_rng(1)
    preds = {}
    for i, r in enumerate(records):
        xy = np.where(np.isfinite(r.joints), r.joints, r.center)  # unlabelled joints: anywhere finite
        preds[i] = xy + rng.normal(0.0, 0.05 * math.sqrt(r.meta["area"]), xy.shape)
    del preds[2]  # its image was unreadable
    dets = [{"image_id": records[i].meta["image_id"], "category_id": 1, "score": 1.0,
             "keypoints": [float(v) for v in np.concatenate([p, np.ones((17, 1))], 1).ravel()]}
            for i, p in preds.items()]
    (tmp_path / "records.json").write_text(json.dumps(dets))
    result = score_records(records, preds, "coco", coco_annotations=gt_file)
    assert_stats(result, cocoeval_directly(gt_file, tmp_path / "records.json"))
    assert result.detections == 4 and result.stats["AR"] < 100.0
    with pytest.raises(ValueError, match="annotation file"):
        score_records(records, preds, "coco")


def test_score_cli_coco_json_and_table(files, capsys):
    gt_file, dt_file, _, _ = files
    proc = subprocess.run([sys.executable, "-m", "harness", "score", "--protocol", "coco", "--gt", str(gt_file),
                           "--pred", str(dt_file), "--json"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    stats = cocoeval_directly(gt_file, dt_file)
    for name, v in zip(coco_eval.STAT_NAMES, stats):
        assert out[name] == pytest.approx(100.0 * v, abs=1e-12), name
    assert out["protocol"] == "coco" and out["detections"] == 6 and out["gt"] == str(gt_file)
    assert cli_main(["score", "--protocol", "coco", "--gt", str(gt_file), "--pred", str(dt_file)]) == 0
    text = capsys.readouterr().out
    assert "COCO keypoint AP" in text and "AP50" in text and f"{100 * stats[0]:.2f}" in text


def _edit(path: Path, change) -> Path:
    data = json.loads(path.read_text())
    data = change(data)
    path.write_text(json.dumps(data))
    return path


BAD_RESULTS = {
    "not a list": (lambda d: {"annotations": d}, "must be a JSON list"),
    "empty": (lambda d: [], "no detections"),
    "no keypoints": (lambda d: [{k: v for k, v in d[0].items() if k != "keypoints"}] + d[1:],
                     "detection 0: missing keypoints"),
    "short keypoints": (lambda d: d[:2] + [dict(d[2], keypoints=d[2]["keypoints"][:50])],
                        "detection 2: 'keypoints' must be 51 finite number(s)"),
    "unknown image": (lambda d: d + [dict(d[0], image_id=99)], "detection 6: image_id 99 is not in the ground"),
    "wrong category": (lambda d: [dict(d[0], category_id=2)], "category_id 2 is not the person category"),
    "bad score": (lambda d: [dict(d[0], score="high")], "detection 0: 'score' must be 1 finite number"),
}
BAD_GT = {
    "no annotations": (lambda d: {k: v for k, v in d.items() if k != "annotations"}, "missing list 'annotations'"),
    "no num_keypoints": (lambda d: dict(d, annotations=[{k: v for k, v in a.items() if k != "num_keypoints"}
                                                        for a in d["annotations"]]),
                         "annotations[0] (id 1): missing num_keypoints"),
    "orphan annotation": (lambda d: dict(d, annotations=d["annotations"] + [dict(d["annotations"][0], image_id=5)]),
                          "annotations[7] (id 1): image_id 5 is not in 'images'"),
    "no person": (lambda d: dict(d, categories=[dict(d["categories"][0], name="dog")]),
                  "expected one 'person' category"),
}


@pytest.mark.parametrize("case", list(BAD_RESULTS) + [f"gt: {k}" for k in BAD_GT] + ["not json", "threshold"])
def test_malformed_input_is_one_error_line(files, capsys, case):
    gt_file, dt_file, _, _ = files
    extra = []
    if case in BAD_RESULTS:
        change, message = BAD_RESULTS[case]
        named = _edit(dt_file, change)
    elif case.startswith("gt: "):
        change, message = BAD_GT[case[4:]]
        named = _edit(gt_file, change)
    elif case == "not json":
        dt_file.write_text('[{"image_id": 1,')
        named, message = dt_file, "invalid JSON at line 1"
    else:
        named, message, extra = None, "--threshold does not apply to --protocol coco", ["--threshold", "0.5"]
    code = cli_main(["score", "--protocol", "coco", "--gt", str(gt_file), "--pred", str(dt_file), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert message in err[0], err[0]
    if named is not None:
        assert str(named) in err[0]


def test_eval_command_scores_coco_against_the_split_annotation_file(files, tmp_path, capsys, monkeypatch):
    """`harness eval` on a COCO checkpoint finds <root>/annotations/person_keypoints_val2017.json and prints
    COCOeval's AP for its predictions (the model's forward pass is replaced by known predictions here: the
    test is about the scoring path, not the weights)."""
    import torch

    from data_pipelines.coco import load_coco
    from harness import evaluate
    from harness.config import load_config
    from models.hourglass import StackedHourglass

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    gt_file = root / "annotations" / "person_keypoints_val2017.json"
    gt_file.write_text(files[0].read_text())
    records = load_coco(gt_file, root / "val2017")
    rng = np.random.default_rng(5)
    preds = {i: np.where(np.isfinite(r.joints), r.joints, r.center)
             + rng.normal(0.0, 0.06 * math.sqrt(r.meta["area"]), (17, 2)) for i, r in enumerate(records)}
    monkeypatch.setattr(evaluate, "predict_dataset", lambda *args, **kwargs: preds)
    cfg = load_config(None, None, ["data.name=coco", f"data.root={root}", "data.input_size=64",
                                   "data.heatmap_size=16", "data.num_workers=0", "model.stacks=1",
                                   "model.features=16"])
    generator = StackedHourglass(num_stacks=1, num_joints=17, features=16, num_residual=cfg.model.residuals)
    state = {"generator": generator.state_dict(), "discriminator": None, "optim_g": {},
             "optim_d": {}, "step": 0, "epoch": 0, "config": cfg.to_dict()}
    torch.save(state, tmp_path / "ck.pt")
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "ck.pt"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    dets = [{"image_id": records[i].meta["image_id"], "category_id": 1, "score": 1.0,
             "keypoints": [float(v) for v in np.concatenate([p, np.ones((17, 1))], 1).ravel()]}
            for i, p in preds.items()]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    stats = cocoeval_directly(gt_file, tmp_path / "dets.json")
    assert 0.1 < stats[0] < 1.0
    for name, v in zip(coco_eval.STAT_NAMES, stats):
        assert out[name] == pytest.approx(100.0 * v, abs=1e-12), name
    assert out["detections"] == 5 and out["protocol"] == "coco"


# ------------------------------------------------------------------------------------------------
# Training-time validation on COCO (real LSP people written out in COCO's layout)

# COCO keypoint k <- LSP joint LSP_OF[k]; the face (nose, eyes, ears) has no LSP joint and stays unlabelled.
LSP_OF = {5: 9, 6: 8, 7: 10, 8: 7, 9: 11, 10: 6, 11: 3, 12: 2, 13: 4, 14: 1, 15: 5, 16: 0}


def lsp_as_coco(lsp_root: Path, root: Path, split: str, lsp_split: str, count: int) -> Path:
    """`count` real LSP images and their people as a COCO keypoint split under `root` (the standard layout:
    annotations/person_keypoints_<split>2017.json, <split>2017/<id>.jpg as links). Box = the labelled joints'
    extent grown by 15% a side, clipped to the image; area = the box's (OKS's scale)."""
    from PIL import Image

    from data_pipelines.registry import load_records
    from data_pipelines.skeletons import COCO

    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for n, rec in enumerate(load_records("lsp", lsp_root, lsp_split)[:count], start=1):
        width, height = Image.open(rec.image).size
        file_name = f"{n:012d}.jpg"
        (root / f"{split}2017" / file_name).symlink_to(rec.image)
        kpts = np.zeros((17, 3))
        for k, j in LSP_OF.items():
            if np.isfinite(rec.joints[j]).all():
                kpts[k] = [*rec.joints[j], 2]
        xy = kpts[kpts[:, 2] > 0, :2]
        (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
        pad_x, pad_y = 0.15 * (x1 - x0), 0.15 * (y1 - y0)
        x0, y0 = max(0.0, x0 - pad_x), max(0.0, y0 - pad_y)
        x1, y1 = min(width - 1.0, x1 + pad_x), min(height - 1.0, y1 + pad_y)
        images.append({"id": n, "file_name": file_name, "width": width, "height": height})
        annotations.append({"id": 100 + n, "image_id": n, "category_id": 1, "iscrowd": 0,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                            "num_keypoints": int((kpts[:, 2] > 0).sum()),
                            "keypoints": [float(v) for v in kpts.ravel()]})
    path = root / "annotations" / f"person_keypoints_{split}2017.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [
        {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO.joints), "skeleton": []}]}))
    return path


COCO_TINY = ["data.name=coco", "data.input_size=64", "data.heatmap_size=16", "data.num_workers=0",
             "data.flip=false", "model.stacks=1", "model.features=16", "discriminator.features=16",
             "train.batch_size=4", "train.threads=1", "train.log_every=1", "train.device=cpu"]


def test_validator_scores_coco_with_cocoeval_against_the_split_file(tmp_path, lsp_root, monkeypatch):
    """Training-time validation on COCO: keypoint AP of G's predictions against the val split's annotation
    file, the very figure COCOeval gives run directly on the same predictions; the best score follows it,
    and the "val" event carries it with no AUC (the forward pass is replaced by known predictions near the
    truth, so AP is neither 0 nor 100: the test is about the scoring path)."""
    from harness import validator as validator_module
    from harness.config import load_config
    from harness.data import RunData
    from harness.distributed import init_runtime
    from harness.sinks.base import Sink, Sinks

    root = tmp_path / "coco"
    gt_file = lsp_as_coco(lsp_root, root, "val", "test", 12)
    cfg = load_config(None, None, [*COCO_TINY, f"data.root={root}"])
    data = RunData(cfg, train=False)
    assert data.val_annotations == gt_file and len(data.val_records) == 12
    rng = np.random.default_rng(3)
    preds = {i: np.where(np.isfinite(r.joints), r.joints, r.center)
             + rng.normal(0.0, 0.05 * math.sqrt(r.meta["area"]), (17, 2)) for i, r in enumerate(data.val_records)}
    monkeypatch.setattr(validator_module, "predict_dataset", lambda *args, **kwargs: preds)

    class Events(Sink):
        def __init__(self):
            self.rows, self.lines = [], []

        def record(self, kind, fields):
            self.rows.append((kind, fields))

        def info(self, message):
            self.lines.append(message)

    events = Events()
    v = validator_module.Validator(cfg, data, init_runtime("cpu"), Sinks([events]), batch_size=4)
    assert v.run(generator=None, step=7) is True
    dets = [{"image_id": data.val_records[i].meta["image_id"], "category_id": 1, "score": 1.0,
             "keypoints": [float(x) for x in np.concatenate([p, np.ones((17, 1))], 1).ravel()]}
            for i, p in preds.items()]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    ap = 100.0 * cocoeval_directly(gt_file, tmp_path / "dets.json")[0]
    assert 5.0 < ap < 95.0
    (kind, row), = events.rows
    assert kind == "val" and row["metric"] == "AP (OKS)" and row["auc"] is None and row["per_joint"] is None
    assert row["value"] == pytest.approx(ap, abs=1e-9) and v.best == {"value": pytest.approx(ap, abs=1e-9), "step": 7}
    assert events.lines == [f"val step=7 AP (OKS)={ap:.2f} best={ap:.2f}@7"]


def test_training_on_coco_reports_keypoint_ap_and_eval_agrees(tmp_path, lsp_root):
    """A real run on COCO-layout data (real LSP images): its validations and summary.json report COCOeval's
    AP (they raised "pass coco_annotations" at the first validation before), and `harness eval` of the best
    checkpoint gives the same figure."""
    root = tmp_path / "coco"
    lsp_as_coco(lsp_root, root, "train", "train", 16)
    lsp_as_coco(lsp_root, root, "val", "test", 8)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "harness", "train", "--run-dir", str(run), *COCO_TINY, f"data.root={root}",
           "train.max_steps=2"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["metric"] == "AP (OKS)" and summary["protocol"] == "coco" and summary["auc"] is None
    assert set(summary["groups"]) == set(coco_eval.STAT_NAMES) and summary["value"] == summary["groups"]["AP"]
    vals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in vals if r["kind"] == "val"]
    assert [(r["step"], r["metric"], r["value"]) for r in vals] == [(2, "AP (OKS)", summary["value"])]
    assert "COCO keypoint AP (OKS), 8 images, 8 people" in res.stdout
    res = subprocess.run([sys.executable, "-m", "harness", "eval", "--checkpoint",
                          str(run / "checkpoints" / "best.pt"), "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout)["AP"] == pytest.approx(summary["value"], abs=1e-9)
