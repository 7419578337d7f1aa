"""Crop geometry and the per-sample path every backend shares (plan -> one uint8 warp -> prepare_batch), checked
against loop references and on real LSP images (painted markers must land where the planned joints say)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from pose_sample import make_sample

from data_pipelines.batch import IMAGE_MEAN, IMAGE_STD
from data_pipelines.geometry import (
    CROP_ENLARGE,
    apply_affine,
    compose_affine,
    crop_affine,
    crop_box_side,
)
from data_pipelines.images import load_image
from data_pipelines.lsp import load_lsp
from data_pipelines.records import OCCLUDED, SCALE_UNIT_PX, VISIBLE, PoseRecord
from data_pipelines.sampling import Augmentation
from data_pipelines.skeletons import LSP

S, H = 256, 64
STRIDE = S // H
TRAIN = Augmentation()  # the default training ranges: rotation +-30 deg, scale 0.75-1.25, flip 0.5, colour 0.2


pytestmark = pytest.mark.usefixtures("single_torch_thread")


# ------------------------------------------------------------------------------------------------ geometry

def reference_crop_point(x, y, cx, cy, scale, size, rot_deg, flip):
    """Scalar reference of the crop map, written out step by step."""
    side = scale * 200.0 * 1.25
    k = size / side
    dx, dy = x - cx, y - cy
    t = math.radians(rot_deg)
    # counter-clockwise on screen with y down: (dx, dy) -> (cos dx + sin dy, -sin dx + cos dy)
    rx = math.cos(t) * dx + math.sin(t) * dy
    ry = -math.sin(t) * dx + math.cos(t) * dy
    u = k * rx + (size - 1) / 2.0
    v = k * ry + (size - 1) / 2.0
    if flip:
        u = size - 1 - u
    return u, v


def test_crop_affine_matches_scalar_reference():
    rng = np.random.default_rng(0)
    for _ in range(50):
        cx, cy = rng.uniform(-50, 500, size=2)
        scale = rng.uniform(0.3, 4.0)
        size = int(rng.choice([64, 128, 255, 256]))
        rot = rng.uniform(-180, 180)
        flip = bool(rng.random() < 0.5)
        A = crop_affine((cx, cy), scale, size, rot, flip)
        pts = rng.uniform(-100, 600, size=(7, 2))
        got = apply_affine(pts, A)
        for p, g in zip(pts, got):
            assert g == pytest.approx(reference_crop_point(p[0], p[1], cx, cy, scale, size, rot, flip),
                                      abs=1e-9)


def test_crop_box_edges_centre_rotation_direction_and_flip():
    c, scale, size = np.array([120.3, 77.9]), 1.7, 256
    side = crop_box_side(scale)
    assert side == pytest.approx(scale * SCALE_UNIT_PX * CROP_ENLARGE)
    A = crop_affine(c, scale, size)
    # the box's outer edges land on the crop's outer pixel edges, its centre on the crop centre
    corners = c + np.array([[-side / 2, -side / 2], [side / 2, side / 2]])
    np.testing.assert_allclose(apply_affine(corners, A), [[-0.5, -0.5], [size - 0.5, size - 0.5]], atol=1e-9)
    np.testing.assert_allclose(apply_affine(c, A), [(size - 1) / 2] * 2, atol=1e-12)
    # rotation: same linear part as cv2.getRotationMatrix2D (counter-clockwise on screen for angle > 0)
    R = crop_affine(c, scale, size, rotation_deg=25.0)
    M = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), 25.0, size / side)
    np.testing.assert_allclose(R[:, :2], M[:, :2], atol=1e-12)
    above = c + np.array([0.0, -40.0])  # a point above the centre moves to the left when turned CCW
    assert apply_affine(above, R)[0] < (size - 1) / 2
    # flip = mirror of the unflipped crop: x -> size-1-x
    F = crop_affine(c, scale, size, rotation_deg=25.0, flip=True)
    pts = np.random.default_rng(1).uniform(0, 300, size=(10, 2))
    a, f = apply_affine(pts, R), apply_affine(pts, F)
    np.testing.assert_allclose(f[:, 0], size - 1 - a[:, 0], atol=1e-9)
    np.testing.assert_allclose(f[:, 1], a[:, 1], atol=1e-9)


def test_apply_compose_against_loops():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(2, 3))
    B = rng.normal(size=(2, 3))
    pts = rng.normal(size=(4, 5, 2)) * 100
    got = apply_affine(pts, A)
    for idx in np.ndindex(4, 5):
        x, y = pts[idx]
        assert got[idx][0] == pytest.approx(A[0, 0] * x + A[0, 1] * y + A[0, 2], abs=1e-9)
        assert got[idx][1] == pytest.approx(A[1, 0] * x + A[1, 1] * y + A[1, 2], abs=1e-9)
    np.testing.assert_allclose(apply_affine(apply_affine(pts, A), inverse(A)), pts, atol=1e-8)
    np.testing.assert_allclose(apply_affine(pts, compose_affine(B, A)), apply_affine(apply_affine(pts, A), B),
                               atol=1e-9)
    with pytest.raises(ValueError, match="2x3"):
        apply_affine(pts, np.eye(3))
    with pytest.raises(ValueError, match="scale"):
        crop_affine((0, 0), 0.0, 256)


def inverse(A: np.ndarray) -> np.ndarray:
    """Reference inverse of a 2x3 affine through the 3x3 homogeneous matrix."""
    return np.linalg.inv(np.vstack([A, [0, 0, 1]]))[:2]


def bilinear_reference(img: np.ndarray, A: np.ndarray, size: int) -> np.ndarray:
    """dst(u, v) = src(A^-1 (u, v)) with bilinear weights, 0 outside: plain loops, float64."""
    Ai = inverse(A)
    h, w = img.shape[:2]
    out = np.zeros((size, size) + img.shape[2:])
    for v in range(size):
        for u in range(size):
            x = Ai[0, 0] * u + Ai[0, 1] * v + Ai[0, 2]
            y = Ai[1, 0] * u + Ai[1, 1] * v + Ai[1, 2]
            x0, y0 = math.floor(x), math.floor(y)
            acc = 0.0
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    if 0 <= xx < w and 0 <= yy < h:
                        acc = acc + wx * wy * img[yy, xx].astype(np.float64)
            out[v, u] = acc
    return out


def test_warp_uses_pixel_centre_convention_of_the_matrix():
    """cv2.warpAffine with crop_affine's matrix == loop bilinear sampling at A^-1 (pixel centres).

    A linear ramp image makes bilinear interpolation exact, so only cv2's 1/32-px coordinate
    quantisation remains; far from the border the values must agree to a few hundredths."""
    yy, xx = np.mgrid[0:40, 0:50].astype(np.float32)
    img = np.stack([xx, yy, 0.5 * xx + 0.25 * yy + 3], axis=-1).astype(np.float32)
    A = crop_affine((24.3, 19.1), 0.12, 32, rotation_deg=17.0, flip=True)
    got = cv2.warpAffine(img, A, (32, 32), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(0, 0, 0))
    ref = bilinear_reference(img, A, 32)
    src = apply_affine(np.stack(np.meshgrid(np.arange(32), np.arange(32)), -1).reshape(-1, 2).astype(float),
                       inverse(A)).reshape(32, 32, 2)
    interior = (src[..., 0] > 1) & (src[..., 0] < 48) & (src[..., 1] > 1) & (src[..., 1] < 38)
    assert interior.sum() > 500
    np.testing.assert_allclose(got[interior], ref[interior], atol=0.05)
    # and the ramp value tells where each output pixel sampled: exactly the inverse-mapped point
    np.testing.assert_allclose(got[interior][:, 0], src[interior][:, 0], atol=0.05)
    np.testing.assert_allclose(got[interior][:, 1], src[interior][:, 1], atol=0.05)


# ------------------------------------------------------------------------------------ real LSP: alignment

@pytest.fixture(scope="module")
def lsp_samples(lsp_root):
    """A few real LSP training records with their decoded images."""
    records = load_lsp(lsp_root, "train", check_images=False)
    chosen = [records[i] for i in (0, 3, 7, 12, 25, 41)]
    return [(r, load_image(r.image)) for r in chosen]


RADIUS = 3.0


def disc_mask(shape, x, y, r=RADIUS):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (xx - x) ** 2 + (yy - y) ** 2 <= r * r


def diff_centroid(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, float]:
    """Weighted centroid (x, y) of |a - b| summed over channels, ignoring the faint global change that the
    contrast jitter's image mean picks up (below 5% of the peak)."""
    d = (a - b).abs().sum(0).numpy().astype(np.float64)
    peak = d.max()
    d[d < 0.05 * peak] = 0.0
    yy, xx = np.mgrid[0:d.shape[0], 0:d.shape[1]]
    return np.array([(d * xx).sum() / d.sum(), (d * yy).sum() / d.sum()]), peak


def is_flipped(sample) -> bool:
    return float(np.linalg.det(sample["affine"].numpy()[:, :2])) < 0


def test_markers_land_on_transformed_joints_with_flip_swap(lsp_samples):
    """Paint a disc at one original joint, make the training sample twice with the same Generator
    seed (with and without the disc), and find the disc in the output from the difference.

    Semantics checked: without a flip, the disc painted at joint j lands on output slot j; with a flip
    the output is mirrored and relabelled, so the disc painted at the ORIGINAL LEFT wrist lands on the
    output's RIGHT-wrist slot (slot flip_index[j]) - the person's left wrist now appears where a right
    wrist would be."""
    def transform(image, record, rng):
        return make_sample(image, record, rng, TRAIN, S, H, sigma=1.0)

    names = ("lwri", "rwri", "lank", "rank", "head", "lkne")
    checked, flips, errors = 0, set(), []
    for n, (record, image) in enumerate(lsp_samples):
        # a flat grey disc under every marker in the base image, so the marker's change is uniform
        base = image.copy()
        masks = {}
        for name in names:
            x, y = record.joints[LSP.index(name)]
            masks[name] = disc_mask(image.shape, x, y)
            base[masks[name]] = (110, 110, 110)
        for seed in range(4):
            rng_seed = [n, seed]
            ref = transform(base, record, np.random.default_rng(rng_seed))
            flipped = is_flipped(ref)
            flips.add(flipped)
            for name in names:
                j = LSP.index(name)
                painted = base.copy()
                painted[masks[name]] = (190, 40, 170)
                out = transform(painted, record, np.random.default_rng(rng_seed))
                assert is_flipped(out) == flipped
                slot = LSP.flip_index[j] if flipped else j
                target = out["joints"][slot].numpy().astype(np.float64)
                # exact bookkeeping: the slot holds the affine image of the painted joint
                np.testing.assert_allclose(target, apply_affine(record.joints[j], out["affine"].numpy()),
                                           atol=1e-3)
                if not np.all((target > 2 * RADIUS) & (target < S - 1 - 2 * RADIUS)):
                    continue  # the disc is (partly) outside the crop
                centroid, peak = diff_centroid(out["image"], ref["image"])
                assert peak > 0.5, "marker not visible in the output"
                err = float(np.linalg.norm(centroid - target))
                errors.append(err)
                assert err < 0.5, (f"{record.image} seed {seed} {name} flipped={flipped}: marker at "
                                   f"{centroid}, joint slot {LSP.joints[slot]} at {target}")
                if flipped:
                    # and NOT at the unswapped slot (the joints are far enough apart to tell)
                    other = out["joints"][j].numpy()
                    if np.linalg.norm(other - target) > 5:
                        assert np.linalg.norm(centroid - other) > 3
                checked += 1
    assert flips == {True, False}
    assert checked >= 100
    # measured: mean ~0.08 px, max ~0.22 px; a warp off by half a pixel gives a mean of 0.5
    assert np.mean(errors) < 0.15


def test_heatmap_peaks_at_joints_over_stride(lsp_samples):
    def transform(image, record, rng):
        return make_sample(image, record, rng, TRAIN, S, H, sigma=1.0)

    peaks_checked = 0
    for n, (record, image) in enumerate(lsp_samples):
        for seed in range(5):
            out = transform(image, record, np.random.default_rng([100 + n, seed]))
            hm, w, joints = out["heatmaps"], out["target_weight"], out["joints"].numpy()
            assert hm.shape == (LSP.num_joints, H, H) and hm.dtype == torch.float32
            for j in range(LSP.num_joints):
                x_hm = (joints[j] - (STRIDE - 1) / 2) / STRIDE
                inside = np.all((x_hm >= -0.5) & (x_hm <= H - 0.5))
                if w[j] == 0:
                    assert float(hm[j].abs().max()) == 0.0
                    assert not inside
                    continue
                if not inside:
                    continue
                flat = int(torch.argmax(hm[j]))
                py, px = divmod(flat, H)
                assert abs(px - x_hm[0]) <= 1.0 and abs(py - x_hm[1]) <= 1.0
                assert float(hm[j].max()) > 0.6  # subpixel peak value of a sigma-1 Gaussian: >= exp(-0.25)
                peaks_checked += 1
    assert peaks_checked > 300


def test_eval_crop_centres_person_and_is_exact(lsp_samples):
    def transform(image, record):
        return make_sample(image, record, None, None, S, H, sigma=1.0)

    for record, image in lsp_samples:
        out = transform(image, record)
        A = out["affine"].numpy()
        np.testing.assert_array_equal(A, crop_affine(record.center, record.scale, S))
        np.testing.assert_allclose(apply_affine(record.center, A), [(S - 1) / 2] * 2, atol=1e-9)
        np.testing.assert_allclose(out["joints"].numpy(), apply_affine(record.joints, A), atol=1e-3)
        # LSP's crop box is 1.56 x the joint extent: every joint is inside, every weight 1
        assert out["target_weight"].tolist() == [1.0] * LSP.num_joints
        # a marker painted at the person centre appears at the crop centre
        base = image.copy()
        mask = disc_mask(image.shape, *record.center)
        base[mask] = (110, 110, 110)
        painted = base.copy()
        painted[mask] = (190, 40, 170)
        centroid, _ = diff_centroid(transform(painted, record)["image"], transform(base, record)["image"])
        assert np.linalg.norm(centroid - (S - 1) / 2) < 0.75
        # no augmentation: the image is exactly the bilinear warp, normalised
        crop = cv2.warpAffine(image, A, (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        np.testing.assert_array_equal(out["crop"], crop)
        normalised = (crop.astype(np.float32) / np.float32(255.0) - np.float32(IMAGE_MEAN)) / np.float32(IMAGE_STD)
        np.testing.assert_array_equal(out["image"].numpy(), normalised.transpose(2, 0, 1))
        assert out["center"].tolist() == record.center.tolist() and out["scale"] == record.scale


def test_joints_outside_crop_get_zero_weight_and_occluded_count(lsp_samples):
    record, image = lsp_samples[0]
    joints = record.joints.copy()
    vis = np.full(LSP.num_joints, VISIBLE)
    joints[LSP.index("head")] = record.center + [0.0, -5 * crop_box_side(record.scale)]  # far above the box
    vis[LSP.index("lank")] = OCCLUDED
    moved = PoseRecord(record.image, joints, vis, record.center, record.scale, "lsp", record.index)
    out = make_sample(image, moved, None, None, S, H)
    w = out["target_weight"].numpy()
    assert w[LSP.index("head")] == 0 and float(out["heatmaps"][LSP.index("head")].max()) == 0
    assert w[LSP.index("lank")] == 1  # occluded but annotated: trained on
    assert w.sum() == LSP.num_joints - 1


def test_sample_reproducible_and_seed_dependent(lsp_samples):
    record, image = lsp_samples[1]
    a = make_sample(image, record, np.random.default_rng(11), TRAIN)
    b = make_sample(image, record, np.random.default_rng(11), TRAIN)
    c = make_sample(image, record, np.random.default_rng(12), TRAIN)
    for k in ("image", "heatmaps", "target_weight", "joints", "affine"):
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["affine"], c["affine"])
    with pytest.raises(ValueError, match="uint8"):
        make_sample(image.astype(np.float32), record, np.random.default_rng(0), TRAIN)
