"""The mean-pose baseline of `bench accuracy`: the floor every accuracy curve is read against.

The training set's mean pose in crop coordinates (each record's joints through its un-augmented crop affine,
geometry.crop_affine(centre, scale, input_size), the crop every model sees at evaluation; averaged per joint
over the records where the joint is annotated) is placed in each test crop and mapped back to the test image
through the inverse of that crop's affine, then scored by the dataset's official protocol
(evaluate.score_records). On LSP the crop's centre and scale come from the ground-truth joints (the dataset has
no person box), for the models and this baseline alike, so the baseline knows where the person is and how big:
what it does not know is the pose.
"""

from __future__ import annotations

import numpy as np

from data_pipelines.geometry import apply_affine, crop_affine
from data_pipelines.records import PoseRecord


def _inverse(A: np.ndarray) -> np.ndarray:
    """The 2x3 affine of the inverse map."""
    linear = np.linalg.inv(A[:, :2])
    return np.concatenate([linear, -(linear @ A[:, 2])[:, None]], axis=1)


def mean_crop_pose(records: list[PoseRecord], input_size: int) -> np.ndarray:
    """[J, 2]: the mean over `records` of each joint's crop coordinates (annotated joints only; a joint
    annotated nowhere is a ValueError naming it)."""
    if not records:
        raise ValueError("mean pose: no training records")
    crops = np.stack([apply_affine(r.joints, crop_affine(r.center, r.scale, input_size)) for r in records])
    annotated = np.stack([r.visibility > 0 for r in records]) & np.isfinite(crops).all(axis=-1)
    counts = annotated.sum(axis=0)
    if (counts == 0).any():
        raise ValueError(f"mean pose: joint(s) {np.flatnonzero(counts == 0).tolist()} annotated in no record")
    return np.where(annotated[..., None], crops, 0.0).sum(axis=0) / counts[:, None]


def place(pose: np.ndarray, records: list[PoseRecord], input_size: int) -> dict[int, np.ndarray]:
    """Predictions (position in `records` -> [J, 2] original pixels): `pose` (crop coordinates) in each
    record's crop."""
    return {i: apply_affine(pose, _inverse(crop_affine(r.center, r.scale, input_size)))
            for i, r in enumerate(records)}
