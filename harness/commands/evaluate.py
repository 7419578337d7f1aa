"""`python -m harness eval --checkpoint PATH [--data NAME --data-root DIR] [--no-flip] [--json] [--preds-out FILE]`

Scores a checkpoint's generator on the held-out split with the official protocols (PCKh on MPII, PCK@0.2
on LSP-layout data, keypoint AP by pycocotools' COCOeval on COCO, one pose per ground-truth box) and can
write the predictions in the official `preds` layout (people x joints x 2, 1-based pixels for MPII and LSP,
as their evaluation scripts read them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def register(sub, name: str) -> None:
    p = sub.add_parser(name, help="score a checkpoint on a held-out split", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", choices=["synthetic", "lsp", "mpii", "coco"], help="default: the training data")
    p.add_argument("--data-root", help="dataset folder (default: the training config's)")
    p.add_argument("--split", help="default: the dataset's held-out split")
    p.add_argument("--no-flip", action="store_true", help="no flip test")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--preds-out", help="write predictions (.mat with variable `preds`, or .npy)")
    p.set_defaults(func=run)


def run(args) -> int:
    import scipy.io
    import torch

    from data_pipelines.dataset import PoseDataset, make_loader
    from data_pipelines.errors import UserError
    from data_pipelines.records import ONE_BASED
    from data_pipelines.registry import skeleton_for
    from data_pipelines.transforms import eval_transform
    from harness import checkpoint as ckpt
    from harness import metrics
    from harness.build import build_generator
    from harness.config import config_from_dict
    from harness.data import load_split
    from harness.evaluate import predict_dataset, score_records

    state = ckpt.load(args.checkpoint)
    data = dict(state["config"]["data"])
    if args.data:
        data["name"] = args.data
    if args.data_root:
        data["root"] = args.data_root
    cfg = config_from_dict({**state["config"], "data": data}, where=f"{args.checkpoint} + --data")
    skeleton = skeleton_for(cfg.data.name)
    generator = build_generator(cfg, skeleton.num_joints)
    try:
        generator.load_state_dict(state["generator"])
    except RuntimeError as exc:
        raise UserError(f"{args.checkpoint}: generator weights do not fit {cfg.data.name} "
                        f"({skeleton.num_joints} joints): {exc}") from None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator.to(device)
    records = load_split(cfg.data, "val", split=args.split)
    c = cfg.data
    dataset = PoseDataset(records, skeleton, eval_transform(skeleton, c.input_size, c.heatmap_size, c.sigma),
                          on_bad_sample=c.on_bad_sample)
    loader = make_loader(dataset, batch_size=args.batch_size, seed=0, epoch=0, rank=0, world_size=1,
                         num_workers=c.num_workers, shuffle=False, drop_last=False)
    preds = predict_dataset(generator, loader, device, skeleton, flip_test=not args.no_flip,
                            precision=cfg.train.precision if device.type == "cuda" else "fp32")
    coco_gt = None
    if cfg.data.name == "coco":  # COCO keypoint AP is scored against the split's annotation file
        from data_pipelines.coco import coco_paths
        coco_gt = c.annotation_file or coco_paths(c.root, args.split or c.val_split or "val")[0]
    try:
        result = score_records(records, preds, cfg.data.name, coco_annotations=coco_gt)
    except ValueError as exc:
        raise UserError(f"cannot score {cfg.data.name}: {exc}") from None
    if args.preds_out:
        out = np.full((len(records), skeleton.num_joints, 2), np.nan)
        for i, p in preds.items():
            out[i] = p
        if cfg.data.name in ONE_BASED:
            out += 1.0
        path = Path(args.preds_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".npy":
            np.save(path, out)
        else:
            scipy.io.savemat(path, {"preds": out})
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        metrics.print_result(result)
    return 0
