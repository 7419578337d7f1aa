"""`python -m harness predict --checkpoint PATH IMAGE... [--out DIR]`

For each image (taken as one person roughly filling it, as in a person crop): keypoints in image pixels
as JSON (0-based pixel centres, with per-joint confidence) and a PNG with the skeleton drawn over the
image, left limbs orange and right limbs blue.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub, name: str) -> None:
    p = sub.add_parser(name, help="predict keypoints for images", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", default="predictions", help="output folder (default ./predictions)")
    p.add_argument("--no-flip", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch
    from PIL import Image

    from data_pipelines.batch import prepare_batch
    from data_pipelines.draw import draw_skeleton
    from data_pipelines.errors import UserError
    from data_pipelines.geometry import crop_affine, crop_box_side
    from data_pipelines.images import BadImageError, load_image
    from data_pipelines.loaders.cpu import warp_crop
    from data_pipelines.registry import skeleton_for
    from harness import checkpoint as ckpt
    from harness.build import build_generator
    from harness.config import config_from_dict
    from harness.evaluate import predict_original
    from harness.inference import InferenceModel

    state = ckpt.load(args.checkpoint)
    cfg = config_from_dict(state["config"], where=args.checkpoint)
    skeleton = skeleton_for(cfg.data.name)
    generator = build_generator(cfg, skeleton.num_joints)
    generator.load_state_dict(state["generator"])
    generator.eval()
    model = InferenceModel(generator, "fp32", cfg.infer)  # on the CPU, in fp32
    size = cfg.data.input_size
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for image_path in args.images:
        try:
            image = load_image(image_path)
        except BadImageError as exc:
            print(f"error: {exc}")
            failures += 1
            continue
        h, w = image.shape[:2]
        # The whole image is the person box (its longer side is the crop box side), cropped as in evaluation.
        affine = crop_affine(((w - 1) / 2, (h - 1) / 2), max(h, w) / crop_box_side(1.0), size)
        batch = {"image": torch.from_numpy(warp_crop(image, affine, size))[None], "color": torch.ones(1, 3),
                 "num_samples": 1}
        images = prepare_batch(batch, "cpu", targets=False)["image"]
        coords, conf = predict_original(model, images, torch.from_numpy(affine)[None],
                                        None if args.no_flip else skeleton.flip_index)
        coords, conf = coords[0].numpy(), conf[0].numpy()
        stem = Path(image_path).stem
        result = {"image": str(image_path), "width": w, "height": h, "skeleton": skeleton.name,
                  "coordinates": "pixels, 0-based, (0, 0) = centre of the top-left pixel",
                  "keypoints": {name: {"x": float(x), "y": float(y), "confidence": float(c)}
                                for name, (x, y), c in zip(skeleton.joints, coords, conf)}}
        (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        Image.fromarray(draw_skeleton(image, coords, skeleton)).save(out_dir / f"{stem}.png")
        print(f"{image_path} -> {out_dir / (stem + '.json')}, {out_dir / (stem + '.png')}")
    if failures:
        raise UserError(f"{failures} of {len(args.images)} images could not be read")
    return 0
