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
from data_pipelines.synthetic_paint import (
    HAND_SIZE,
    HEAD,
    NECK,
    SHOE_SIZE,
    SIDE_JOINTS,
    SIDES,
    background,
    draw_occluder,
    draw_person,
    finish,
)

PREFIX = "synthetic:"

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
        img = background(self._rng(index, _BACKGROUND), self.config.image_size, self.config.clutter)
        if person:
            draw_person(img, s, self._rng(index, _PERSON))
        rng = self._rng(index, _OCCLUDER)
        for poly in s.occluders:
            draw_occluder(img, poly, rng)
        return finish(img, self._rng(index, _FINISH), self.config.noise_sigma_max)


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
