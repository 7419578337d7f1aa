"""Pixels of the synthetic stick people (data_pipelines/synthetic.py describes them): background, person,
occluders and noise, drawn with OpenCV (anti-aliased, 4 fractional bits: coordinates are pixel centres, like the
records). Every function draws only from the Generator it is given, so an image is a pure function of its
sample's streams.
"""

from __future__ import annotations

import colorsys
import functools
import math

import cv2
import numpy as np

# The figure's joints in the LSP layout.
SIDES = ("r", "l")
# LSP joint indices per side: shoulder, elbow, wrist, hip, knee, ankle.
SIDE_JOINTS = {
    "r": {"sho": 8, "elb": 7, "wri": 6, "hip": 2, "kne": 1, "ank": 0},
    "l": {"sho": 9, "elb": 10, "wri": 11, "hip": 3, "kne": 4, "ank": 5},
}
NECK, HEAD = 12, 13
# Hand and shoe discs: radius in units of the arm / leg thickness; centred 0.7 radius beyond the wrist /
# ankle along the forearm / shin, so that the joint sits at the hand's or foot's base.
HAND_SIZE, SHOE_SIZE = 0.6, 0.6


def _hsv(h_deg: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _random_colour(rng: np.random.Generator, max_sat: float = 1.0) -> tuple[int, int, int]:
    return _hsv(rng.uniform(0, 360), rng.uniform(0, max_sat), rng.uniform(0.15, 1.0))


# --------------------------------------------------------------------------------------------------
# Drawing helpers (OpenCV with 4 fractional bits: coordinates are pixel centres, like the records)

_SHIFT = 4
_ONE = 1 << _SHIFT


def _pt(p) -> tuple[int, int]:
    return int(round(float(p[0]) * _ONE)), int(round(float(p[1]) * _ONE))


def _line(img, a, b, colour, thickness: float) -> None:
    cv2.line(img, _pt(a), _pt(b), colour, max(1, int(round(thickness))), cv2.LINE_AA, _SHIFT)


def _disc(img, c, radius: float, colour) -> None:
    cv2.circle(img, _pt(c), max(1, int(round(radius * _ONE))), colour, -1, cv2.LINE_AA, _SHIFT)


def _poly(img, pts, colour) -> None:
    cv2.fillPoly(img, [np.array([_pt(p) for p in pts], dtype=np.int32)], colour, cv2.LINE_AA, _SHIFT)


def background(rng: np.random.Generator, size: int, clutter: tuple[int, int]) -> np.ndarray:
    """A random background of `size` x `size` with clutter shapes (their number drawn from `clutter`)."""
    kind = rng.integers(3)
    if kind == 0:  # linear gradient between two colours, exact on a 16 x 16 grid, bilinear in between
        c1, c2 = (np.array(_random_colour(rng, 0.7), np.float32) for _ in range(2))
        t = rng.uniform(0, 2 * math.pi)
        g = np.linspace(0.0, 1.0, 16, dtype=np.float32)
        ramp = np.cos(t) * g[None, :] + np.sin(t) * g[:, None]
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
        low = np.clip(np.rint(c1 + ramp[..., None] * (c2 - c1)), 0, 255).astype(np.uint8)
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_LINEAR)
    elif kind == 1:  # smooth colour noise
        k = int(rng.integers(2, 9))
        low = rng.integers(20, 236, (k, k, 3)).astype(np.uint8)
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    else:  # flat colour with grain
        img = np.empty((size, size, 3), np.uint8)
        img[:] = _random_colour(rng, 0.6)
        img = _add_noise(img, rng, rng.uniform(4, 20))
    for _ in range(int(rng.integers(clutter[0], clutter[1] + 1))):
        colour = _random_colour(rng, 0.8)
        c = rng.uniform(0, size, 2)
        r = rng.uniform(0.03, 0.18) * size
        shape = rng.integers(4)
        if shape == 0:
            _disc(img, c, r, colour)
        elif shape == 1:
            a = rng.uniform(0, math.pi)
            d = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
            w, h = r, r * rng.uniform(0.3, 1.0)
            _poly(img, [c + d @ [sx * w, sy * h] for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))], colour)
        elif shape == 2:
            _line(img, c, c + rng.uniform(-2 * r, 2 * r, 2), colour, rng.uniform(1, 4))
        else:
            axes = (int(r * _ONE), int(r * rng.uniform(0.3, 1.0) * _ONE))
            angle, width = float(rng.uniform(0, 180)), int(rng.integers(1, 4))
            cv2.ellipse(img, _pt(c), axes, angle, 0, 360, colour, width, cv2.LINE_AA, _SHIFT)
    return img


def draw_person(img: np.ndarray, s, rng: np.random.Generator) -> None:
    """Limbs, torso and head of the person `s` (a synthetic.SyntheticSample) on `img` (in place)."""
    family = {"l": rng.uniform(-20, 30), "r": rng.uniform(190, 250)}  # hue centres: reds/oranges, blues
    base_sat, base_val = rng.uniform(0.6, 1.0), rng.uniform(0.55, 0.95)
    distal = rng.choice([-1.0, 1.0]) * rng.uniform(0.12, 0.25)  # forearm/shin brighter or darker

    def limb_colour(side: str, step: float) -> tuple[int, int, int]:
        return _hsv(family[side] + rng.uniform(-8, 8), base_sat + rng.uniform(-0.1, 0.1),
                    base_val + step + rng.uniform(-0.06, 0.06))

    def limb(side: str, names: tuple[str, str, str], thickness: float) -> None:
        j = SIDE_JOINTS[side]
        a, b, c = (s.joints[j[n]] for n in names)
        _line(img, a, b, limb_colour(side, 0.0), thickness)
        _line(img, b, c, limb_colour(side, distal), thickness)
        dark = _hsv(family[side], base_sat, 0.25 * base_val)
        for p in (a, b, c):
            _disc(img, p, 0.3 * thickness, dark)

    torso = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.35), rng.uniform(0.3, 0.9))
    skin = _hsv(rng.uniform(15, 40), rng.uniform(0.25, 0.6), rng.uniform(0.5, 0.95))
    hair = _hsv(rng.uniform(15, 45), rng.uniform(0.2, 0.7), rng.uniform(0.08, 0.35))
    shoe = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.5), rng.uniform(0.1, 0.45))

    def end_disc(side: str, names: tuple[str, str], size: float, colour) -> None:
        a, b = (s.joints[SIDE_JOINTS[side][n]] for n in names)
        d = (b - a) / max(float(np.linalg.norm(b - a)), 1e-9)
        _disc(img, b + 0.7 * size * d, size, colour)

    legs, arms = list(SIDES), list(SIDES)
    if rng.random() < 0.5:
        legs.reverse()
    if rng.random() < 0.5:
        arms.reverse()

    for side in legs:
        end_disc(side, ("kne", "ank"), SHOE_SIZE * s.leg_thickness, shoe)
        limb(side, ("hip", "kne", "ank"), s.leg_thickness)
    r, l = SIDE_JOINTS["r"], SIDE_JOINTS["l"]
    quad = [s.joints[r["sho"]], s.joints[l["sho"]], s.joints[l["hip"]], s.joints[r["hip"]]]
    _poly(img, quad, torso)
    for a, b in zip(quad, quad[1:] + quad[:1]):
        _line(img, a, b, torso, s.arm_thickness)
    _line(img, s.neck_base, s.joints[NECK], skin, 0.6 * s.head_radius)
    head_dir = s.joints[HEAD] - s.joints[NECK]
    head_dir /= max(np.linalg.norm(head_dir), 1e-9)
    side_dir = np.array([-head_dir[1], head_dir[0]])
    if s.facing == "front":
        _disc(img, s.head_center, s.head_radius, skin)
        eye = _hsv(0, 0, 0.1)
        for k in (-1, 1):
            _disc(img, s.head_center + s.head_radius * (0.15 * head_dir + 0.38 * k * side_dir),
                  max(1.0, 0.13 * s.head_radius), eye)
        m = s.head_center - 0.45 * s.head_radius * head_dir
        _line(img, m - 0.25 * s.head_radius * side_dir, m + 0.25 * s.head_radius * side_dir, eye,
              max(1.0, 0.1 * s.head_radius))
    else:
        _disc(img, s.head_center, s.head_radius, hair)
    for side in arms:
        end_disc(side, ("elb", "wri"), HAND_SIZE * s.arm_thickness, skin)
        limb(side, ("sho", "elb", "wri"), s.arm_thickness)


def draw_occluder(img: np.ndarray, poly: np.ndarray, rng: np.random.Generator) -> None:
    """An opaque polygon (float64 [K, 2]) in a random colour, sometimes striped, on `img` (in place)."""
    colour = np.array(_random_colour(rng, 0.8), np.float32)
    _poly(img, poly, tuple(int(v) for v in colour))
    if rng.random() < 0.5:  # stripes in a second colour, inside the same polygon
        mask = np.zeros(img.shape[:2], np.uint8)
        _poly(mask, poly, 255)
        stripes = img.copy()
        second = _random_colour(rng, 0.8)
        lo, hi = poly.min(axis=0), poly.max(axis=0)
        step = max(3.0, float((hi - lo).max()) / rng.uniform(3, 7))
        for x in np.arange(lo[0] - (hi[1] - lo[1]), hi[0], step):
            _line(stripes, (x, lo[1]), (x + (hi[1] - lo[1]), hi[1]), second, step / 2.5)
        np.copyto(img, stripes, where=(mask[..., None] == 255))


_BANK_UNIT = 32.0  # the noise bank holds round(32 * N(0, 1)), clipped to int8


@functools.lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed [2S, 2S, 3] int8 field of Gaussian noise (its own constant seed); samples take shifted
    windows of it - far cheaper than drawing S*S*3 normals per image, and just as deterministic."""
    field = np.random.default_rng(0x5A7905E).standard_normal((2 * size, 2 * size, 3)) * _BANK_UNIT
    return np.clip(np.rint(field), -127, 127).astype(np.int8)


def _add_noise(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """img + sigma * N(0, 1) per pixel and channel (a random window of the bank), rounded, saturated."""
    size = img.shape[0]
    oy, ox = (int(v) for v in rng.integers(0, size, 2))
    window = _noise_bank(size)[oy:oy + size, ox:ox + size]
    return cv2.addWeighted(img, 1.0, window, float(sigma) / _BANK_UNIT, 0.0, dtype=cv2.CV_8U)


def finish(img: np.ndarray, rng: np.random.Generator, noise_sigma_max: float) -> np.ndarray:
    """Pixel noise up to `noise_sigma_max` and sometimes a slight blur."""
    sigma = rng.uniform(0.0, noise_sigma_max)
    blur = rng.random() < 0.3
    if sigma > 0.5:
        img = _add_noise(img, rng, sigma)
    if blur:
        img = cv2.GaussianBlur(img, (3, 3), 0.8)
    return np.ascontiguousarray(img)
