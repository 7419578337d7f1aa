"""models/heatmap.py against slow, obvious float64 references (Python loops over batch, joints, pixels)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_pipelines.skeletons import LSP, MPII
from models.heatmap import (
    decode_heatmaps,
    flip_back,
    flip_merge,
    heatmap_argmax,
    heatmap_to_input,
    input_to_heatmap,
    invert_affine,
    render_gaussian,
    target_weight,
    to_original,
    transform_points,
)

# ---------------------------------------------------------------- references (loops, float64 numpy)


def ref_render(kp, vis, h, w, sigma):
    kp, vis = np.asarray(kp, np.float64), np.asarray(vis)
    B, J = vis.shape
    out = np.zeros((B, J, h, w))
    weight = np.zeros((B, J))
    r = 3 * sigma
    for b in range(B):
        for j in range(J):
            x, y = kp[b, j]
            if not vis[b, j] > 0 or not (-r <= x <= w - 1 + r and -r <= y <= h - 1 + r):
                continue
            weight[b, j] = 1
            for i in range(h):
                for c in range(w):
                    out[b, j, i, c] = math.exp(-((c - x) ** 2 + (i - y) ** 2) / (2 * sigma**2))
    return out, weight


def ref_decode(hm):
    hm = np.asarray(hm, np.float64)
    B, J, h, w = hm.shape
    coords, conf = np.zeros((B, J, 2)), np.zeros((B, J))
    for b in range(B):
        for j in range(J):
            m = hm[b, j]
            k = int(np.argmax(m))
            y, x = divmod(k, w)
            conf[b, j] = m[y, x]
            fx, fy = float(x), float(y)
            if 0 < x < w - 1:
                fx += 0.25 * np.sign(m[y, x + 1] - m[y, x - 1])
            if 0 < y < h - 1:
                fy += 0.25 * np.sign(m[y + 1, x] - m[y - 1, x])
            coords[b, j] = fx, fy
    return coords, conf


def ref_flip_back(hm, flip_index):
    hm = np.asarray(hm, np.float64)
    B, J, h, w = hm.shape
    out = np.zeros_like(hm)
    for b in range(B):
        for j in range(J):
            for i in range(h):
                for c in range(w):
                    # mirrored-image channel j is original joint flip_index[j]
                    out[b, flip_index[j], i, c] = hm[b, j, i, w - 1 - c]
    return out


def ref_affine_apply(points, A):
    points, A = np.asarray(points, np.float64), np.asarray(A, np.float64)
    out = np.zeros_like(points)
    for b in range(points.shape[0]):
        for n in range(points.shape[1]):
            x, y = points[b, n]
            out[b, n, 0] = A[b, 0, 0] * x + A[b, 0, 1] * y + A[b, 0, 2]
            out[b, n, 1] = A[b, 1, 0] * x + A[b, 1, 1] * y + A[b, 1, 2]
    return out


# ---------------------------------------------------------------- render_gaussian


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_render_matches_loop_reference_with_edge_cases(dtype):
    g = torch.Generator().manual_seed(0)
    B, J, h, w, sigma = 3, 7, 12, 10, 1.5
    kp = torch.rand(B, J, 2, generator=g, dtype=torch.float64) * torch.tensor([w + 14.0, h + 14.0]) - 7.0
    # Edge cases: on a border pixel centre, just inside / just outside the 3-sigma band, NaN, invisible.
    kp[0, 0] = torch.tensor([0.0, 0.0])
    kp[0, 1] = torch.tensor([w - 1.0, h - 1.0])
    kp[0, 2] = torch.tensor([-3 * sigma + 1e-6, 4.0])  # rendered (tail of the Gaussian only)
    kp[0, 3] = torch.tensor([w - 1 + 3 * sigma + 1e-3, 4.0])  # not rendered
    kp[0, 4] = torch.tensor([3.0, -3 * sigma - 1e-3])  # not rendered
    kp[0, 5] = torch.tensor([float("nan"), 2.0])
    vis = torch.randint(0, 3, (B, J), generator=g)  # visibility codes 0/1/2: > 0 renders
    vis[0, :5] = 2
    vis[1, 0] = 0
    kp[1, 0] = torch.tensor([4.0, 4.0])  # inside but invisible
    maps = render_gaussian(kp.to(dtype), vis, (h, w), sigma)
    ref, ref_w = ref_render(kp.numpy(), vis.numpy(), h, w, sigma)
    assert maps.shape == (B, J, h, w) and maps.dtype == dtype
    np.testing.assert_allclose(maps.double().numpy(), ref, atol=1e-6 if dtype == torch.float32 else 1e-12)
    np.testing.assert_array_equal(target_weight(kp, vis, (h, w), sigma).numpy(), ref_w)
    assert ref_w[0, :3].all() and not ref_w[0, 3:6].any() and ref_w[1, 0] == 0
    assert maps[0, 2].max() > 0 and maps[0, 0, 0, 0] == 1 and not torch.isnan(maps).any()
    # bool visibility gives the same
    torch.testing.assert_close(render_gaussian(kp.to(dtype), vis > 0, (h, w), sigma), maps)


def test_render_half_precision_and_bad_input():
    kp = torch.tensor([[[3.3, 2.7]]])
    half = render_gaussian(kp.half(), torch.ones(1, 1), (8, 8), 1.0)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), render_gaussian(kp, torch.ones(1, 1), (8, 8)), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="keypoints"):
        render_gaussian(torch.zeros(2, 2), torch.ones(2), (8, 8))
    with pytest.raises(ValueError, match="visible"):
        render_gaussian(kp, torch.ones(1, 2), (8, 8))
    with pytest.raises(ValueError, match="sigma"):
        render_gaussian(kp, torch.ones(1, 1), (8, 8), sigma=0)
    with pytest.raises(ValueError, match="size"):
        render_gaussian(kp, torch.ones(1, 1), (8, 0))


# ---------------------------------------------------------------- decode_heatmaps


def test_decode_matches_loop_reference_random_ties_borders():
    g = torch.Generator().manual_seed(1)
    B, J, h, w = 4, 9, 7, 6
    hm = torch.randint(0, 4, (B, J, h, w), generator=g).double()  # many ties and equal neighbours
    hm[0, 0] = 0
    hm[0, 0, 0, 0] = 5  # corner peak: no shift possible
    hm[0, 1] = 0
    hm[0, 1, 3, w - 1] = 5  # right border: x shift impossible, y neighbours equal
    hm[0, 2] = 0
    hm[0, 2, h - 1, 2] = 5
    hm[0, 2, h - 1, 3] = 1  # bottom border, right neighbour higher -> +0.25 in x only
    hm[0, 3] = 1.0  # all equal: first max = (0, 0)
    hm[0, 4] = 0
    hm[0, 4, 2, 2] = hm[0, 4, 4, 1] = 5  # tie: first in row-major order wins
    hm[0, 4, 1, 2] = 2  # upper neighbour higher -> -0.25 in y
    coords, conf = decode_heatmaps(hm)
    rc, rconf = ref_decode(hm.numpy())
    np.testing.assert_array_equal(coords.numpy(), rc)
    np.testing.assert_array_equal(conf.numpy(), rconf)
    assert coords[0, 0].tolist() == [0, 0] and coords[0, 1].tolist() == [w - 1, 3]
    assert coords[0, 2].tolist() == [2.25, h - 1] and coords[0, 3].tolist() == [0, 0]
    assert coords[0, 4].tolist() == [2, 1.75]
    # float32 random maps too
    hm32 = torch.randn(B, J, 16, 12, generator=g)
    c32, f32 = decode_heatmaps(hm32)
    rc, rconf = ref_decode(hm32.numpy())
    assert c32.dtype == torch.float32
    np.testing.assert_array_equal(c32.numpy(), rc)
    np.testing.assert_allclose(f32.numpy(), rconf, rtol=0, atol=0)


def test_argmax_first_max_like_numpy():
    hm = torch.zeros(1, 2, 3, 4)
    hm[0, 0, 1, 3] = hm[0, 0, 2, 0] = 1
    peaks, val = heatmap_argmax(hm)
    assert peaks[0, 0].tolist() == [3, 1] and peaks[0, 1].tolist() == [0, 0]
    assert val.tolist() == [[1.0, 0.0]]


def test_render_decode_round_trip_recovers_subpixel_positions():
    g = torch.Generator().manual_seed(2)
    B, J, h, w = 8, 16, 64, 48
    kp = torch.rand(B, J, 2, generator=g) * torch.tensor([w - 3.0, h - 3.0]) + 1.0  # interior
    maps = render_gaussian(kp, torch.ones(B, J, dtype=torch.bool), (h, w), sigma=2.0)
    coords, conf = decode_heatmaps(maps)
    err = (coords - kp).abs()
    # argmax is within 0.5 px, the quarter shift moves toward the true side: error <= 0.25 per axis
    assert err.max() <= 0.25 + 1e-6, err.max()
    assert (conf > math.exp(-0.5**2 / 4)).all()  # at most ~0.5*sqrt(2) px from the peak pixel centre


# ---------------------------------------------------------------- flip


@pytest.mark.parametrize("skeleton", [MPII, LSP])
def test_flip_back_and_merge_match_loop_reference(skeleton):
    g = torch.Generator().manual_seed(3)
    hm = torch.randn(2, skeleton.num_joints, 5, 7, generator=g, dtype=torch.float64)
    other = torch.randn(2, skeleton.num_joints, 5, 7, generator=g, dtype=torch.float64)
    ref = ref_flip_back(hm.numpy(), skeleton.flip_index)
    np.testing.assert_array_equal(flip_back(hm, skeleton.flip_index).numpy(), ref)
    np.testing.assert_allclose(flip_merge(other, hm, skeleton.flip_index).numpy(), (other.numpy() + ref) / 2)
    # a non-involutive permutation exercises the inverse mapping
    perm = [2, 0, 3, 1]
    x = torch.randn(1, 4, 3, 3, generator=g, dtype=torch.float64)
    np.testing.assert_array_equal(flip_back(x, perm).numpy(), ref_flip_back(x.numpy(), perm))
    with pytest.raises(ValueError, match="permutation"):
        flip_back(x, [0, 0, 1, 2])


def _mirror_keypoints(kp_in, width, flip_index):
    """Keypoints of the mirrored input: x -> W - 1 - x; joint j of the mirror is joint flip_index[j]."""
    m = kp_in[:, flip_index].clone()
    m[..., 0] = width - 1 - m[..., 0]
    return m


def test_flip_alignment_needs_no_pixel_shift():
    """Render targets for keypoints of a 256-wide crop, mirror the crop's keypoints, render again, flip the
    second set back: identical to float tolerance. The 1-px-shift fix of the x_in/4 convention breaks it."""
    g = torch.Generator().manual_seed(4)
    sk, W, H, stride, sigma = MPII, 256, 256, 4, 1.0
    h, w = H // stride, W // stride
    kp_in = torch.rand(6, sk.num_joints, 2, generator=g, dtype=torch.float64)
    kp_in = kp_in * torch.tensor([W - 1.0, H - 1.0], dtype=torch.float64)
    vis = torch.ones(6, sk.num_joints, dtype=torch.bool)
    first = render_gaussian(input_to_heatmap(kp_in, stride), vis, (h, w), sigma)
    mirrored = render_gaussian(input_to_heatmap(_mirror_keypoints(kp_in, W, sk.flip_index), stride),
                               vis, (h, w), sigma)
    back = flip_back(mirrored, sk.flip_index)
    torch.testing.assert_close(back, first, atol=1e-12, rtol=0)
    # The shifted variant (flip, then move every column one pixel right as x_in/4 code bases do) is off.
    shifted = back.clone()
    shifted[..., 1:] = back[..., :-1]
    assert (shifted - first).abs().max() > 0.3
    # Without the left/right channel swap it is off too (the swap matters).
    assert (mirrored.flip(-1) - first).abs().max() > 0.3
    # Under the x_hm = x_in / 4 convention the plain pixel mirror does not line up either.
    naive_first = render_gaussian(kp_in / stride, vis, (h, w), sigma)
    naive_back = flip_back(render_gaussian(_mirror_keypoints(kp_in, W, sk.flip_index) / stride, vis,
                                           (h, w), sigma), sk.flip_index)
    assert (naive_back - naive_first).abs().max() > 0.1


def test_area_resize_of_mirrored_image_is_mirrored_heatmap_grid():
    """Heatmap pixel j is the mean of input pixels 4j..4j+3 (centre 4j + 1.5 = heatmap_to_input(j)), so an
    area resize commutes with mirroring - the image-level statement behind the convention."""
    g = torch.Generator().manual_seed(5)
    img = torch.rand(1, 3, 32, 32, generator=g, dtype=torch.float64)
    pooled = F.adaptive_avg_pool2d(img, (8, 8))
    torch.testing.assert_close(F.adaptive_avg_pool2d(img.flip(-1), (8, 8)), pooled.flip(-1))
    # the centre of the input pixels averaged into heatmap column j
    cols = torch.arange(32, dtype=torch.float64).expand(1, 1, 32, 32)
    centre = F.adaptive_avg_pool2d(cols, (8, 8))[0, 0, 0]
    torch.testing.assert_close(centre, heatmap_to_input(torch.arange(8, dtype=torch.float64), 4))


def test_coordinate_maps_are_inverse_and_follow_the_formula():
    c = torch.tensor([[[0.0, 0.0], [63.0, 10.5]]], dtype=torch.float64)
    inp = heatmap_to_input(c, 4)
    assert inp.tolist() == [[[1.5, 1.5], [253.5, 43.5]]]
    torch.testing.assert_close(input_to_heatmap(inp, 4), c)
    torch.testing.assert_close(input_to_heatmap(heatmap_to_input(c, 2.5), 2.5), c)
    with pytest.raises(ValueError, match="stride"):
        heatmap_to_input(c, 0)


# ---------------------------------------------------------------- affine


def _random_affines(B, g):
    """Well-conditioned crop-like affines: rotation, scale 0.3..3, translation up to +-500."""
    ang = torch.rand(B, generator=g, dtype=torch.float64) * 2 * math.pi
    s = 0.3 + 2.7 * torch.rand(B, generator=g, dtype=torch.float64)
    t = (torch.rand(B, 2, generator=g, dtype=torch.float64) - 0.5) * 1000
    A = torch.zeros(B, 2, 3, dtype=torch.float64)
    A[:, 0, 0], A[:, 0, 1] = s * ang.cos(), -s * ang.sin()
    A[:, 1, 0], A[:, 1, 1] = s * ang.sin(), s * ang.cos()
    A[:, :, :2] += 0.1 * torch.randn(B, 2, 2, generator=g, dtype=torch.float64)  # a little shear
    A[:, :, 2] = t
    return A


def test_transform_points_matches_loop_and_to_original_inverts_it():
    g = torch.Generator().manual_seed(6)
    A = _random_affines(16, g)
    p = torch.rand(16, 14, 2, generator=g, dtype=torch.float64) * 1000
    fwd = transform_points(p, A)
    np.testing.assert_allclose(fwd.numpy(), ref_affine_apply(p.numpy(), A.numpy()), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(to_original(fwd, A), p, atol=1e-9, rtol=0)
    # float32 points, float64 inversion: error at float32 rounding of the coordinates
    back32 = to_original(transform_points(p.float(), A.float()), A.float())
    assert back32.dtype == torch.float32
    torch.testing.assert_close(back32.double(), p, atol=2e-3, rtol=0)
    # inverse affine composed with the forward one is the identity
    inv = invert_affine(A)
    eye = torch.cat([torch.eye(2, dtype=torch.float64).expand(16, 2, 2), torch.zeros(16, 2, 1,
                                                                                     dtype=torch.float64)], 2)
    composed = transform_points(transform_points(p, A), inv)
    torch.testing.assert_close(composed, transform_points(p, eye))
    # one [2, 3] affine broadcasts over the batch
    torch.testing.assert_close(transform_points(p[:2], A[0]), transform_points(p[:2], A[0].expand(2, 2, 3)))


def test_singular_affine_is_reported_with_its_index():
    A = torch.zeros(3, 2, 3, dtype=torch.float64)
    A[:, 0, 0] = A[:, 1, 1] = 1
    A[1, :, :2] = torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    with pytest.raises(ValueError, match=r"batch index \[1\]"):
        to_original(torch.zeros(3, 1, 2), A)
    with pytest.raises(ValueError, match="affine"):
        transform_points(torch.zeros(3, 1, 2), torch.zeros(2, 2, 3))
