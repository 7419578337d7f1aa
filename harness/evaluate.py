"""Held-out evaluation: G's predictions (with flip test) mapped back to original-image pixels and scored
with the official protocols of harness.metrics.

The chain per batch: G(crop)[-1] (+ G(mirrored crop)[-1] flipped back and averaged; G as a
harness.inference.InferenceModel: BatchNorm folded, both in one forward, ...) -> decode (argmax +
quarter-pixel shift) -> heatmap -> crop pixels -> original pixels through the inverse crop affine.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from data_pipelines.batch import prepare_batch
from data_pipelines.records import NOT_ANNOTATED, PoseRecord
from data_pipelines.skeletons import Skeleton
from harness import coco_eval, metrics
from harness.config import InferConfig
from harness.inference import InferenceModel
from models.heatmap import decode_flip_merged, decode_heatmaps, flip_merge, heatmap_to_input, to_original

# Which official protocol scores which dataset: LSP-layout data (LSP, synthetic) use PCK@0.2 with the
# torso; MPII uses PCKh with head boxes (falls back to PCK@0.2-style torso scoring without them); COCO uses
# keypoint AP (OKS) by pycocotools' COCOeval against the annotation file (harness.coco_eval).
PROTOCOL_OF = {"lsp": "lsp", "synthetic": "lsp", "mpii": "mpii", "coco": "coco"}


@torch.no_grad()
def predict_heatmaps(model: InferenceModel, images: torch.Tensor, flip_index: list[int] | None) -> torch.Tensor:
    """Last-stack heatmaps [B, J, h, w] in float32; averaged with the flipped input's when flip_index."""
    heatmaps, flipped = model(images, flip_index is not None)
    return heatmaps if flipped is None else flip_merge(heatmaps, flipped, flip_index)


@torch.no_grad()
def predict_original(model: InferenceModel, images: torch.Tensor, affine: torch.Tensor,
                     flip_index: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints in original-image pixels [B, J, 2] (0-based pixel centres) and confidences [B, J]. With the
    flip test, merge and decode run as one fused kernel on a GPU (models.heatmap.decode_flip_merged)."""
    heatmaps, flipped = model(images, flip_index is not None)
    coords, confidence = (decode_heatmaps(heatmaps) if flipped is None
                          else decode_flip_merged(heatmaps, flipped, flip_index))
    stride = images.shape[-1] / heatmaps.shape[-1]
    return to_original(heatmap_to_input(coords, stride), affine.to(coords.device)), confidence


@torch.no_grad()
def predict_dataset(generator: torch.nn.Module, loader, device: torch.device, skeleton: Skeleton,
                    flip_test: bool = True, precision: str = "fp32", infer: InferConfig | None = None,
                    channels_last: bool = False, compile_backend: str = "inductor") -> dict[int, np.ndarray]:
    """Dataset index -> [J, 2] predictions in original pixels, gathered from every rank. G runs as an
    InferenceModel made for this call (`infer`: folded, one-pass flip, ... as harness.inference says)."""
    was_training = generator.training
    generator.eval()
    out: dict[int, np.ndarray] = {}
    flip_index = skeleton.flip_index if flip_test else None
    try:
        model = InferenceModel(generator, precision, infer, channels_last, compile_backend)
        for batch in loader:
            images = prepare_batch(batch, device, targets=False)["image"]
            coords, _ = predict_original(model, images, batch["affine"], flip_index)
            for i, c in zip(batch["index"].tolist(), coords.cpu().numpy()):
                out[int(i)] = c
    finally:
        generator.train(was_training)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[dict[int, np.ndarray]] = [None] * dist.get_world_size()  # type: ignore[list-item]
        dist.all_gather_object(parts, out)
        out = {k: v for part in parts for k, v in part.items()}
    return out


def score_records(records: list[PoseRecord], predictions: dict[int, np.ndarray], dataset: str,
                  threshold: float | None = None, *, coco_annotations=None):
    """Score predictions (keyed by position in `records`) against every record's ground truth. A record
    without a prediction (its image was skipped as unreadable) counts as wrong on all its joints. COCO
    is scored against its annotation file `coco_annotations` (coco_eval.CocoKeypointResult); the others
    give a metrics.PCKResult."""
    if not records:
        raise ValueError("no held-out records to score")
    if PROTOCOL_OF.get(dataset) == "coco":
        if coco_annotations is None:
            raise ValueError("COCO keypoint AP is computed against the annotation file: pass coco_annotations")
        return coco_eval.score_records(records, predictions, coco_annotations)
    num_joints = records[0].num_joints
    missing = np.full((num_joints, 2), np.nan)
    pred = np.stack([predictions.get(i, missing) for i in range(len(records))])
    gt = np.stack([r.joints for r in records])
    protocol = PROTOCOL_OF.get(dataset, "lsp")
    if protocol == "mpii" and all("headbox" in r.meta for r in records):
        annotated = np.stack([r.visibility != NOT_ANNOTATED for r in records])
        headboxes = np.stack([np.asarray(r.meta["headbox"], dtype=np.float64) for r in records])
        return metrics.score("mpii", pred, gt, annotated=annotated, headboxes=headboxes, threshold=threshold)
    if num_joints != metrics.PROTOCOLS["lsp"].skeleton.num_joints:
        raise ValueError(f"dataset {dataset!r}: no head boxes for PCKh and not in the LSP joint layout, "
                         "so it cannot be scored by the official protocols (give data.validation_gt for MPII)")
    return metrics.score("lsp", pred, gt, threshold=threshold)
