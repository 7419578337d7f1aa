"""Joint layouts of the supported datasets: names, left/right flip pairs, limbs and the metric groups.

Every other module takes its joint knowledge from here (flip-test, augmentation, metrics, drawing), so a
dataset's layout is written down exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Skeleton:
    name: str
    joints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    limbs: tuple[tuple[int, int], ...]
    # Metric table: column name -> joint indices averaged (unweighted) into that column.
    groups: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # Joints left out of the "Mean" column (MPII: pelvis and thorax).
    mean_excludes: tuple[int, ...] = ()
    # Joints whose distance normalises PCK (LSP: left shoulder - right hip) or the cGAN torso distance.
    torso: tuple[int, int] | None = None

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    @property
    def flip_index(self) -> list[int]:
        """Permutation p such that joint j of a mirrored image is joint p[j] of the original."""
        perm = list(range(self.num_joints))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    @property
    def left_joints(self) -> tuple[int, ...]:
        """The left member of each flip pair (drawn in its own colour)."""
        return tuple(sorted(a if self.joints[a].startswith("l") else b for a, b in self.flip_pairs))

    def index(self, name: str) -> int:
        return self.joints.index(name)


# MPII order, as in the official evaluation's `dataset_joints`.
MPII = Skeleton(
    name="mpii",
    joints=("rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor",
            "neck", "head", "rwri", "relb", "rsho", "lsho", "lelb", "lwri"),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    limbs=((0, 1), (1, 2), (2, 6), (3, 6), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
           (10, 11), (11, 12), (12, 7), (13, 7), (13, 14), (14, 15)),
    groups={"Head": (9,), "Sho.": (12, 13), "Elb.": (11, 14), "Wri.": (10, 15),
            "Hip": (2, 3), "Knee": (1, 4), "Ank.": (0, 5)},
    mean_excludes=(6, 7),
    torso=(7, 6),
)

# LSP order (README.original.txt): right leg, left leg, right arm, left arm, neck, head top.
LSP = Skeleton(
    name="lsp",
    joints=("rank", "rkne", "rhip", "lhip", "lkne", "lank", "rwri", "relb", "rsho",
            "lsho", "lelb", "lwri", "neck", "head"),
    flip_pairs=((0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9)),
    limbs=((0, 1), (1, 2), (3, 4), (4, 5), (2, 8), (3, 9), (6, 7), (7, 8), (9, 10), (10, 11),
           (8, 12), (9, 12), (12, 13)),
    groups={"Head": (12, 13), "Sho.": (8, 9), "Elb.": (7, 10), "Wri.": (6, 11),
            "Hip": (2, 3), "Knee": (1, 4), "Ank.": (0, 5)},
    torso=(9, 2),  # left shoulder, right hip
)

# COCO person keypoints.
COCO = Skeleton(
    name="coco",
    joints=("nose", "leye", "reye", "lear", "rear", "lsho", "rsho", "lelb", "relb", "lwri", "rwri",
            "lhip", "rhip", "lkne", "rkne", "lank", "rank"),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    limbs=((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
           (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4)),
    groups={"Head": (0, 1, 2, 3, 4), "Sho.": (5, 6), "Elb.": (7, 8), "Wri.": (9, 10),
            "Hip": (11, 12), "Knee": (13, 14), "Ank.": (15, 16)},
    torso=(5, 12),  # left shoulder, right hip
)

SKELETONS = {s.name: s for s in (MPII, LSP, COCO)}


def get_skeleton(name: str) -> Skeleton:
    try:
        return SKELETONS[name]
    except KeyError:
        raise ValueError(f"unknown skeleton {name!r}; known: {sorted(SKELETONS)}") from None
