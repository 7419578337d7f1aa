"""Dataset parsers (LSP, LSP-extended, MPII JSON + official validation order, COCO) and the registry.

References are plain Python loops over the raw files; the real LSP and MPII files come from the
conftest fixtures (never copied into the repo).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
from PIL import Image

from data_pipelines.coco import load_coco
from data_pipelines.errors import AnnotationError, UserError
from data_pipelines.lsp import center_scale_from_joints, load_lsp
from data_pipelines.mpii import (
    hourglass_center,
    load_mpii,
    load_validation_gt,
    match_validation_order,
)
from data_pipelines.records import NOT_ANNOTATED, OCCLUDED, VISIBLE
from data_pipelines.registry import SYNTHETIC_TEST_FIRST, load_records, skeleton_for
from data_pipelines.skeletons import COCO, LSP, MPII

MPII_SAMPLE = "annotations_sample.json"
MPII_GT = "valid_gt_with_reference_preds.mat"


# ------------------------------------------------------------------------------------------------
# LSP (real file)


@pytest.fixture(scope="module")
def lsp_all(lsp_root):
    return load_lsp(lsp_root, "all")


@pytest.fixture(scope="module")
def lsp_raw(lsp_root):
    return sio.loadmat(lsp_root / "joints.mat")["joints"]


def test_lsp_real_records_match_raw_file(lsp_all, lsp_raw, lsp_root):
    assert len(lsp_all) == 2000
    for i, rec in enumerate(lsp_all):
        assert rec.index == i and rec.dataset == "lsp" and rec.meta["layout"] == "lsp"
        assert rec.image == str(lsp_root / "images" / f"im{i + 1:04d}.jpg")
        for j in range(14):
            assert rec.joints[j, 0] == lsp_raw[0, j, i] - 1.0  # 1-based -> 0-based
            assert rec.joints[j, 1] == lsp_raw[1, j, i] - 1.0
            assert rec.visibility[j] == (VISIBLE if lsp_raw[2, j, i] == 0 else OCCLUDED)
    # both flag values occur in the real file, so the mapping above was exercised both ways
    vis = np.concatenate([r.visibility for r in lsp_all])
    assert (vis == OCCLUDED).any() and (vis == VISIBLE).any() and not (vis == NOT_ANNOTATED).any()


def test_lsp_splits(lsp_root, lsp_all):
    train, test = load_lsp(lsp_root, "train"), load_lsp(lsp_root, "test")
    assert [r.index for r in train] == list(range(1000))
    assert [r.index for r in test] == list(range(1000, 2000))
    assert Path(train[-1].image).name == "im1000.jpg" and Path(test[0].image).name == "im1001.jpg"
    np.testing.assert_array_equal(test[5].joints, lsp_all[1005].joints)
    with pytest.raises(UserError, match="split"):
        load_lsp(lsp_root, "valid")


def test_lsp_joints_inside_real_images(lsp_all, lsp_root):
    """Every joint lies on its image (sizes read from the JPEG headers, checked against crops.tsv).

    Tolerance 0.5 px beyond the outer pixel edge: the annotation of im0126 is 0.34 px below the last row,
    its crop being clipped at the original image's border (the original annotation leaves the image).
    """
    with open(lsp_root / "crops.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    sizes = {row["image"]: (int(row["width"]), int(row["height"])) for row in rows}
    worst = {0.0: -math.inf, 1.0: -math.inf}  # how far joints leave the image: records, records + 1 (raw)
    for rec in lsp_all:
        with Image.open(rec.image) as im:
            w, h = im.size
        assert sizes[Path(rec.image).name] == (w, h)
        for shift in worst:
            pts = rec.joints + shift
            beyond = max(float((-0.5 - pts.min(axis=0)).max()),
                         float((pts.max(axis=0) - [w - 0.5, h - 0.5]).max()))
            worst[shift] = max(worst[shift], beyond)
    assert worst[0.0] <= 0.5, worst
    # the raw 1-based values would leave the images by more than the tolerance: the shift is needed
    assert worst[1.0] > 0.5, worst


def test_lsp_center_scale_rule(lsp_all):
    for rec in lsp_all[::50]:
        xs, ys = [p[0] for p in rec.joints], [p[1] for p in rec.joints]
        cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
        side = max(max(xs) - min(xs), max(ys) - min(ys))
        assert rec.center[0] == pytest.approx(cx) and rec.center[1] == pytest.approx(cy)
        assert rec.scale == pytest.approx(1.25 * side / 200.0)
    with pytest.raises(ValueError, match="no annotated joint"):
        center_scale_from_joints(np.zeros((14, 2)), np.zeros(14))


def _write_mat(path: Path, joints) -> Path:
    sio.savemat(path, {"joints": np.asarray(joints, dtype=np.float64)})
    return path


def _touch_images(root: Path, names) -> None:
    (root / "images").mkdir(exist_ok=True)
    for n in names:
        (root / "images" / n).write_bytes(b"")


def test_lsp_extended_layout(tmp_path):
    rng = np.random.default_rng(0)
    raw = np.zeros((14, 3, 5))
    raw[:, :2] = rng.uniform(1, 300, (14, 2, 5))
    raw[:, 2] = rng.integers(0, 2, (14, 5))  # LSP-extended: 1 = visible
    _write_mat(tmp_path / "joints.mat", raw)
    _touch_images(tmp_path, [f"im{i:05d}.jpg" for i in range(1, 6)])
    recs = load_lsp(tmp_path, "train")
    assert len(recs) == 5 and recs[0].meta["layout"] == "lspet"
    for i, rec in enumerate(recs):
        assert Path(rec.image).name == f"im{i + 1:05d}.jpg"
        for j in range(14):
            assert tuple(rec.joints[j]) == (raw[j, 0, i] - 1, raw[j, 1, i] - 1)
            assert rec.visibility[j] == (VISIBLE if raw[j, 2, i] == 1 else OCCLUDED)
    assert len(load_lsp(tmp_path, "all")) == 5
    with pytest.raises(UserError, match="training data only"):
        load_lsp(tmp_path, "test")
    (tmp_path / "images" / "im00003.jpg").unlink()
    with pytest.raises(AnnotationError, match=r"images: 1 image\(s\) of joints.mat missing, e.g. im00003"):
        load_lsp(tmp_path, "all")
    assert len(load_lsp(tmp_path, "all", check_images=False)) == 5


def _good_lsp(n=4, row=None, joint=None, image=None, value=None):
    """A valid 3 x 14 x n LSP array, optionally with raw[row, joint, image] = value."""
    raw = np.ones((3, 14, n)) * 10
    raw[2] = 0
    if value is not None:
        raw[row, joint, image] = value
    return raw


@pytest.mark.parametrize("content, message", [
    (None, "annotation file not found"),
    (b"not a mat file at all", "cannot read as a MATLAB file"),
    ({"points": _good_lsp()}, r"no variable 'joints' \(variables: \['points'\]\)"),
    ({"joints": np.ones((3, 13, 4))}, "'joints' has shape 3 x 13 x 4; expected 3 x 14 x N"),
    ({"joints": np.ones((2, 14, 4))}, "'joints' has shape 2 x 14 x 4"),
    ({"joints": np.ones((3, 14))}, "'joints' has shape 3 x 14;"),
    ({"joints": np.ones((3, 14, 0))}, "holds no image"),
    ({"joints": _good_lsp(row=1, joint=1, image=2, value=np.nan)},
     "1 non-finite value\\(s\\), first at image 3 joint 'rkne'"),
    ({"joints": _good_lsp(row=2, joint=13, image=0, value=2)},
     "visibility flags must be 0 or 1; image 1 joint 'head' has 2"),
    ({"joints": np.array([["a"] * 4] * 3)}, "must be numeric"),
])
def test_lsp_malformed_files(tmp_path, content, message):
    path = tmp_path / "joints.mat"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        sio.savemat(path, content)
    with pytest.raises(AnnotationError, match=message) as info:
        load_lsp(tmp_path, "all", check_images=False)
    assert str(info.value).startswith(str(path)) and info.value.path == str(path)
    assert isinstance(info.value, UserError)


def test_lsp_standard_split_needs_2000_images(tmp_path):
    _write_mat(tmp_path / "joints.mat", _good_lsp(7))
    with pytest.raises(AnnotationError, match="needs 2000 images, the file has 7"):
        load_lsp(tmp_path, "train", check_images=False)
    assert len(load_lsp(tmp_path, "all", check_images=False)) == 7


# ------------------------------------------------------------------------------------------------
# MPII (real sample JSON and official validation GT)


@pytest.fixture(scope="module")
def mpii_raw(mpii_root):
    with open(mpii_root / MPII_SAMPLE) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def mpii_gt(mpii_root):
    return load_validation_gt(mpii_root / MPII_GT)


def test_mpii_sample_records_match_raw_json(mpii_root, mpii_raw):
    recs = load_mpii(mpii_root / MPII_SAMPLE, image_dir="/imgs")
    assert len(recs) == len(mpii_raw) == 168
    counts = {NOT_ANNOTATED: 0, OCCLUDED: 0, VISIBLE: 0}
    for pos, (rec, raw) in enumerate(zip(recs, mpii_raw)):
        assert rec.image == str(Path("/imgs") / raw["img_paths"]) and rec.dataset == "mpii"
        assert rec.meta["json_position"] == pos
        assert rec.meta["split"] == ("valid" if raw["isValidation"] else "train")
        assert tuple(rec.center) == (raw["objpos"][0] - 1, raw["objpos"][1] - 1)
        assert rec.scale == raw["scale_provided"]
        assert rec.meta["image_width"] == raw["img_width"] and rec.meta["people_index"] == raw["people_index"]
        for j, (x, y, v) in enumerate(raw["joint_self"]):
            if x == 0 and y == 0:
                assert rec.visibility[j] == NOT_ANNOTATED and np.isnan(rec.joints[j]).all()
            else:
                assert tuple(rec.joints[j]) == (x - 1, y - 1)
                assert rec.visibility[j] == (VISIBLE if v == 1 else OCCLUDED)
            counts[int(rec.visibility[j])] += 1
    assert all(c > 0 for c in counts.values()), counts  # every case occurs in the sample


def test_mpii_keeps_real_annotations_outside_the_image(mpii_root, mpii_raw):
    """Head tops above the image (y < 1, even negative) are annotations, not missing joints."""
    recs = load_mpii(mpii_root / MPII_SAMPLE)
    found = 0
    for rec, raw in zip(recs, mpii_raw):
        for j, (x, y, _) in enumerate(raw["joint_self"]):
            if y < 1 and not (x == 0 and y == 0):
                assert rec.visibility[j] != NOT_ANNOTATED and rec.joints[j, 1] == y - 1
                found += 1
    assert found > 0


def test_mpii_splits(mpii_root, mpii_raw):
    train = load_mpii(mpii_root / MPII_SAMPLE, split="train")
    valid = load_mpii(mpii_root / MPII_SAMPLE, split="valid")
    n_valid = sum(1 for r in mpii_raw if r["isValidation"])
    assert len(valid) == n_valid and len(train) == len(mpii_raw) - n_valid
    assert [r.index for r in valid] == list(range(n_valid))
    assert [r.index for r in train] == list(range(len(train)))
    assert all(r.meta["split"] == "valid" for r in valid)
    with pytest.raises(UserError, match="split"):
        load_mpii(mpii_root / MPII_SAMPLE, split="test")


def test_mpii_validation_order_matches_official_mat(mpii_root, mpii_raw, mpii_gt):
    """The sample's validation people are GT columns 0..15 in JSON order; each record's joints equal
    pos_gt_src of its column (reference: raw .mat values, loops)."""
    raw = sio.loadmat(mpii_root / MPII_GT)
    assert mpii_gt.num_people == raw["pos_gt_src"].shape[2] == 2958
    valid = load_mpii(mpii_root / MPII_SAMPLE, split="valid")
    ordered = match_validation_order(valid, mpii_gt)
    assert [r.index for r in ordered] == list(range(len(valid)))
    assert [r.image for r in ordered] == [r.image for r in valid]
    for rec in ordered:
        k, compared = rec.index, 0
        for j in range(16):
            if rec.visibility[j] != NOT_ANNOTATED and not raw["jnt_missing"][j, k]:
                assert abs(rec.joints[j, 0] - (raw["pos_gt_src"][j, 0, k] - 1)) < 1e-3
                assert abs(rec.joints[j, 1] - (raw["pos_gt_src"][j, 1, k] - 1)) < 1e-3
                compared += 1
        assert compared >= 8
        hb = raw["headboxes_src"][:, :, k]
        assert rec.meta["headbox"].tolist() == [[hb[0, 0] - 1, hb[0, 1] - 1], [hb[1, 0] - 1, hb[1, 1] - 1]]
        assert rec.meta["gt_max_error_px"] < 1e-3
    # one sample person has two ankles that the official GT marks missing; reported, still matched
    differs = {Path(r.image).name: r.meta["gt_annotation_differs"]
               for r in ordered if r.meta["gt_annotation_differs"]}
    assert differs == {"004645041.jpg": ["rank", "lank"]}


def test_mpii_validation_order_without_position_hint(mpii_root, mpii_gt):
    """Shuffled input with unknown indices (-1) is matched by search and comes back in GT order."""
    valid = load_mpii(mpii_root / MPII_SAMPLE, split="valid")
    shuffled = [replace(r, index=-1) for r in valid[::-1]]
    ordered = match_validation_order(shuffled, mpii_gt)
    assert [r.index for r in ordered] == list(range(len(valid)))
    assert [r.image for r in ordered] == [r.image for r in valid]
    wrong_hint = [replace(r, index=(r.index + 1) % len(valid)) for r in valid]
    assert [r.index for r in match_validation_order(wrong_hint, mpii_gt)] == list(range(len(valid)))


def test_mpii_validation_order_errors(mpii_root, mpii_gt):
    recs = load_mpii(mpii_root / MPII_SAMPLE)
    train = [r for r in recs if r.meta["split"] == "train"]
    valid = [r for r in recs if r.meta["split"] == "valid"]
    with pytest.raises(AnnotationError, match=r"no validation person matches .*015601864.jpg \(JSON"):
        match_validation_order(train[:1], mpii_gt)
    with pytest.raises(AnnotationError, match="both match person 0"):
        match_validation_order([valid[0], valid[0]], mpii_gt)
    with pytest.raises(AnnotationError, match=f"{mpii_gt.num_people - 16} of 2958 validation people have no"):
        match_validation_order(valid, mpii_gt, require_complete=True)


def test_mpii_hourglass_center(mpii_root):
    rec = load_mpii(mpii_root / MPII_SAMPLE)[0]
    np.testing.assert_allclose(hourglass_center(rec), [rec.center[0], rec.center[1] + 15 * rec.scale])


def _mpii_item(**over):
    item = {"img_paths": "a.jpg", "objpos": [100.0, 120.0], "scale_provided": 2.0, "isValidation": 0.0,
            "joint_self": [[10.0 + j, 20.0 + j, 1.0] for j in range(16)]}
    item.update(over)
    return item


def test_mpii_root_wrapper_and_missing_objpos(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"root": [_mpii_item(), _mpii_item(objpos=[-1, -1])]}))
    a, b = load_mpii(path)
    np.testing.assert_array_equal(a.center, [99.0, 119.0])
    assert b.meta["objpos_missing"] and tuple(b.center) == (9 + 7.5, 19 + 7.5)  # joint box middle, 0-based


@pytest.mark.parametrize("text, message", [
    (None, "annotation file not found"),
    ('[{"img_paths": "a.jpg",', "invalid JSON at line 1 column"),
    ('{"people": []}', "expected a JSON list of person records"),
    (json.dumps([5]), "record 0: expected an object, got int"),
    (json.dumps([_mpii_item(), _mpii_item(isValidation=2)]),
     "record 1: 'isValidation' must be 0 or 1, got 2"),
    (json.dumps([{k: v for k, v in _mpii_item().items() if k != "joint_self"}]),
     "record 0: missing key 'joint_self'"),
    (json.dumps([_mpii_item(joint_self=[[1.0, 2.0, 1.0]] * 15)]),
     r"'joint_self' must be numbers of shape \(16, 3\)"),
    (json.dumps([_mpii_item(joint_self=[[1.0, 2.0]] * 16)]), r"got shape \(16, 2\)"),
    (json.dumps([_mpii_item(joint_self=[[1, 2, 1]] * 15 + [[1, 2]])]), "non-numeric or ragged"),
    (json.dumps([_mpii_item(objpos=[float("nan"), 1.0])]), "'objpos' holds non-finite values"),
    (json.dumps([_mpii_item(scale_provided=0)]), r"record 0 \(a.jpg\): 'scale_provided' must be > 0"),
    (json.dumps([_mpii_item(joint_self=[[10.0, 20.0, 3.0]] * 16)]),
     "joint flags must be 0 or 1, got \\[3.0\\]"),
    (json.dumps([_mpii_item(img_paths=7)]), "'img_paths' must be a file name"),
])
def test_mpii_malformed_json(tmp_path, text, message):
    path = tmp_path / "mpii.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(AnnotationError, match=message) as info:
        load_mpii(path)
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize("change, message", [
    ({"pos_gt_src": None}, "no variable 'pos_gt_src'"),
    ({"pos_gt_src": np.zeros((16, 3, 4))}, r"'pos_gt_src' has shape \(16, 3, 4\)"),
    ({"jnt_missing": np.zeros((16, 5))}, r"'jnt_missing' has shape \(16, 5\), expected \(16, 4\)"),
    ({"headboxes_src": np.zeros((2, 2, 3))}, r"'headboxes_src' has shape"),
    ({"jnt_missing": np.full((16, 4), 2)}, "only 0 and 1"),
])
def test_mpii_malformed_gt_mat(tmp_path, change, message):
    content = {"pos_gt_src": np.zeros((16, 2, 4)), "jnt_missing": np.zeros((16, 4)),
               "headboxes_src": np.zeros((2, 2, 4))}
    content.update(change)
    path = tmp_path / "gt.mat"
    sio.savemat(path, {k: v for k, v in content.items() if v is not None})
    with pytest.raises(AnnotationError, match=message) as info:
        load_validation_gt(path)
    assert str(info.value).startswith(str(path))


# ------------------------------------------------------------------------------------------------
# COCO (tiny file written here)


def _kpts(n_labelled: int, v: int = 2, offset: float = 0.0) -> list[float]:
    out = []
    for j in range(17):
        out += [50.0 + 3 * j + offset, 60.0 + 2 * j, v] if j < n_labelled else [0.0, 0.0, 0]
    return out


def _coco_dict():
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
                   {"id": 2, "file_name": "b.jpg", "width": 300, "height": 300}],
        "categories": [{"id": 1, "name": "person", "keypoints": list(COCO.joints), "skeleton": []},
                       {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "num_keypoints": 17,
             "bbox": [40.0, 20.0, 60.0, 30.0], "area": 1800.0, "keypoints": _kpts(17)},
            {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 1, "num_keypoints": 5,
             "bbox": [0.0, 0.0, 10.0, 10.0], "area": 100.0, "keypoints": _kpts(5)},
            {"id": 12, "image_id": 2, "category_id": 1, "iscrowd": 0, "num_keypoints": 0,
             "bbox": [0.0, 0.0, 10.0, 10.0], "area": 100.0, "keypoints": _kpts(0)},
            {"id": 13, "image_id": 2, "category_id": 2, "iscrowd": 0, "num_keypoints": 0,
             "bbox": [0.0, 0.0, 10.0, 10.0], "area": 100.0, "keypoints": _kpts(0)},
            {"id": 14, "image_id": 2, "category_id": 1, "iscrowd": 0, "num_keypoints": 6,
             "bbox": [250.0, -20.0, 100.0, 120.0], "area": 5000.0, "keypoints": _kpts(6, v=1)},
        ],
    }


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_coco_tiny_file(tmp_path):
    path = _write_json(tmp_path / "kp.json", _coco_dict())
    recs = load_coco(path, tmp_path / "img")
    assert [r.index for r in recs] == [0, 4]  # crowd, num_keypoints == 0 and the dog are skipped
    a, b = recs
    assert a.image == str(tmp_path / "img" / "a.jpg") and a.dataset == "coco" and a.num_joints == 17
    raw = _coco_dict()["annotations"][0]["keypoints"]
    for j in range(17):
        assert tuple(a.joints[j]) == (raw[3 * j], raw[3 * j + 1]) and a.visibility[j] == raw[3 * j + 2]
    # box 40,20 60x30: centre (70, 35); square crop -> the longer side 60 -> scale 0.3
    assert tuple(a.center) == (70.0, 35.0) and a.scale == pytest.approx(60 / 200)
    assert a.meta["annotation_id"] == 10 and a.meta["image_id"] == 1 and a.meta["num_keypoints"] == 17
    # b: box clipped to the 300 x 300 image: [250, 0, 50, 100]; v = 1 joints OCCLUDED, v = 0 NaN
    assert b.meta["bbox"] == [250.0, 0.0, 50.0, 100.0]
    assert tuple(b.center) == (275.0, 50.0) and b.scale == pytest.approx(100 / 200)
    assert (b.visibility[:6] == OCCLUDED).all() and (b.visibility[6:] == NOT_ANNOTATED).all()
    assert np.isnan(b.joints[6:]).all() and np.isfinite(b.joints[:6]).all()


def test_coco_aspect_ratio(tmp_path):
    path = _write_json(tmp_path / "kp.json", _coco_dict())
    a, b = load_coco(path, tmp_path, aspect_ratio=0.75)
    # a: w 60 > 0.75 * 30 -> h = 60 / 0.75 = 80; b: w 50 <= 0.75 * 100 -> h stays 100
    assert a.scale == pytest.approx(80 / 200) and b.scale == pytest.approx(100 / 200)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: "{bad json", "invalid JSON at line 1"),
    (lambda d: {k: v for k, v in d.items() if k != "annotations"}, "missing list 'annotations'"),
    (lambda d: {**d, "categories": [{"id": 2, "name": "dog"}]}, "expected one 'person' category, found 0"),
    (lambda d: {**d, "categories": [{"id": 1, "name": "person", "keypoints": ["a"] * 16}]},
     "lists 16 keypoints, expected 17"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "keypoints": [1.0] * 50}]},
     r"annotation 0 \(id 10\): 'keypoints' has shape \(50,\)"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "keypoints": [1.0, 1.0, 3.0] * 17}]},
     "visibility flags must be 0, 1 or 2"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "image_id": 99}]},
     "image_id 99 is not in 'images'"),
    (lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": [1, 2]}]},
     r"'bbox' must be \[x, y, w, h\]"),
])
def test_coco_malformed(tmp_path, mutate, message):
    data = mutate(_coco_dict())
    path = tmp_path / "kp.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(AnnotationError, match=message) as info:
        load_coco(path, tmp_path)
    assert str(info.value).startswith(str(path))


# ------------------------------------------------------------------------------------------------
# Registry


def test_registry_skeletons_and_errors(tmp_path):
    assert skeleton_for("lsp") is LSP and skeleton_for("synthetic") is LSP
    assert skeleton_for("mpii") is MPII and skeleton_for("coco") is COCO
    with pytest.raises(UserError, match="unknown dataset 'h36m'"):
        skeleton_for("h36m")
    with pytest.raises(UserError, match="has splits"):
        load_records("lsp", tmp_path, "valid")
    with pytest.raises(UserError, match="needs a root"):
        load_records("lsp", None, "test")
    with pytest.raises(UserError, match=r"does not take option\(s\) \['sed'\]"):
        load_records("synthetic", split="train", sed=3)


def test_registry_loads_every_dataset(tmp_path, lsp_root, mpii_root):
    lsp = load_records("lsp", lsp_root, "test")
    assert len(lsp) == 1000 and lsp[0].index == 1000
    mpii = load_records("mpii", mpii_root, "valid", annotation_file=mpii_root / MPII_SAMPLE,
                        validation_gt=mpii_root / MPII_GT)
    assert [r.index for r in mpii] == list(range(16)) and "headbox" in mpii[0].meta
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    _write_json(tmp_path / "annotations" / "person_keypoints_val2017.json", _coco_dict())
    coco = load_records("coco", tmp_path, "val")
    assert len(coco) == 2 and coco[0].image == str(tmp_path / "val2017" / "a.jpg")
    train = load_records("synthetic", split="train", seed=3, size=5, image_size=128)
    test = load_records("synthetic", split="test", seed=3, size=4)
    assert [r.index for r in train] == list(range(5))
    assert [r.index for r in test] == list(range(SYNTHETIC_TEST_FIRST, SYNTHETIC_TEST_FIRST + 4))
    assert train[0].image == "synthetic:3:0" and train[0].meta["config"]["image_size"] == 128


def test_mpii_validation_gt_one_person_and_joint_order(mpii_root, mpii_gt, tmp_path):
    """A one-person file (MATLAB drops the trailing singleton N = 1) loads as N = 1; a file whose
    dataset_joints is not the MPII order is refused."""
    mat = sio.loadmat(str(mpii_root / MPII_GT))
    one = {k: mat[k][..., 7] for k in ("pos_gt_src", "headboxes_src")}
    one["jnt_missing"] = mat["jnt_missing"][:, 7:8]
    sio.savemat(str(tmp_path / "one.mat"), one)
    gt = load_validation_gt(tmp_path / "one.mat")
    assert gt.num_people == 1
    np.testing.assert_array_equal(gt.joints[0], mpii_gt.joints[7])
    np.testing.assert_array_equal(gt.headboxes[0], mpii_gt.headboxes[7])
    np.testing.assert_array_equal(gt.missing[0], mpii_gt.missing[7])
    assert mat["dataset_joints"].shape == (1, 16)  # the official file names its joint order
    shuffled = {k: mat[k] for k in ("pos_gt_src", "headboxes_src", "jnt_missing")}
    shuffled["dataset_joints"] = mat["dataset_joints"][:, ::-1]
    sio.savemat(str(tmp_path / "order.mat"), shuffled)
    with pytest.raises(AnnotationError, match="joint order"):
        load_validation_gt(tmp_path / "order.mat")
    shuffled["dataset_joints"] = mat["dataset_joints"]
    sio.savemat(str(tmp_path / "same.mat"), shuffled)
    assert load_validation_gt(tmp_path / "same.mat").num_people == mpii_gt.num_people
