"""One entry point for every dataset: `load_records(name, root, split, **opts)` and `skeleton_for(name)`.

Names and options (anything else raises UserError):
- "synthetic": no root. split "train" = indices 0 .. size-1, "test" = indices from SYNTHETIC_TEST_FIRST
  on (disjoint, so held out). opts: seed (0), size (2000 train / 500 test), image_size and any other
  SyntheticConfig field. LSP skeleton.
- "lsp": root with joints.mat and images/ (LSP or LSP-extended). split train / test / all.
  opts: check_images (True).
- "mpii": root with the JSON and images/. split train / valid / all. opts: annotation_file (default
  `<root>/mpii_annotations.json`), image_dir (default `<root>/images`), validation_gt (path of the
  official valid GT .mat: validation records are then matched to it and put in its order, with head
  boxes in meta; see mpii.match_validation_order).
- "coco": root in the standard layout (coco.coco_paths). split train / val. opts: year (2017),
  aspect_ratio (1.0), annotation_file and image_dir (override the standard paths).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from data_pipelines.errors import UserError
from data_pipelines.records import PoseRecord
from data_pipelines.skeletons import COCO, LSP, MPII, Skeleton

# First index of the synthetic "test" split; far above any training size, so the splits never overlap.
SYNTHETIC_TEST_FIRST = 1_000_000
SYNTHETIC_DEFAULT_SIZE = {"train": 2000, "test": 500}


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    skeleton: Skeleton
    splits: tuple[str, ...]
    train_split: str
    eval_split: str  # the split that published numbers are reported on


DATASETS = {
    "synthetic": DatasetInfo("synthetic", LSP, ("train", "test"), "train", "test"),
    "lsp": DatasetInfo("lsp", LSP, ("train", "test", "all"), "train", "test"),
    "mpii": DatasetInfo("mpii", MPII, ("train", "valid", "all"), "train", "valid"),
    "coco": DatasetInfo("coco", COCO, ("train", "val"), "train", "val"),
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None


def skeleton_for(name: str) -> Skeleton:
    """Joint layout of a dataset's records (synthetic people use the LSP layout)."""
    return dataset_info(name).skeleton


def load_records(name: str, root=None, split: str | None = None, **opts) -> list[PoseRecord]:
    """Records of dataset `name` (split defaults to its training split); see the module docstring."""
    info = dataset_info(name)
    split = info.train_split if split is None else split
    if split not in info.splits:
        raise UserError(f"dataset {name!r} has splits {list(info.splits)}, not {split!r}")
    if name == "synthetic":
        return _synthetic(split, **opts)
    if root is None:
        raise UserError(f"dataset {name!r} needs a root folder")
    root = Path(root)
    if name == "lsp":
        from data_pipelines.lsp import load_lsp

        _check_opts(name, opts, {"check_images"})
        return load_lsp(root, split, **opts)
    if name == "mpii":
        from data_pipelines.mpii import load_mpii, load_validation_gt, match_validation_order

        _check_opts(name, opts, {"annotation_file", "image_dir", "validation_gt"})
        records = load_mpii(opts.get("annotation_file") or root / "mpii_annotations.json",
                            opts.get("image_dir") or root / "images", split)
        if opts.get("validation_gt") and split == "valid":
            records = match_validation_order(records, load_validation_gt(opts["validation_gt"]))
        return records
    from data_pipelines.coco import coco_paths, load_coco

    _check_opts(name, opts, {"year", "aspect_ratio", "annotation_file", "image_dir"})
    ann, images = coco_paths(root, split, opts.get("year", 2017))
    return load_coco(opts.get("annotation_file") or ann, opts.get("image_dir") or images,
                     opts.get("aspect_ratio", 1.0))


def _synthetic(split: str, seed: int = 0, size: int | None = None, **config) -> list[PoseRecord]:
    from data_pipelines.synthetic import SyntheticConfig, SyntheticPeople

    _check_opts("synthetic", config, {f.name for f in fields(SyntheticConfig)})
    size = SYNTHETIC_DEFAULT_SIZE[split] if size is None else size
    if split == "train" and size > SYNTHETIC_TEST_FIRST:
        raise UserError(f"synthetic train size must be <= {SYNTHETIC_TEST_FIRST} (where the test split "
                        f"starts)")
    first = 0 if split == "train" else SYNTHETIC_TEST_FIRST
    return SyntheticPeople(seed, size=size, first_index=first, config=SyntheticConfig(**config)).records()


def _check_opts(name: str, opts: dict, allowed: set[str]) -> None:
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise UserError(f"dataset {name!r} does not take option(s) {unknown}; it takes {sorted(allowed)}")
