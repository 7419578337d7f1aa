"""The one record type every dataset parser produces.

Coordinates are 0-based pixel-centre coordinates in the stored image: (0, 0) is the centre of the
top-left pixel. Parsers of 1-based (MATLAB) annotations - MPII, LSP - subtract 1 on the way in, and
prediction writers add it back on the way out (`ONE_BASED` says which datasets).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Visibility codes (COCO's convention, used for every dataset).
NOT_ANNOTATED, OCCLUDED, VISIBLE = 0, 1, 2

# Datasets whose official annotation and prediction files are 1-based.
ONE_BASED = frozenset({"mpii", "lsp"})

# MPII's convention: `scale` is the person's size in units of 200 px.
SCALE_UNIT_PX = 200.0


@dataclass(frozen=True, eq=False)
class PoseRecord:
    image: str  # image path, or "synthetic:<seed>:<index>" for generated samples
    joints: np.ndarray  # [J, 2] float64, x and y
    visibility: np.ndarray  # [J] int8: NOT_ANNOTATED, OCCLUDED or VISIBLE
    center: np.ndarray  # [2] float64 person centre
    scale: float  # person size / SCALE_UNIT_PX
    dataset: str = ""
    index: int = -1  # position in the dataset's official order
    meta: dict = field(default_factory=dict)  # dataset-specific extras (head box, image size, ...)

    def __post_init__(self):
        j = np.asarray(self.joints, dtype=np.float64)
        v = np.asarray(self.visibility, dtype=np.int8)
        c = np.asarray(self.center, dtype=np.float64)
        if j.ndim != 2 or j.shape[1] != 2 or v.shape != (j.shape[0],) or c.shape != (2,):
            raise ValueError(f"{self.image}: bad record shapes joints={j.shape} visibility={v.shape} "
                             f"center={c.shape}")
        if not np.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"{self.image}: person scale must be positive, got {self.scale}")
        object.__setattr__(self, "joints", j)
        object.__setattr__(self, "visibility", v)
        object.__setattr__(self, "center", c)

    @property
    def num_joints(self) -> int:
        return self.joints.shape[0]
