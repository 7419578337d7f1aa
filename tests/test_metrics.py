"""harness.metrics against the official MPII evaluation's own output (a fixture made by running evalMPII.m's
code under Octave, tests/fixtures/mpii_official_eval.json), against plain-loop transcriptions of the
official formulas (computePCK.m: ``d <= threshold``; area_under_curve.m: trapezoid) on the real MPII and LSP
ground truth, and on hand-made cases for each official detail."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from harness import metrics

# ---------------------------------------------------------------------------------------------------
# MPII: the official evaluation written out plainly, on the official layout (joints x 2 x people).
# Joint indices are looked up by name in the file's own `dataset_joints`, not taken from skeletons.py.

MPII_GROUPS = {"Head": ("head",), "Sho.": ("lsho", "rsho"), "Elb.": ("lelb", "relb"),
               "Wri.": ("lwri", "rwri"), "Hip": ("lhip", "rhip"), "Knee": ("lkne", "rkne"),
               "Ank.": ("lank", "rank")}
FIXTURE = Path(__file__).parent / "fixtures" / "mpii_official_eval.json"


def trapezoid_auc(curve):
    """area_under_curve(scale01(range), curve): the linear interpolant's integral over [0, 1]."""
    step = 1.0 / (len(curve) - 1)
    return sum((a + b) / 2 * step for a, b in zip(curve[:-1], curve[1:]))


def official_mpii_pckh(pos_pred_src, pos_gt_src, jnt_missing, headboxes_src, names, threshold):
    """Per-joint PCKh, the group table, Mean, Mean@0.1 and AUC, with Python loops in float64."""
    num_joints, _, num_people = pos_gt_src.shape
    scaled = [[None] * num_people for _ in range(num_joints)]  # error / head size, None = missing
    for i in range(num_people):
        dx = float(headboxes_src[1, 0, i]) - float(headboxes_src[0, 0, i])
        dy = float(headboxes_src[1, 1, i]) - float(headboxes_src[0, 1, i])
        head_size = 0.6 * math.sqrt(dx * dx + dy * dy)
        for j in range(num_joints):
            if jnt_missing[j, i] == 0:
                ex = float(pos_pred_src[j, 0, i]) - float(pos_gt_src[j, 0, i])
                ey = float(pos_pred_src[j, 1, i]) - float(pos_gt_src[j, 1, i])
                scaled[j][i] = math.sqrt(ex * ex + ey * ey) / head_size

    def pckh_at(t):
        pckh, count = [], []
        for j in range(num_joints):
            n = correct = 0
            for e in scaled[j]:
                if e is not None:
                    n += 1
                    if e <= t:  # computePCK.m: d <= range(k); NaN compares False: never correct
                        correct += 1
            pckh.append(100.0 * correct / n)
            count.append(n)
        return pckh, count

    def mean_of(pckh, count):
        weights = [0 if names[j] in ("pelv", "thor") else count[j] for j in range(num_joints)]
        return sum(p * w / sum(weights) for p, w in zip(pckh, weights))

    def pooled(pckh, count, members):
        return sum(pckh[names.index(n)] * count[names.index(n)] for n in members) / \
            sum(count[names.index(n)] for n in members)

    pckh, count = pckh_at(threshold)
    table = {g: sum(pckh[names.index(n)] for n in members) / len(members)
             for g, members in MPII_GROUPS.items()}
    table["Mean"] = mean_of(pckh, count)
    auc = trapezoid_auc([mean_of(*pckh_at(0.5 * k / 50)) for k in range(51)])
    official = {g: sum(pckh[names.index(n)] for n in members) / len(members)  # genTablePCK.m
                for g, members in (("Head", ("neck", "head")), ("Shoulder", ("lsho", "rsho")),
                                   ("Elbow", ("lelb", "relb")), ("Wrist", ("lwri", "rwri")),
                                   ("Hip", ("lhip", "rhip")), ("Knee", ("lkne", "rkne")),
                                   ("Ankle", ("lank", "rank")))}
    official["UBody"] = pooled(pckh, count, ("rwri", "relb", "rsho", "lsho", "lelb", "lwri"))
    official["Total"] = pooled(pckh, count, [n for n in names if n not in ("pelv", "thor")])
    return {"per_joint": dict(zip(names, pckh)), "groups": table, "mean": table["Mean"],
            "mean@0.1": mean_of(*pckh_at(0.1)), "auc": auc, "official": official}


@pytest.fixture(scope="module")
def mpii_mat(mpii_root):
    mat = scipy.io.loadmat(str(mpii_root / "valid_gt_with_reference_preds.mat"))
    mat["names"] = [str(np.ravel(x)[0]) for x in np.ravel(mat["dataset_joints"])]
    return mat


def ours_mpii(pos_pred_src, mat, threshold=0.5):
    return metrics.score_mpii(pos_pred_src.transpose(2, 0, 1), mat["pos_gt_src"].transpose(2, 0, 1),
                              mat["jnt_missing"].T == 0, mat["headboxes_src"].transpose(2, 0, 1), threshold)


def assert_same(result: metrics.PCKResult, ref: dict) -> None:
    assert result.per_joint.keys() == ref["per_joint"].keys()
    for name, v in ref["per_joint"].items():
        assert result.per_joint[name] == pytest.approx(v, abs=1e-9), name
    assert list(result.groups) == list(ref["groups"])
    for name, v in ref["groups"].items():
        assert result.groups[name] == pytest.approx(v, abs=1e-9), name
    assert result.mean == pytest.approx(ref["mean"], abs=1e-9)
    assert result.auc == pytest.approx(ref["auc"], abs=1e-9)
    if "mean@0.1" in ref:
        assert result.extra["mean@0.1"] == pytest.approx(ref["mean@0.1"], abs=1e-9)
    if "official" in ref:
        assert list(result.official) == list(ref["official"])
        for name, v in ref["official"].items():
            assert result.official[name] == pytest.approx(v, abs=1e-9), name


# ---------------------------------------------------------------------------------------------------
# MPII: the official evaluation's own output on the stored predictions (see the fixture's "how").

@pytest.fixture(scope="module")
def official():
    return json.loads(FIXTURE.read_text())


def test_mpii_matches_the_official_matlab_output(mpii_mat, official):
    m = mpii_mat
    assert official["columns"][:14] == [n for n in m["names"] if n not in ("pelv", "thor")][:6] + \
        ["rwri", "relb", "rsho", "lsho", "lelb", "lwri", "neck", "head"]  # annolist2matrix's order
    for threshold in ("0.5", "0.1"):
        ref = dict(zip(official["columns"], official["pck"][threshold]))
        r = ours_mpii(m["pos_pred_src"], m, threshold=float(threshold))
        for name in official["columns"][:14]:
            assert r.per_joint[name] == pytest.approx(ref[name], abs=1e-9), (threshold, name)
        assert r.official["UBody"] == pytest.approx(ref["UBody"], abs=1e-9)
        assert r.official["Total"] == pytest.approx(ref["Total"], abs=1e-9)
        assert r.mean == pytest.approx(ref["Total"], abs=1e-9)
        assert r.official["Head"] == pytest.approx((ref["neck"] + ref["head"]) / 2, abs=1e-9)
    r = ours_mpii(m["pos_pred_src"], m)
    assert r.extra["mean@0.1"] == pytest.approx(dict(zip(official["columns"], official["pck"]["0.1"]))["Total"],
                                                abs=1e-9)
    assert len(r.curve) == len(official["total_curve"]) == 51
    assert r.curve == pytest.approx(official["total_curve"], abs=1e-9)
    # area_under_curve.m integrates the interpolant with quadgk (RelTol 1e-6): the printed value carries
    # that error; our trapezoid is the exact integral of the same curve
    assert r.auc == pytest.approx(official["auc"], abs=1e-6 * official["auc"])
    assert r.auc == pytest.approx(trapezoid_auc(official["total_curve"]), abs=1e-9)
    # and the table exactly as evalMPII.m printed it (1 decimal)
    row = official["printed"][-2].split("&")[1:]
    printed = [float(v.strip(" \\")) for v in row]
    assert [round(r.official[c], 1) for c in r.official] == printed
    assert official["printed"][-1].endswith(f"AUC: {r.auc:.1f}")


def test_mpii_stored_predictions_match_official_formula(mpii_mat):
    m = mpii_mat
    ref = official_mpii_pckh(m["pos_pred_src"], m["pos_gt_src"], m["jnt_missing"], m["headboxes_src"],
                             m["names"], 0.5)
    result = ours_mpii(m["pos_pred_src"], m)
    assert_same(result, ref)
    assert result.count == 2958
    assert result.joint_counts == {n: int((m["jnt_missing"][j] == 0).sum()) for j, n in enumerate(m["names"])}
    # a realistic model: neither trivially perfect nor broken
    assert 60 < result.mean < 99 and 0 < result.extra["mean@0.1"] < result.mean


@pytest.mark.parametrize("seed", [0, 1])
def test_mpii_random_perturbations_match_official_formula(mpii_mat, seed):
    m = mpii_mat
    rng = np.random.default_rng(seed)
    gt = m["pos_gt_src"]
    head = 0.6 * np.linalg.norm(m["headboxes_src"][1] - m["headboxes_src"][0], axis=0)  # [N]
    # errors of the order of the head size straddle every threshold; some joints land far off
    pred = gt + rng.normal(0.0, 0.35, gt.shape) * head[None, None, :]
    far = rng.random((gt.shape[0], gt.shape[2])) < 0.05
    pred[:, 0][far] += 1000.0
    pred[3, :, 7] = np.nan  # a NaN prediction is never correct
    missing = m["jnt_missing"].copy()
    missing[rng.random(missing.shape) < 0.1] = 1
    mat = dict(m, jnt_missing=missing)
    ref = official_mpii_pckh(pred, gt, missing, m["headboxes_src"], m["names"], 0.4)
    assert_same(ours_mpii(pred, mat, threshold=0.4), ref)


# ---------------------------------------------------------------------------------------------------
# MPII official details on small hand-made cases (people-first arrays, MPII joint order).

def mpii_case(num_people=1):
    """Everyone: all 16 joints annotated, predicted exactly; head box diagonal 50 -> head size 30."""
    gt = np.arange(num_people * 16 * 2, dtype=np.float64).reshape(num_people, 16, 2) * 3.0
    boxes = np.tile(np.array([[10.0, 20.0], [40.0, 60.0]]), (num_people, 1, 1))  # dx 30, dy 40
    return gt.copy(), gt, np.ones((num_people, 16), dtype=bool), boxes


def test_mpii_head_size_is_0_6_of_the_head_box_diagonal():
    _, gt, ann, boxes = mpii_case()
    assert metrics.mpii_head_sizes(boxes)[0] == 30.0
    head = metrics.MPII.index("head")
    for error, correct in ((14.9, True), (15.1, False), (16.0, False)):  # 0.5 * 30 = 15; 0.5 * 50 = 25
        pred = gt.copy()
        pred[0, head, 0] += error
        assert metrics.score_mpii(pred, gt, ann, boxes).per_joint["head"] == (100.0 if correct else 0.0)


def test_mpii_error_equal_to_the_threshold_is_correct():
    _, gt, ann, boxes = mpii_case()
    pred = gt.copy()
    wrist = metrics.MPII.index("lwri")
    pred[0, wrist] += (9.0, 12.0)  # error exactly 15 = 0.5 * head size 30
    assert np.linalg.norm(pred[0, wrist] - gt[0, wrist]) / 30.0 == 0.5
    assert metrics.score_mpii(pred, gt, ann, boxes, threshold=0.5).per_joint["lwri"] == 100.0  # d <= range
    assert metrics.score_mpii(pred, gt, ann, boxes, threshold=0.5 - 1e-12).per_joint["lwri"] == 0.0
    # an exact prediction is correct at threshold 0, so the curve starts at 100 and a perfect AUC is 100
    perfect = metrics.score_mpii(gt.copy(), gt, ann, boxes)
    assert perfect.curve[0] == 100.0 and perfect.auc == 100.0


def test_mpii_unannotated_joints_are_not_counted():
    pred, gt, ann, boxes = mpii_case(2)
    j = metrics.MPII.index("rwri")
    pred[1, j] += 500.0
    counted = metrics.score_mpii(pred, gt, ann, boxes)
    assert counted.per_joint["rwri"] == 50.0 and counted.joint_counts["rwri"] == 2
    ann[1, j] = False
    skipped = metrics.score_mpii(pred, gt, ann, boxes)
    assert skipped.per_joint["rwri"] == 100.0 and skipped.joint_counts["rwri"] == 1
    # also accepted: the official 0/1 jnt_missing turned into 1 = annotated
    assert metrics.score_mpii(pred, gt, ann.astype(np.uint8), boxes).per_joint["rwri"] == 100.0


def test_mpii_pelvis_and_thorax_shown_but_not_in_mean():
    pred, gt, ann, boxes = mpii_case(3)
    for name in ("pelv", "thor"):
        pred[:, metrics.MPII.index(name)] += 500.0
    r = metrics.score_mpii(pred, gt, ann, boxes)
    assert r.per_joint["pelv"] == 0.0 and r.per_joint["thor"] == 0.0
    assert r.mean == 100.0 and r.groups["Mean"] == 100.0
    assert r.mean_excludes == ("pelv", "thor")


def test_mpii_mean_is_count_weighted():
    pred, gt, ann, boxes = mpii_case(2)
    ann[1] = False
    ann[1, metrics.MPII.index("rank")] = True  # person 1: only the right ankle, predicted wrong
    pred[1, metrics.MPII.index("rank")] += 500.0
    r = metrics.score_mpii(pred, gt, ann, boxes)
    assert r.per_joint["rank"] == 50.0
    # 14 joints in the Mean: rank counted twice (1 correct), 13 others once (all correct)
    assert r.mean == pytest.approx(100.0 * 14 / 15, abs=1e-12)
    assert r.groups["Ank."] == pytest.approx(75.0)  # groups are unweighted: (50 + 100) / 2
    assert r.mean != pytest.approx((50.0 + 13 * 100.0) / 14)  # not the plain mean of joints


def test_auc_and_mean_at_0_1_by_hand():
    pred, gt, ann, boxes = mpii_case()  # head size 30
    mean_joints = [j for j in range(16) if metrics.MPII.joints[j] not in ("pelv", "thor")]
    # scaled errors: 4 joints 0 (correct at every threshold, 0 included: 51 of 51), 5 joints 0.125
    # (correct for t = 0.13 .. 0.5: 38 of 51), 5 joints 0.6 (never)
    scaled = [0.0] * 4 + [0.125] * 5 + [0.6] * 5
    for j, e in zip(mean_joints, scaled):
        pred[0, j, 1] += e * 30.0
    r = metrics.score_mpii(pred, gt, ann, boxes)
    assert r.mean == pytest.approx(100.0 * 9 / 14)
    assert r.extra["mean@0.1"] == pytest.approx(100.0 * 4 / 14)
    # trapezoid over 50 intervals: every point counts once, the two ends half (first 4/14, last 9/14)
    assert r.auc == pytest.approx(100.0 * ((4 * 51 + 5 * 38) - (4 + 9) / 2) / (14 * 50), abs=1e-12)


def test_zero_head_size_is_an_error_only_with_annotated_joints():
    pred, gt, ann, boxes = mpii_case(3)
    boxes[1] = [[5.0, 5.0], [5.0, 5.0]]
    with pytest.raises(ValueError, match=r"head size.*rows \[1\]"):
        metrics.score_mpii(pred, gt, ann, boxes)
    ann[1] = False  # nobody annotated there: the person is simply not counted
    assert metrics.score_mpii(pred, gt, ann, boxes).joint_counts["head"] == 2


def test_bad_shapes_are_rejected():
    pred, gt, ann, boxes = mpii_case(2)
    with pytest.raises(ValueError, match="do not match"):
        metrics.score_mpii(pred[:1], gt, ann, boxes)
    with pytest.raises(ValueError, match=r"\[N, 16, 2\]"):
        metrics.score_mpii(pred[:, :14], gt[:, :14], ann[:, :14], boxes)
    with pytest.raises(ValueError, match="unknown protocol"):
        metrics.score("coco", pred, gt)


def test_to_json_and_render():
    import json

    from rich.console import Console

    pred, gt, ann, boxes = mpii_case(2)
    ann[:, metrics.MPII.index("head")] = False  # never counted -> NaN -> null / "-"
    r = metrics.score_mpii(pred, gt, ann, boxes)
    out = json.loads(json.dumps(r.to_json(), allow_nan=False))
    assert out["per_joint"]["head"] is None and out["groups"]["Head"] is None
    assert out["groups"]["Mean"] == out["mean"] == 100.0 and out["mean@0.1"] == 100.0
    assert out["metric"] == "PCKh" and out["threshold"] == 0.5 and out["count"] == 2
    assert list(out["groups"]) == ["Head", "Sho.", "Elb.", "Wri.", "Hip", "Knee", "Ank.", "Mean"]
    console = Console(width=100, record=True)
    console.print(r.render())  # the method every result has (COCO's too), so callers need not ask the type
    text = console.export_text()
    assert "Mean@0.1" in text and "AUC" in text and "100.00" in text and "98.04" not in text
    assert "UBody" in text and "Total" in text and "evalMPII.m" in text
    assert out["official"]["Head"] is None  # genTablePCK.m: (neck + NaN head top) / 2 is NaN
    assert out["official"]["Total"] == 100.0 and out["official"]["UBody"] == 100.0
    assert out["auc"] == 100.0
    h = r.headline()
    assert h == {"metric": "PCKh@0.5", "value": 100.0, "auc": 100.0, "per_joint": out["per_joint"],
                 "groups": out["groups"]}


def test_every_result_type_has_the_same_headline_keys():
    """The trainer's summary.json and the validator read any result through headline()/render(): PCK and
    COCO results answer with the same keys (None where COCO has no such figure)."""
    from harness.coco_eval import STAT_NAMES, CocoKeypointResult

    pred, gt, ann, boxes = mpii_case(2)
    pck = metrics.score_mpii(pred, gt, ann, boxes)
    coco = CocoKeypointResult(stats={k: 40.0 + i for i, k in enumerate(STAT_NAMES)}, images=3, people=4,
                              detections=4)
    assert pck.headline().keys() == coco.headline().keys()
    assert coco.headline() == {"metric": "AP (OKS)", "value": 40.0, "auc": None, "per_joint": None,
                               "groups": {k: 40.0 + i for i, k in enumerate(STAT_NAMES)}}
    assert pck.render() is not None and coco.render() is not None


# ---------------------------------------------------------------------------------------------------
# LSP PCK@0.2 on the real ground truth (test split, images 1001-2000).

LSP_LSHO, LSP_RHIP = 9, 2  # README.original.txt order: ... right hip (3rd) ... left shoulder (10th)


@pytest.fixture(scope="module")
def lsp_test_gt(lsp_root):
    joints = scipy.io.loadmat(str(lsp_root / "joints.mat"))["joints"]  # 3 x 14 x 2000
    return joints[:2, :, 1000:2000].transpose(2, 1, 0).astype(np.float64)  # [1000, 14, 2]


def loop_lsp_pck(pred, gt, threshold):
    n, nj, _ = gt.shape
    scaled = [[0.0] * nj for _ in range(n)]
    for i in range(n):
        torso = math.dist(gt[i, LSP_LSHO], gt[i, LSP_RHIP])
        for j in range(nj):
            scaled[i][j] = math.dist(pred[i, j], gt[i, j]) / torso

    def pck_at(t):  # eval_pck.m: dist <= range(k)
        return [100.0 * sum(1 for i in range(n) if scaled[i][j] <= t) / n for j in range(nj)]

    pck = pck_at(threshold)
    names = metrics.LSP.joints
    groups = {g: sum(pck[names.index(x)] for x in members) / len(members)
              for g, members in {**MPII_GROUPS, "Head": ("neck", "head")}.items()}
    groups["Mean"] = sum(pck) / nj
    auc = trapezoid_auc([sum(pck_at(0.2 * k / 20)) / nj for k in range(21)])  # eval_pck.m: 0:0.01:0.2
    return {"per_joint": dict(zip(names, pck)), "groups": groups, "mean": groups["Mean"], "auc": auc}


def test_lsp_noisy_copy_matches_loop_reference(lsp_test_gt):
    gt = lsp_test_gt
    rng = np.random.default_rng(7)
    pred = gt + rng.normal(0.0, 4.0, gt.shape)
    far = rng.random(gt.shape[:2]) < 0.08
    pred[far] += rng.uniform(20.0, 80.0, (int(far.sum()), 2))
    r = metrics.score_lsp(pred, gt)
    assert_same(r, loop_lsp_pck(pred, gt, 0.2))
    assert r.count == 1000 and r.threshold == 0.2 and set(r.joint_counts.values()) == {1000}
    assert 20 < r.mean < 100


def test_lsp_matches_the_common_matlab_evaluation(lsp_test_gt):
    """eval_pck.m (github.com/bearpaw/eval_pose) run under Octave on the same predictions:
    tests/fixtures/lsp_eval_pck.json, printed at 10 decimals."""
    official = json.loads((FIXTURE.parent / "lsp_eval_pck.json").read_text())
    gt = lsp_test_gt
    n, j = np.arange(1, 1001)[:, None], np.arange(1, 15)[None, :]  # 1-based person, joint, as in the .m
    pred = gt.copy()
    pred[:, :, 0] += np.mod(7 * n + 3 * j, 41) - 20
    pred[:, :, 1] += np.mod(5 * n + 11 * j, 37) - 18
    r = metrics.score_lsp(pred, gt)
    ref = dict(zip(official["columns"], official["pck"]))
    ours = {"Ankle": r.groups["Ank."], "Knee": r.groups["Knee"], "Hip": r.groups["Hip"], "Wris": r.groups["Wri."],
            "Elbo": r.groups["Elb."], "Shou": r.groups["Sho."], "Head": r.groups["Head"], "Mean": r.mean}
    assert ours == pytest.approx(ref, abs=1e-9)
    assert r.curve[0] > 0  # some offsets are (0, 0): counted at threshold 0 only under d <= t
    assert r.auc == pytest.approx(official["auc"], abs=1e-6 * official["auc"])  # quadgk's RelTol


def test_lsp_perfect_copy_scores_100(lsp_test_gt):
    r = metrics.score_lsp(lsp_test_gt.copy(), lsp_test_gt)
    assert set(r.per_joint.values()) == {100.0} and set(r.groups.values()) == {100.0}
    assert r.auc == 100.0 and len(r.curve) == 21  # d = 0 <= 0: correct at every threshold of 0:0.01:0.2


def test_lsp_zero_torso_is_an_error(lsp_test_gt):
    gt = lsp_test_gt[:5].copy()
    gt[3, LSP_RHIP] = gt[3, LSP_LSHO]
    with pytest.raises(ValueError, match=r"torso.*rows \[3\]"):
        metrics.score_lsp(gt.copy(), gt)
