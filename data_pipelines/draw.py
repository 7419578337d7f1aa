"""Skeleton overlays for people to look at: left limbs in one colour, right limbs in another."""

from __future__ import annotations

import cv2
import numpy as np

from data_pipelines.skeletons import Skeleton

LEFT, RIGHT, CENTRE = (255, 140, 0), (0, 160, 255), (80, 220, 80)  # RGB


def joint_colour(skeleton: Skeleton, j: int) -> tuple[int, int, int]:
    if j in skeleton.left_joints:
        return LEFT
    right = {b if a in skeleton.left_joints else a for a, b in skeleton.flip_pairs}
    return RIGHT if j in right else CENTRE


def draw_skeleton(image: np.ndarray, joints: np.ndarray, skeleton: Skeleton,
                  present: np.ndarray | None = None) -> np.ndarray:
    """Copy of RGB uint8 `image` with limbs and joints drawn (0-based pixel-centre coords). A limb takes the
    colour of its side: left if both ends are left joints, right if both are right, else centre."""
    out = np.ascontiguousarray(image.copy())
    present = np.ones(len(joints), bool) if present is None else np.asarray(present, bool)
    thick = max(1, round(max(out.shape[:2]) / 160))
    pts = [tuple(int(round(v)) for v in p) for p in np.asarray(joints, dtype=np.float64)]
    for a, b in skeleton.limbs:
        if present[a] and present[b]:
            ca, cb = joint_colour(skeleton, a), joint_colour(skeleton, b)
            cv2.line(out, pts[a], pts[b], ca if ca == cb else CENTRE, thick, cv2.LINE_AA)
    for j, p in enumerate(pts):
        if present[j]:
            cv2.circle(out, p, thick + 2, joint_colour(skeleton, j), -1, cv2.LINE_AA)
    return out
