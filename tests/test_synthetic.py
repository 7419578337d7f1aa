"""The procedural stick-people generator: determinism, geometry (angle limits, joints on the image, crop),
visibility of occluded joints (geometry and pixels), colour families, previews. (Render speed:
`python tests/test_synthetic.py`, a benchmark outside the suite.)

Reference computations here are written independently of the generator: angles are recovered from the
joints with atan2, point-in-polygon is a plain ray-casting loop.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_pipelines.errors import UserError
from data_pipelines.geometry import crop_box_side
from data_pipelines.records import OCCLUDED, VISIBLE
from data_pipelines.synthetic import (
    ANGLE_LIMITS_DEG,
    SIDE_JOINTS,
    SyntheticConfig,
    SyntheticPeople,
    parse_image_id,
    render_record,
    save_previews,
)

REPO = Path(__file__).resolve().parents[1]
N_GEOMETRY = 400  # samples for the geometry tests (records only: fast)


@pytest.fixture(scope="module")
def people():
    return SyntheticPeople(seed=7, size=N_GEOMETRY, image_size=256)


@pytest.fixture(scope="module")
def samples(people):
    return [people.sample(i) for i in people.indices]


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_and_index_give_identical_samples():
    a, b = SyntheticPeople(seed=3, size=10), SyntheticPeople(seed=3, size=10)
    for i in (0, 4, 9):
        img_a, img_b = a.render(i), b.render(i)
        assert img_a.dtype == np.uint8 and img_a.shape == (256, 256, 3) and img_a.flags.c_contiguous
        np.testing.assert_array_equal(img_a, img_b)
        ra, rb = a.record(i), b.record(i)
        np.testing.assert_array_equal(ra.joints, rb.joints)
        np.testing.assert_array_equal(ra.visibility, rb.visibility)
    # rendering order and repetition do not matter (no shared state)
    np.testing.assert_array_equal(a.render(4), SyntheticPeople(seed=3, size=10).render(4))


def test_different_index_or_seed_gives_different_samples():
    p, q = SyntheticPeople(seed=3, size=10), SyntheticPeople(seed=4, size=10)
    digests = {_digest(p.render(i)) for i in range(10)} | {_digest(q.render(i)) for i in range(10)}
    assert len(digests) == 20
    assert not np.allclose(p.record(0).joints, p.record(1).joints)
    assert not np.allclose(p.record(0).joints, q.record(0).joints)


def test_deterministic_across_processes():
    """A fresh interpreter (different hash seed) renders the same bytes."""
    code = ("import hashlib; from data_pipelines.synthetic import SyntheticPeople; "
            "p = SyntheticPeople(seed=11, size=1); "
            "print(hashlib.sha256(p.render(5).tobytes()).hexdigest(), p.record(5).joints.tobytes().hex())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    p = SyntheticPeople(seed=11, size=1)
    assert out == [_digest(p.render(5)), p.record(5).joints.tobytes().hex()]


def test_records_and_image_ids():
    p = SyntheticPeople(seed=5, size=4, first_index=100)
    recs = p.records()
    assert [r.index for r in recs] == [100, 101, 102, 103] and len(p) == 4
    assert [r.image for r in recs] == [f"synthetic:5:{i}" for i in range(100, 104)]
    assert all(r.dataset == "synthetic" and r.num_joints == 14 for r in recs)
    assert parse_image_id(recs[2].image) == (5, 102)
    for bad in ("synthetic:5", "synthetic:x:1", "synth:1:2", "synthetic:1:2:3", "synthetic:-1:2"):
        with pytest.raises(UserError, match="not a synthetic image id"):
            parse_image_id(bad)


def test_render_record_uses_the_records_config():
    cfg = SyntheticConfig(image_size=160, occluder_prob=0.0)
    p = SyntheticPeople(seed=2, size=3, config=cfg)
    rec = p.record(1)
    img = render_record(rec)
    assert img.shape == (160, 160, 3)
    np.testing.assert_array_equal(img, p.render(1))


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 16}, "image_size"),
    ({"person_fill": (0.9, 0.5)}, "person_fill"),
    ({"max_rotation_deg": 200}, "max_rotation_deg"),
    ({"occluder_prob": 1.5}, "occluder_prob"),
    ({"clutter": (5, 2)}, "clutter"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(UserError, match=message):
        SyntheticConfig(**kwargs)


def test_bad_seed_and_index():
    with pytest.raises(UserError, match="seed"):
        SyntheticPeople(seed=-1)
    with pytest.raises(UserError, match="index"):
        SyntheticPeople(seed=0).render(-3)


# ------------------------------------------------------------------------------------------------
# Geometry


def _ang(u, v) -> float:
    """Signed angle from u to v in degrees, atan2(u x v, u . v), screen coordinates."""
    return math.degrees(math.atan2(u[0] * v[1] - u[1] * v[0], u[0] * v[0] + u[1] * v[1]))


def _recover_angles(j: np.ndarray) -> dict:
    """Joint angles from the 14 joints alone, by the definitions in the synthetic module docstring."""
    mid_sho, mid_hip = (j[8] + j[9]) / 2, (j[2] + j[3]) / 2
    down = mid_hip - mid_sho
    body_x = np.array([down[1], -down[0]])  # screen image of the unturned figure's +x axis
    sigma_r = 1.0 if float(np.dot(j[2] - mid_hip, body_x)) > 0 else -1.0
    out = {"head": _ang(-down, j[13] - j[12])}
    for side, sg in (("r", sigma_r), ("l", -sigma_r)):
        k = SIDE_JOINTS[side]
        upper, fore = j[k["elb"]] - j[k["sho"]], j[k["wri"]] - j[k["elb"]]
        thigh, shin = j[k["kne"]] - j[k["hip"]], j[k["ank"]] - j[k["kne"]]
        out[side + "sho"] = -sg * _ang(down, upper)
        out[side + "elb"] = sg * _ang(upper, fore)
        out[side + "hip"] = -sg * _ang(down, thigh)
        out[side + "kne"] = sg * _ang(thigh, shin)
    return out, sigma_r


LIMIT_OF = {"head": "head", "sho": "shoulder", "elb": "elbow", "hip": "hip", "kne": "knee"}


def test_joint_angle_limits(samples):
    # the limits themselves are anatomically sane: no elbow/knee folding flat, no shoulder past overhead
    assert ANGLE_LIMITS_DEG["elbow"][1] <= 160 and ANGLE_LIMITS_DEG["knee"][1] <= 160
    assert ANGLE_LIMITS_DEG["shoulder"][1] <= 180 and abs(ANGLE_LIMITS_DEG["head"][0]) <= 45
    seen = {name: [] for name in ANGLE_LIMITS_DEG}
    for s in samples:
        recovered, sigma_r = _recover_angles(s.joints)
        assert (sigma_r < 0) == (s.facing == "front")  # front: the person's right on the image's left
        for name, value in recovered.items():
            wrapped = (value - s.angles[name] + 180.0) % 360.0 - 180.0
            assert abs(wrapped) < 1e-6, (name, value, s.angles[name])
            lo, hi = ANGLE_LIMITS_DEG[LIMIT_OF[name if name == "head" else name[1:]]]
            assert lo - 1e-9 <= s.angles[name] <= hi + 1e-9, (name, s.angles[name])
            seen[LIMIT_OF[name if name == "head" else name[1:]]].append(s.angles[name])
    # the ranges are really used (not all poses the same)
    for name, values in seen.items():
        lo, hi = ANGLE_LIMITS_DEG[name]
        assert max(values) - min(values) > 0.5 * (hi - lo), name


def test_random_proportions_and_global_pose(samples):
    rel_upper_arm, rotations, facings = [], [], set()
    for s in samples:
        torso = np.linalg.norm((s.joints[2] + s.joints[3]) / 2 - (s.joints[8] + s.joints[9]) / 2)
        rel_upper_arm.append(np.linalg.norm(s.joints[7] - s.joints[8]) / torso)
        rotations.append(s.rotation_deg)
        facings.add(s.facing)
    assert np.std(rel_upper_arm) > 0.05 and 0.25 < min(rel_upper_arm) and max(rel_upper_arm) < 0.7
    assert max(rotations) > 30 and min(rotations) < -30 and facings == {"front", "back"}


def test_joints_inside_image_and_crop_holds_person(people, samples):
    size = people.config.image_size
    for s in samples:
        assert (s.joints >= 0).all() and (s.joints <= size - 1).all()
        extent = (s.joints.max(axis=0) - s.joints.min(axis=0)).max()
        assert 0.3 * size < extent < size  # the person fills a good part of the image
    # every pixel the person changes lies inside the standard crop box (geometry.crop_box_side)
    for i in list(people.indices)[:25]:
        s = people.sample(i)
        changed = np.argwhere((people.render(i) != people.render(i, person=False)).any(axis=2))
        assert len(changed) > 200
        half = crop_box_side(s.scale) / 2
        ys, xs = changed[:, 0], changed[:, 1]
        assert (np.abs(xs - s.center[0]) <= half).all() and (np.abs(ys - s.center[1]) <= half).all()


# ------------------------------------------------------------------------------------------------
# Occlusion


def _inside(poly: np.ndarray, x: float, y: float) -> bool:
    """Ray casting (even-odd rule)."""
    inside = False
    n = len(poly)
    for k in range(n):
        (x1, y1), (x2, y2) = poly[k], poly[(k + 1) % n]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def _edge_distance(poly: np.ndarray, x: float, y: float) -> float:
    best = math.inf
    for k in range(len(poly)):
        a, b = poly[k], poly[(k + 1) % len(poly)]
        ab, ap = b - a, np.array([x, y]) - a
        t = min(max(float(np.dot(ap, ab) / np.dot(ab, ab)), 0.0), 1.0)
        best = min(best, float(np.linalg.norm(ap - t * ab)))
    return best


def test_occluded_joints_are_inside_occluders(samples):
    n_occluded = n_total = 0
    for s in samples:
        for j, (x, y) in enumerate(s.joints):
            covered = any(_inside(p, x, y) for p in s.occluders)
            assert s.visibility[j] == (OCCLUDED if covered else VISIBLE)
            n_occluded += covered
            n_total += 1
    assert 0.01 < n_occluded / n_total < 0.2, n_occluded / n_total


def test_occluded_joints_are_hidden_in_the_pixels(people):
    """At an occluded joint the image is the same with and without the person (the occluder is opaque);
    at a visible joint the person changes the pixel. Joints within 3 px of an occluder edge (anti-aliasing,
    blur) are left out."""
    hidden = shown = differs = 0
    for i in list(people.indices)[:80]:
        s = people.sample(i)
        img, bg = people.render(i), people.render(i, person=False)
        for j, (x, y) in enumerate(s.joints):
            if any(_edge_distance(p, x, y) < 3 for p in s.occluders):
                continue
            px = (int(round(y)), int(round(x)))
            if s.visibility[j] == OCCLUDED:
                np.testing.assert_array_equal(img[px], bg[px])
                hidden += 1
            else:
                shown += 1
                differs += bool((img[px] != bg[px]).any())
    assert hidden > 10 and shown > 500
    assert differs / shown > 0.99, differs / shown


def test_left_and_right_colour_families(people):
    """Forearms and shins: left ones in reds/oranges (hue within [-30, 40] deg), right ones in blues
    ([180, 260]), read from the rendered pixels at the segment midpoints."""
    hits = {"l": [], "r": []}
    for i in list(people.indices)[:120]:
        s = people.sample(i)
        img, bg = people.render(i), people.render(i, person=False)
        for side in ("l", "r"):
            k = SIDE_JOINTS[side]
            for a, b in ((k["elb"], k["wri"]), (k["kne"], k["ank"])):
                if s.visibility[a] == OCCLUDED or s.visibility[b] == OCCLUDED:
                    continue
                x, y = (s.joints[a] + s.joints[b]) / 2
                if any(_edge_distance(p, x, y) < 4 or _inside(p, x, y) for p in s.occluders):
                    continue
                px = (int(round(y)), int(round(x)))
                if (img[px] == bg[px]).all():
                    continue
                h, sat, _ = colorsys.rgb_to_hsv(*(img[px] / 255.0))
                hue = h * 360
                hits[side].append((hue >= 330 or hue <= 40) if side == "l" else (180 <= hue <= 260))
    for side, got in hits.items():
        assert len(got) > 100 and np.mean(got) > 0.85, (side, len(got), np.mean(got))


# ------------------------------------------------------------------------------------------------
# Previews and speed


def test_save_previews(tmp_path):
    p = SyntheticPeople(seed=1, size=3, image_size=128)
    paths = save_previews(p, tmp_path / "prev")
    assert [x.name for x in paths] == [f"synthetic_1_{i:06d}.png" for i in range(3)]
    from PIL import Image

    with Image.open(paths[0]) as im:
        assert im.size == (256, 128) and im.mode == "RGB"  # image | image with the skeleton overlay
        left = np.asarray(im)[:, :128]
    np.testing.assert_array_equal(left, p.render(0))  # PNG is lossless; RGB order kept


def render_speed(size: int = 50) -> tuple[float, float]:
    """A benchmark, not a test (it asserts nothing, so pytest does not collect it): milliseconds per 256-px
    render and per record. Run by hand: `python tests/test_synthetic.py`."""
    p = SyntheticPeople(seed=0, size=size, image_size=256)
    p.render(0)
    t0 = time.perf_counter()
    for i in p.indices:
        p.render(i)
    render_ms = (time.perf_counter() - t0) / len(p) * 1e3
    t0 = time.perf_counter()
    p.records()
    record_ms = (time.perf_counter() - t0) / len(p) * 1e3
    return render_ms, record_ms


if __name__ == "__main__":
    render_ms, record_ms = render_speed()
    print(f"synthetic 256 px: render {render_ms:.2f} ms/image, record {record_ms:.3f} ms/record")
