"""`python -m harness score` end to end (subprocess) on the real MPII and LSP ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from harness import metrics

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = REPO / "tests" / "fixtures" / "mpii_official_eval.json"  # evalMPII.m's output (see its "how")


def harness(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def score_json(*args) -> dict:
    proc = harness("score", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # the whole stdout is exactly one JSON object


def assert_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def assert_matches(out: dict, result: metrics.PCKResult) -> None:
    ref = result.to_json()
    for key in ("metric", "threshold", "count", "joint_counts"):
        assert out[key] == ref[key], key
    for key in ("per_joint", "groups"):
        assert out[key].keys() == ref[key].keys()
        for name, v in ref[key].items():
            assert out[key][name] == pytest.approx(v, abs=1e-9), (key, name)
    for key in ("mean", "auc", *result.extra):
        assert out[key] == pytest.approx(ref[key], abs=1e-9), key
    assert out.get("official", {}).keys() == ref.get("official", {}).keys()
    for name, v in ref.get("official", {}).items():
        assert out["official"][name] == pytest.approx(v, abs=1e-9), name


# ---------------------------------------------------------------------------------------------------
# MPII

@pytest.fixture(scope="module")
def mpii(mpii_root, tmp_path_factory):
    gt_file = mpii_root / "valid_gt_with_reference_preds.mat"
    mat = scipy.io.loadmat(str(gt_file))
    preds = mat["pos_pred_src"].transpose(2, 0, 1)  # official people x joints x 2
    tmp = tmp_path_factory.mktemp("mpii")
    scipy.io.savemat(str(tmp / "preds.mat"), {"preds": preds})
    np.save(tmp / "preds.npy", preds)
    expected = metrics.score_mpii(preds, mat["pos_gt_src"].transpose(2, 0, 1), mat["jnt_missing"].T == 0,
                                  mat["headboxes_src"].transpose(2, 0, 1))
    return {"gt": gt_file, "tmp": tmp, "preds": preds, "expected": expected, "mat": mat}


def test_mpii_preds_mat_json_matches_library(mpii):
    out = score_json("--protocol", "mpii", "--gt", mpii["gt"], "--pred", mpii["tmp"] / "preds.mat")
    assert_matches(out, mpii["expected"])
    assert out["count"] == 2958 and out["images"] == "1-2958"


def test_mpii_npy_and_pos_pred_src_inputs_agree(mpii):
    out_npy = score_json("--protocol", "mpii", "--gt", mpii["gt"], "--pred", mpii["tmp"] / "preds.npy")
    assert_matches(out_npy, mpii["expected"])
    # the GT file itself holds pos_pred_src (16 x 2 x N)
    out_src = score_json("--protocol", "mpii", "--gt", mpii["gt"], "--pred", mpii["gt"])
    assert_matches(out_src, mpii["expected"])


def test_mpii_cli_matches_the_official_matlab_output(mpii):
    """`score` on the stored predictions (pos_pred_src of the GT file) against evalMPII.m's own numbers."""
    official = json.loads(OFFICIAL.read_text())
    pck = dict(zip(official["columns"], official["pck"]["0.5"]))
    out = score_json("--protocol", "mpii", "--gt", mpii["gt"], "--pred", mpii["gt"])
    expected = {"Head": (pck["neck"] + pck["head"]) / 2, "Shoulder": (pck["lsho"] + pck["rsho"]) / 2,
                "Elbow": (pck["lelb"] + pck["relb"]) / 2, "Wrist": (pck["lwri"] + pck["rwri"]) / 2,
                "Hip": (pck["lhip"] + pck["rhip"]) / 2, "Knee": (pck["lkne"] + pck["rkne"]) / 2,
                "Ankle": (pck["lank"] + pck["rank"]) / 2, "UBody": pck["UBody"], "Total": pck["Total"]}
    assert out["official"] == pytest.approx(expected, abs=1e-9)
    assert out["mean"] == pytest.approx(pck["Total"], abs=1e-9)
    assert out["mean@0.1"] == pytest.approx(official["pck"]["0.1"][-1], abs=1e-9)
    assert out["auc"] == pytest.approx(official["auc"], abs=1e-6 * official["auc"])  # quadgk's RelTol
    assert out["definitions"]["correct"].startswith("||pred - gt|| / norm <= threshold")


def test_mpii_threshold_and_images(mpii):
    out = score_json("--protocol", "mpii", "--gt", mpii["gt"], "--pred", mpii["tmp"] / "preds.npy",
                     "--threshold", "0.3", "--images", "11-110")
    m = mpii["mat"]
    rows = slice(10, 110)
    expected = metrics.score_mpii(mpii["preds"][rows], m["pos_gt_src"].transpose(2, 0, 1)[rows],
                                  m["jnt_missing"].T[rows] == 0, m["headboxes_src"].transpose(2, 0, 1)[rows],
                                  threshold=0.3)
    assert_matches(out, expected)
    assert out["count"] == 100


def test_mpii_table_output(mpii):
    proc = harness("score", "--protocol", "mpii", "--gt", mpii["gt"], "--pred", mpii["tmp"] / "preds.mat")
    assert proc.returncode == 0, proc.stderr
    r = mpii["expected"]
    for col in ("Head", "Sho.", "Elb.", "Wri.", "Hip", "Knee", "Ank.", "Mean", "Mean@0.1", "AUC",
                "evalMPII.m", "Shoulder", "Ankle", "UBody", "Total"):
        assert col in proc.stdout
    for v in (r.groups["Head"], r.groups["Wri."], r.mean, r.extra["mean@0.1"], r.auc, r.official["Head"],
              r.official["UBody"]):
        assert f"{v:.2f}" in proc.stdout


def test_mpii_errors_prediction_shape_variable_file_count(mpii, tmp_path):
    gt, tmp = mpii["gt"], tmp_path
    base = ("score", "--protocol", "mpii", "--gt", gt, "--pred")
    np.save(tmp / "wrong.npy", np.zeros((2958, 16, 3)))
    assert_error(harness(*base, tmp / "wrong.npy"), "wrong.npy", "N x 16 x 2", "2958 x 16 x 3")
    scipy.io.savemat(str(tmp / "novar.mat"), {"foo": np.zeros((2958, 16, 2))})
    assert_error(harness(*base, tmp / "novar.mat"), "novar.mat", "'preds'", "foo")
    assert_error(harness(*base, tmp / "absent.mat"), "absent.mat", "not found")
    np.save(tmp / "short.npy", mpii["preds"][:100])
    assert_error(harness(*base, tmp / "short.npy"), "N mismatch", "100", "2958")


def test_mpii_errors_corrupt_files_and_bad_gt(mpii, tmp_path):
    gt, tmp = mpii["gt"], tmp_path
    base = ("score", "--protocol", "mpii", "--gt", gt, "--pred")
    np.save(tmp / "short.npy", mpii["preds"][:100])
    (tmp / "corrupt.mat").write_bytes(b"this is not a MATLAB file at all" * 10)
    assert_error(harness(*base, tmp / "corrupt.mat"), "corrupt.mat", "not a readable .mat")
    (tmp / "corrupt.npy").write_bytes(b"garbage")
    assert_error(harness(*base, tmp / "corrupt.npy"), "corrupt.npy", "not a readable .npy")
    # a ground-truth file without the head boxes
    scipy.io.savemat(str(tmp / "gt_nobox.mat"), {k: mpii["mat"][k] for k in ("pos_gt_src", "jnt_missing")})
    assert_error(harness("score", "--protocol", "mpii", "--gt", tmp / "gt_nobox.mat", "--pred",
                         tmp / "short.npy"), "gt_nobox.mat", "'headboxes_src'")
    assert_error(harness(*base, tmp / "short.npy", "--images", "5-2"), "--images")


# ---------------------------------------------------------------------------------------------------
# LSP

@pytest.fixture(scope="module")
def lsp(lsp_root, tmp_path_factory):
    gt_file = lsp_root / "joints.mat"
    joints = scipy.io.loadmat(str(gt_file))["joints"]  # 3 x 14 x 2000, 1-based
    gt_all = joints[:2].transpose(2, 1, 0)  # [2000, 14, 2]
    rng = np.random.default_rng(3)
    pred_all = gt_all + rng.normal(0.0, 5.0, gt_all.shape)
    tmp = tmp_path_factory.mktemp("lsp")
    np.save(tmp / "all.npy", pred_all)
    np.save(tmp / "test.npy", pred_all[1000:])
    scipy.io.savemat(str(tmp / "test.mat"), {"preds": pred_all[1000:]})
    # the same ground truth in LSP-extended's 14 x 3 x N layout (flag 1 = visible)
    ext = np.concatenate([joints[:2].transpose(1, 0, 2), (1 - joints[2])[:, None, :]], axis=1)
    scipy.io.savemat(str(tmp / "joints_ext.mat"), {"joints": ext})
    return {"gt": gt_file, "tmp": tmp, "expected": metrics.score_lsp(pred_all[1000:], gt_all[1000:]),
            "gt_all": gt_all, "pred_all": pred_all}


def test_lsp_default_is_the_test_split(lsp):
    out_all = score_json("--protocol", "lsp", "--gt", lsp["gt"], "--pred", lsp["tmp"] / "all.npy")
    assert_matches(out_all, lsp["expected"])
    assert out_all["count"] == 1000 and out_all["threshold"] == 0.2 and out_all["images"] == "1001-2000"
    for name in ("test.npy", "test.mat"):
        assert_matches(score_json("--protocol", "lsp", "--gt", lsp["gt"], "--pred", lsp["tmp"] / name),
                       lsp["expected"])


def test_lsp_extended_layout_and_image_range(lsp):
    out = score_json("--protocol", "lsp", "--gt", lsp["tmp"] / "joints_ext.mat",
                     "--pred", lsp["tmp"] / "all.npy")
    assert_matches(out, lsp["expected"])
    out = score_json("--protocol", "lsp", "--gt", lsp["gt"], "--pred", lsp["tmp"] / "all.npy",
                     "--images", "1-1000", "--threshold", "0.1")
    assert_matches(out, metrics.score_lsp(lsp["pred_all"][:1000], lsp["gt_all"][:1000], 0.1))


def test_lsp_errors(lsp, tmp_path):
    base = ("score", "--protocol", "lsp", "--gt", lsp["gt"], "--pred")
    np.save(tmp_path / "mid.npy", lsp["pred_all"][:1500])
    assert_error(harness(*base, tmp_path / "mid.npy"), "N mismatch", "1500")
    assert_error(harness(*base, tmp_path / "mid.npy", "--images", "1-3000"), "beyond", "2000")
    scipy.io.savemat(str(tmp_path / "bad_gt.mat"), {"joints": np.zeros((2, 14, 10))})
    assert_error(harness("score", "--protocol", "lsp", "--gt", tmp_path / "bad_gt.mat", "--pred",
                         tmp_path / "mid.npy", "--images", "1-10"), "bad_gt.mat", "3 x 14 x N")
    # a zero torso (left shoulder on the right hip) is reported, not silently skipped
    joints = scipy.io.loadmat(str(lsp["gt"]))["joints"][:, :, :10]
    joints[:2, 2, 4] = joints[:2, 9, 4]
    scipy.io.savemat(str(tmp_path / "zero_torso.mat"), {"joints": joints})
    np.save(tmp_path / "ten.npy", lsp["pred_all"][:10])
    assert_error(harness("score", "--protocol", "lsp", "--gt", tmp_path / "zero_torso.mat", "--pred",
                         tmp_path / "ten.npy", "--images", "1-10"), "torso", "rows [4]")
