"""`python -m harness eval --checkpoint PATH [--data NAME --data-root DIR] [--no-flip] [--json] [--preds-out FILE]
[--infer KEY=VALUE ...]`

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
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where G runs (auto: a GPU when one is visible)")
    p.add_argument("--preds-out", help="write predictions (.mat with variable `preds`, or .npy)")
    p.add_argument("--infer", action="append", default=[], metavar="KEY=VALUE",
                   help="how G runs, overriding the checkpoint's infer.* (harness/inference.py), e.g. --infer "
                        "compile=true --infer cuda_graphs=true; repeatable")
    p.set_defaults(func=run)


def run(args) -> int:
    import scipy.io
    import torch

    from data_pipelines.errors import UserError
    from data_pipelines.records import ONE_BASED
    from harness import checkpoint as ckpt
    from harness import metrics
    from harness.build import build_generator
    from harness.config import config_from_dict, parse_override
    from harness.data import RunData
    from harness.evaluate import predict_dataset, score_records
    from harness.precision import param_dtype

    state = ckpt.load(args.checkpoint)
    data = dict(state["config"]["data"])
    if args.data:
        data["name"] = args.data
    if args.data_root:
        data["root"] = args.data_root
    if args.split:
        data["val_split"] = args.split
    infer = dict(state["config"].get("infer", {}))
    for item in args.infer:
        keys, value = parse_override(f"infer.{item}")
        infer[keys[-1]] = value
    cfg = config_from_dict({**state["config"], "data": data, "infer": infer},
                           where=f"{args.checkpoint} + --data / --infer")
    run_data = RunData(cfg, train=False)
    skeleton, records = run_data.skeleton, run_data.val_records
    generator = build_generator(cfg, skeleton.num_joints)
    try:
        generator.load_state_dict(state["generator"])
    except RuntimeError as exc:
        raise UserError(f"{args.checkpoint}: generator weights do not fit {cfg.data.name} "
                        f"({skeleton.num_joints} joints): {exc}") from None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    precision = cfg.train.precision if device.type == "cuda" or cfg.train.precision == "fp64" else "fp32"
    generator.to(device, param_dtype(precision))  # weights in the dtype the images are fed in
    preds = predict_dataset(generator, run_data.val_loader(args.batch_size), device, skeleton,
                            flip_test=not args.no_flip, precision=precision, infer=cfg.infer,
                            channels_last=cfg.train.channels_last and device.type == "cuda",
                            compile_backend=cfg.train.compile_backend)
    try:  # COCO: keypoint AP against the split's annotation file
        result = score_records(records, preds, cfg.data.name, coco_annotations=run_data.val_annotations)
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
