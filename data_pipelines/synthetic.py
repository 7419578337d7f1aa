"""Procedural stick people in the LSP 14-joint layout: the quickstart dataset (seeded, no files).

`SyntheticPeople(seed, size, image_size)` describes images `first_index .. first_index + size - 1`; each
is a pure function of (seed, index, config): `records()` gives the PoseRecords (image
"synthetic:<seed>:<index>") without drawing anything, `render(index)` the RGB uint8 image.

The person is a 2-D kinematic tree in body units (torso length 1, pelvis at the origin):
  pelvis -> hips (half hip width to each side), pelvis -> neck base (torso axis) -> shoulders (half
  shoulder width), neck base -> neck joint -> head top along the head axis (tilted against the torso),
  shoulder -> elbow -> wrist and hip -> knee -> ankle with random segment lengths.
Shoulder and hip widths share a random "profile" factor (1 = facing the camera or its back, small =
side view) and every limb segment a random foreshortening factor. `facing` is "front" (the person's
right side on the image's left) or "back". The tree is then turned by `rotation_deg` (> 0 clockwise on
screen), scaled so that the drawn person's longer side is a random fraction `person_fill` of the image,
and moved to a random place where all of it is inside the image.

Joint angles (degrees, `ANGLE_LIMITS_DEG`, sampled inside the limits), with ang(u, v) = atan2(u x v,
u . v) the signed angle on screen (y down) and sigma = +1 for the side whose outward direction is the
body's +x axis on screen (x of the unturned figure; the right side when facing back), -1 otherwise:
  head:      ang(torso up, neck -> head top)              (torso up = mid-hip -> mid-shoulder)
  shoulder: -sigma * ang(torso down, shoulder -> elbow)   (0 = hanging, 90 = sideways, 180 = up)
  elbow:     sigma * ang(shoulder -> elbow, elbow -> wrist)
  hip:      -sigma * ang(torso down, hip -> knee)
  knee:      sigma * ang(hip -> knee, knee -> ankle)
Elbows and knees bend one way in 3-D, but their image can show either sign; the limits only exclude a
fold tighter than 30 degrees.

Drawing (OpenCV, anti-aliased, 0-based pixel-centre coordinates): a random background (gradient,
smooth colour noise or flat colour with grain) with random clutter shapes; thick limbs whose colours
come from one family per side (left: reds/oranges, right: blues; hue, saturation and value jittered per
person and per segment, the distal segment lighter or darker than the proximal one), a dark disc at
every joint, skin-coloured hands and dark shoes (discs just beyond wrists and ankles), a neutral torso,
a head disc that shows the facing (front: skin tone with eyes and mouth; back: hair colour); then 0-2
opaque occluders (rotated rectangles or ellipses, placed near a random joint); then pixel noise and
sometimes a slight blur. A joint inside an occluder polygon is OCCLUDED, all others VISIBLE.

Left/right cues and flip augmentation: the colour families are a side cue that a horizontal flip breaks
(a flipped left arm keeps its colour but is relabelled right). The facing cue (head) with the body
geometry is flip-consistent, so training with flips still has a learnable, consistent signal.

Centre and scale follow the LSP rule (lsp.center_scale_from_joints: joint box centre, 1.25 x its longer
side / 200), so the standard crop (geometry.crop_box_side) holds the whole drawn person.
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from data_pipelines.errors import UserError
from data_pipelines.lsp import center_scale_from_joints
from data_pipelines.records import OCCLUDED, VISIBLE, PoseRecord
from data_pipelines.skeletons import LSP

PREFIX = "synthetic:"
SIDES = ("r", "l")
# LSP joint indices per side: shoulder, elbow, wrist, hip, knee, ankle.
SIDE_JOINTS = {
    "r": {"sho": 8, "elb": 7, "wri": 6, "hip": 2, "kne": 1, "ank": 0},
    "l": {"sho": 9, "elb": 10, "wri": 11, "hip": 3, "kne": 4, "ank": 5},
}
NECK, HEAD = 12, 13

ANGLE_LIMITS_DEG = {
    "head": (-35.0, 35.0),
    "shoulder": (-40.0, 180.0),
    "elbow": (-150.0, 150.0),
    "hip": (-40.0, 120.0),
    "knee": (-150.0, 150.0),
}
# Segment lengths and widths in torso lengths (uniform ranges).
PROPORTIONS = {
    "hip_half_width": (0.16, 0.24), "shoulder_half_width": (0.28, 0.40),
    "neck": (0.08, 0.16), "head": (0.40, 0.52),
    "upper_arm": (0.50, 0.65), "forearm": (0.45, 0.60),
    "thigh": (0.75, 0.95), "shin": (0.70, 0.90),
    "arm_thickness": (0.09, 0.13), "leg_thickness": (0.11, 0.16),
}
# Hand and shoe discs: radius in units of the arm / leg thickness; centred 0.7 radius beyond the wrist /
# ankle along the forearm / shin, so that the joint sits at the hand's or foot's base.
HAND_SIZE, SHOE_SIZE = 0.6, 0.6
# RNG streams per (seed, index): geometry (pose, placement, occluder shapes) is separate from the
# appearance streams, so records() never draws pixels and person=False renders keep the same background.
_GEOMETRY, _BACKGROUND, _PERSON, _OCCLUDER, _FINISH = range(5)


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator settings (all plain values, so a record's meta can carry them)."""

    image_size: int = 256
    max_rotation_deg: float = 40.0  # global rotation ~ U(-max, max)
    person_fill: tuple[float, float] = (0.5, 0.8)  # drawn person's longer side / image side
    occluder_prob: float = 0.4  # probability of at least one occluder (a second one: a quarter of that)
    clutter: tuple[int, int] = (2, 10)  # number of background shapes, inclusive range
    noise_sigma_max: float = 8.0  # pixel noise sigma ~ U(0, max), in grey levels

    def __post_init__(self):
        object.__setattr__(self, "person_fill", tuple(float(v) for v in self.person_fill))
        object.__setattr__(self, "clutter", tuple(int(v) for v in self.clutter))
        if int(self.image_size) != self.image_size or not 32 <= self.image_size <= 4096:
            raise UserError(f"synthetic image_size must be an integer in [32, 4096], got {self.image_size}")
        lo, hi = self.person_fill
        if not 0.1 <= lo <= hi <= 0.95:
            raise UserError(f"synthetic person_fill must satisfy 0.1 <= lo <= hi <= 0.95, "
                            f"got {self.person_fill}")
        if not 0 <= self.max_rotation_deg <= 180:
            raise UserError(f"synthetic max_rotation_deg must be in [0, 180], got {self.max_rotation_deg}")
        if not 0 <= self.occluder_prob <= 1:
            raise UserError(f"synthetic occluder_prob must be in [0, 1], got {self.occluder_prob}")
        if not 0 <= self.clutter[0] <= self.clutter[1]:
            raise UserError(f"synthetic clutter must be 0 <= lo <= hi, got {self.clutter}")
        if not self.noise_sigma_max >= 0:
            raise UserError(f"synthetic noise_sigma_max must be >= 0, got {self.noise_sigma_max}")


@dataclass(frozen=True, eq=False)
class SyntheticSample:
    """Geometry of one generated person, in image pixels (0-based pixel centres) unless said otherwise."""

    joints: np.ndarray  # [14, 2] LSP order
    visibility: np.ndarray  # [14] int8, VISIBLE or OCCLUDED
    center: np.ndarray
    scale: float
    angles: dict  # "head", "rsho", "relb", "rhip", "rkne", "lsho", ... in degrees (module docstring)
    facing: str  # "front" or "back"
    rotation_deg: float
    neck_base: np.ndarray  # top of the torso axis
    head_center: np.ndarray
    head_radius: float
    arm_thickness: float  # line widths in pixels
    leg_thickness: float
    occluders: tuple  # float64 polygons [K, 2], drawn in this order


class SyntheticPeople:
    """Seeded generator of `size` stick-people images, indices first_index .. first_index + size - 1."""

    def __init__(self, seed: int = 0, size: int = 1000, image_size: int | None = None, first_index: int = 0,
                 config: SyntheticConfig | None = None):
        config = config or SyntheticConfig()
        if image_size is not None and image_size != config.image_size:
            config = SyntheticConfig(**{**asdict(config), "image_size": image_size})
        if int(seed) != seed or seed < 0:
            raise UserError(f"synthetic seed must be a non-negative integer, got {seed!r}")
        if int(size) != size or size < 0 or int(first_index) != first_index or first_index < 0:
            raise UserError(f"synthetic size and first_index must be non-negative integers, got "
                            f"{size!r}, {first_index!r}")
        self.seed, self.size, self.first_index, self.config = int(seed), int(size), int(first_index), config

    def __len__(self) -> int:
        return self.size

    @property
    def indices(self) -> range:
        return range(self.first_index, self.first_index + self.size)

    def image_id(self, index: int) -> str:
        return f"{PREFIX}{self.seed}:{index}"

    def records(self) -> list[PoseRecord]:
        return [self.record(i) for i in self.indices]

    def record(self, index: int) -> PoseRecord:
        s = self.sample(index)
        return PoseRecord(image=self.image_id(index), joints=s.joints, visibility=s.visibility,
                          center=s.center, scale=s.scale, dataset="synthetic", index=index,
                          meta={"seed": self.seed, "config": asdict(self.config)})

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        if int(index) != index or index < 0:
            raise UserError(f"synthetic index must be a non-negative integer, got {index!r}")
        return np.random.default_rng(np.random.SeedSequence([self.seed, int(index), stream]))

    # ----------------------------------------------------------------------------------------------
    # Geometry

    def sample(self, index: int) -> SyntheticSample:
        """The person's geometry (joints, angles, occluders) - no pixels."""
        rng = self._rng(index, _GEOMETRY)
        cfg = self.config
        p = {k: rng.uniform(lo, hi) for k, (lo, hi) in PROPORTIONS.items()}
        profile = rng.uniform(0.25, 1.0) if rng.random() < 0.35 else 1.0
        facing = "front" if rng.random() < 0.65 else "back"
        # sigma: screen sign of each side's outward direction in the unturned figure (x to the right).
        sigma = {"r": -1.0, "l": 1.0} if facing == "front" else {"r": 1.0, "l": -1.0}
        angles = {"head": _clipped_normal(rng, 0.0, 12.0, ANGLE_LIMITS_DEG["head"])}
        for side in SIDES:
            angles[side + "sho"] = _mixture(rng, 25.0, 30.0, ANGLE_LIMITS_DEG["shoulder"], 0.3)
            angles[side + "elb"] = _mixture(rng, 0.0, 35.0, ANGLE_LIMITS_DEG["elbow"], 0.4)
            angles[side + "hip"] = _mixture(rng, 8.0, 15.0, ANGLE_LIMITS_DEG["hip"], 0.25)
            angles[side + "kne"] = _mixture(rng, 0.0, 20.0, ANGLE_LIMITS_DEG["knee"], 0.25)
        shorten = {(side, k): (rng.uniform(0.55, 1.0) if rng.random() < 0.3 else 1.0)
                   for side in SIDES for k in ("ua", "fa", "th", "sh")}

        body = np.zeros((LSP.num_joints, 2))
        neck_base = _dir(180.0)  # torso length 1 straight up from the pelvis at the origin
        head_dir = _dir(180.0 - angles["head"])
        body[NECK] = neck_base + p["neck"] * head_dir
        body[HEAD] = body[NECK] + p["head"] * head_dir
        head_radius = p["head"] * 0.45
        head_center = body[HEAD] - head_radius * head_dir
        for side in SIDES:
            sg, j = sigma[side], SIDE_JOINTS[side]
            body[j["sho"]] = neck_base + sg * profile * p["shoulder_half_width"] * np.array([1.0, 0.0])
            body[j["hip"]] = sg * profile * p["hip_half_width"] * np.array([1.0, 0.0])
            upper = sg * angles[side + "sho"]
            body[j["elb"]] = body[j["sho"]] + p["upper_arm"] * shorten[side, "ua"] * _dir(upper)
            body[j["wri"]] = body[j["elb"]] + p["forearm"] * shorten[side, "fa"] * _dir(
                upper - sg * angles[side + "elb"])
            thigh = sg * angles[side + "hip"]
            body[j["kne"]] = body[j["hip"]] + p["thigh"] * shorten[side, "th"] * _dir(thigh)
            body[j["ank"]] = body[j["kne"]] + p["shin"] * shorten[side, "sh"] * _dir(
                thigh - sg * angles[side + "kne"])

        rotation = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)
        t = math.radians(rotation)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        body, neck_base, head_center = body @ rot.T, rot @ neck_base, rot @ head_center
        # Extent of the drawn figure: joints padded by the farthest reach of lines, hands and shoes
        # (HAND_SIZE, SHOE_SIZE: radius r centred 0.7 r beyond the joint), and the head disc.
        pad = max(p["arm_thickness"] * max(0.5, 1.7 * HAND_SIZE),
                  p["leg_thickness"] * max(0.5, 1.7 * SHOE_SIZE))
        lo = np.minimum((body - pad).min(axis=0), head_center - head_radius)
        hi = np.maximum((body + pad).max(axis=0), head_center + head_radius)
        size = cfg.image_size
        px = rng.uniform(*cfg.person_fill) * size / float((hi - lo).max())  # pixels per torso length
        margin = 2.0
        free = (size - 1 - 2 * margin) - (hi - lo) * px  # >= 0 since person_fill <= 0.95
        offset = margin - lo * px + rng.uniform(0.0, 1.0, 2) * np.maximum(free, 0.0)
        joints = body * px + offset

        occluders = self._occluders(rng, joints, float((hi - lo).max() * px))
        visibility = np.full(LSP.num_joints, VISIBLE, dtype=np.int8)
        for poly in occluders:
            inside = [cv2.pointPolygonTest(poly.astype(np.float32), (float(x), float(y)), False) >= 0
                      for x, y in joints]
            visibility[np.asarray(inside)] = OCCLUDED
        center, scale = center_scale_from_joints(joints, visibility)
        return SyntheticSample(
            joints=joints, visibility=visibility, center=center, scale=scale, angles=angles, facing=facing,
            rotation_deg=rotation, neck_base=neck_base * px + offset, head_center=head_center * px + offset,
            head_radius=head_radius * px, arm_thickness=p["arm_thickness"] * px,
            leg_thickness=p["leg_thickness"] * px, occluders=tuple(occluders))

    def _occluders(self, rng: np.random.Generator, joints: np.ndarray, person_px: float) -> list[np.ndarray]:
        u = rng.random()
        count = 0 if u >= self.config.occluder_prob else (2 if u < self.config.occluder_prob / 4 else 1)
        polys = []
        for _ in range(count):
            centre = joints[rng.integers(len(joints))] + rng.normal(0.0, 0.08 * person_px, 2)
            a, b = rng.uniform(0.05, 0.12) * person_px, rng.uniform(0.08, 0.2) * person_px  # half sizes
            t = rng.uniform(0.0, math.pi)
            if rng.random() < 0.5:
                unit = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
            else:
                k = np.linspace(0.0, 2 * math.pi, 32, endpoint=False)
                unit = np.stack([np.cos(k), np.sin(k)], axis=1)
            rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
            polys.append((unit * [a, b]) @ rot.T + centre)
        return polys

    # ----------------------------------------------------------------------------------------------
    # Pixels

    def render(self, index: int, person: bool = True) -> np.ndarray:
        """RGB uint8 [S, S, 3] image of sample `index`. person=False leaves the person out (background,
        occluders and noise are the same), for checking what the person covers."""
        s = self.sample(index)
        img = _background(self._rng(index, _BACKGROUND), self.config)
        if person:
            _draw_person(img, s, self._rng(index, _PERSON))
        rng = self._rng(index, _OCCLUDER)
        for poly in s.occluders:
            _draw_occluder(img, poly, rng)
        return _finish(img, self._rng(index, _FINISH), self.config)


@functools.lru_cache(maxsize=16)
def _generator(seed: int, config: SyntheticConfig) -> SyntheticPeople:
    return SyntheticPeople(seed=seed, size=0, config=config)


def parse_image_id(image: str) -> tuple[int, int]:
    """(seed, index) of "synthetic:<seed>:<index>"; UserError for anything else."""
    parts = image.split(":")
    if len(parts) != 3 or parts[0] + ":" != PREFIX or not parts[1].isdigit() or not parts[2].isdigit():
        raise UserError(f"not a synthetic image id (expected 'synthetic:<seed>:<index>'): {image!r}")
    return int(parts[1]), int(parts[2])


def render_record(record: PoseRecord) -> np.ndarray:
    """Render a synthetic record with the generator settings stored in its meta (default settings if
    absent) - the loader to use when records may come from a non-default SyntheticConfig."""
    seed, index = parse_image_id(record.image)
    cfg = record.meta.get("config")
    config = SyntheticConfig(**cfg) if cfg else SyntheticConfig()
    return _generator(seed, config).render(index)


def save_previews(people: SyntheticPeople, out_dir, indices=None, overlay: bool = True) -> list[Path]:
    """Write PNGs of some samples (default: all of `people`) for a person to look at: the image, and with
    `overlay` the same image with the LSP skeleton drawn (data_pipelines.draw: left limbs orange, right blue)
    and occluded joints ringed in white. Returns the written paths."""
    from data_pipelines.draw import draw_skeleton

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    indices = list(indices) if indices is not None else list(people.indices)
    paths = []
    for i in indices:
        img = people.render(i)
        if overlay:
            s = people.sample(i)
            drawn = draw_skeleton(img, s.joints, LSP)
            for j in np.flatnonzero(s.visibility == OCCLUDED):
                c = tuple(int(round(v)) for v in s.joints[j])
                cv2.circle(drawn, c, max(4, img.shape[0] // 40), (255, 255, 255), 1, cv2.LINE_AA)
            img = np.concatenate([img, drawn], axis=1)
        path = out / f"synthetic_{people.seed}_{i:06d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------
# Sampling helpers


def _dir(phi_deg: float) -> np.ndarray:
    """Unit vector at angle phi from straight down (0 = down (0, 1), +90 = +x), screen coordinates."""
    t = math.radians(phi_deg)
    return np.array([math.sin(t), math.cos(t)])


def _clipped_normal(rng: np.random.Generator, mean: float, std: float, limits: tuple[float, float]) -> float:
    return float(np.clip(rng.normal(mean, std), *limits))


def _mixture(rng: np.random.Generator, mean: float, std: float, limits: tuple[float, float],
             uniform_prob: float) -> float:
    """A common pose (normal around `mean`) or, with `uniform_prob`, any angle within the limits."""
    if rng.random() < uniform_prob:
        return float(rng.uniform(*limits))
    return _clipped_normal(rng, mean, std, limits)


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


def _background(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    size = cfg.image_size
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
    for _ in range(int(rng.integers(cfg.clutter[0], cfg.clutter[1] + 1))):
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


def _draw_person(img: np.ndarray, s: SyntheticSample, rng: np.random.Generator) -> None:
    """Limbs, torso and head of sample `s` on `img` (in place)."""
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


def _draw_occluder(img: np.ndarray, poly: np.ndarray, rng: np.random.Generator) -> None:
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


def _finish(img: np.ndarray, rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    sigma = rng.uniform(0.0, cfg.noise_sigma_max)
    blur = rng.random() < 0.3
    if sigma > 0.5:
        img = _add_noise(img, rng, sigma)
    if blur:
        img = cv2.GaussianBlur(img, (3, 3), 0.8)
    return np.ascontiguousarray(img)


def main(argv: list[str] | None = None) -> int:
    """`python -m data_pipelines.synthetic OUT_DIR [--seed S] [--count N] [--image-size P]`: previews."""
    import argparse

    ap = argparse.ArgumentParser(description="Save synthetic samples with skeleton overlays as PNG.")
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--first-index", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=SyntheticConfig.image_size)
    args = ap.parse_args(argv)
    people = SyntheticPeople(args.seed, size=args.count, image_size=args.image_size,
                             first_index=args.first_index)
    for path in save_previews(people, args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
