"""Per-sample transforms: one affine crop (+ augmentation), keypoints, colour jitter, normalisation, targets.

A transform is called as `transform(image, record, rng)` with `image` the ORIGINAL RGB uint8 [H, W, 3]
(data_pipelines/images.py), `record` its PoseRecord and `rng` a numpy Generator that supplies ALL of the
sample's randomness (the dataset derives it from (seed, epoch, index), so a sample is reproducible).

One 2x3 matrix per sample (geometry.crop_affine: original -> crop, rotation and mirror included) warps
the image (cv2.warpAffine, bilinear, constant 0 border) AND maps the keypoints, so both agree exactly.

Flip semantics: a mirrored crop shows the person's left side where the right side was. Output slot j
(Skeleton.joints[j], e.g. "lwri") of a mirrored sample holds the mirrored position of the ORIGINAL joint
flip_index[j] ("rwri"): a mark painted on the original image at the left wrist lands, after a flip, at
the output's RIGHT-wrist slot. Heatmap channel j is rendered from output slot j.

Output sample (torch tensors unless said otherwise):
  image         float32 [3, S, S]   RGB, (x / 255 - IMAGE_MEAN) / IMAGE_STD
  heatmaps      float32 [J, h, w]   models.heatmap.render_gaussian of the joints in heatmap coordinates
  target_weight float32 [J]         models.heatmap.target_weight: 1 for an annotated joint (visible or
                                    occluded) whose heatmap position is within 3 sigma of the grid
  joints        float32 [J, 2]      crop coordinates (pixel-centre, the S x S input), after the flip swap;
                                    non-finite (unannotated) coordinates become 0 (their weight is 0)
  visibility    int8    [J]         the record's visibility codes, after the flip swap
  affine        float64 [2, 3]      original -> crop (invert it to map predictions back)
  center        float64 [2], scale (float): the record's person centre and scale (before augmentation)
The dataset adds `index` (the sample's position in the dataset).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from data_pipelines.geometry import apply_affine, crop_affine
from data_pipelines.records import PoseRecord
from data_pipelines.skeletons import Skeleton
from models.heatmap import input_to_heatmap, render_gaussian, target_weight

# Normalisation constants (ImageNet statistics of RGB values in [0, 1]), defined only here.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

# ITU-R BT.601 luma weights, used by the contrast and saturation jitter.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


# Probability of mirroring a training sample (when Augmentation.flip is on).
FLIP_PROB = 0.5


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation ranges (field names follow the data config: rotation, scale_jitter, flip,
    color_jitter). Each sample draws six uniforms from its Generator, in this order:
    scale factor ~ U(1 - scale, 1 + scale) (multiplies the person scale: > 1 zooms out),
    rotation ~ U(-rotation, rotation) degrees, flip with probability FLIP_PROB (if `flip`),
    brightness, contrast, saturation factors ~ U(1 - color, 1 + color) each."""

    rotation: float = 30.0
    scale: float = 0.25
    flip: bool = True
    color: float = 0.2

    def __post_init__(self):
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"augmentation rotation must be in [0, 180] degrees, got {self.rotation}")
        if not 0 <= self.scale < 1:
            raise ValueError(f"augmentation scale jitter must be in [0, 1), got {self.scale}")
        if not 0 <= self.color <= 1:
            raise ValueError(f"augmentation colour jitter must be in [0, 1], got {self.color}")


@dataclass(frozen=True)
class SampleParams:
    """The random draws of one sample (identity for evaluation)."""

    scale_factor: float = 1.0
    rotation_deg: float = 0.0
    flip: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0


def draw_params(aug: Augmentation | None, rng: np.random.Generator | None) -> SampleParams:
    """Draw one sample's parameters; always the same number of draws, so the stream layout is fixed."""
    if aug is None:
        return SampleParams()
    if rng is None:
        raise ValueError("a training transform needs a numpy Generator (rng) for its randomness")
    u = 2.0 * rng.random(6) - 1.0  # six U(-1, 1)
    return SampleParams(
        scale_factor=1.0 + aug.scale * u[0],
        rotation_deg=aug.rotation * u[1],
        flip=bool(aug.flip and u[2] < 2.0 * FLIP_PROB - 1.0),
        brightness=1.0 + aug.color * u[3],
        contrast=1.0 + aug.color * u[4],
        saturation=1.0 + aug.color * u[5],
    )


def luma(image: np.ndarray) -> np.ndarray:
    """Gray value [H, W] (float32) of an RGB float image [H, W, 3]."""
    w = np.asarray(LUMA_WEIGHTS, dtype=np.float32)
    return image[..., 0] * w[0] + image[..., 1] * w[1] + image[..., 2] * w[2]


def color_jitter(image: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """Brightness, then contrast, then saturation on an RGB image with values in [0, 255]; float32 out.

    brightness: x * b; contrast: m + (x - m) * c with m the image's mean luma; saturation:
    g + (x - g) * s with g the pixel's luma. Clipped to [0, 255] after each step.
    """
    x = image.astype(np.float32, copy=True)
    if brightness != 1.0:
        x *= np.float32(brightness)
        np.clip(x, 0.0, 255.0, out=x)
    if contrast != 1.0:
        m = np.float32(luma(x).mean())
        x = m + (x - m) * np.float32(contrast)
        np.clip(x, 0.0, 255.0, out=x)
    if saturation != 1.0:
        g = luma(x)[..., None]
        x = g + (x - g) * np.float32(saturation)
        np.clip(x, 0.0, 255.0, out=x)
    return x


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """RGB [H, W, 3] with values in [0, 255] -> float32 tensor [3, H, W]: (x / 255 - mean) / std."""
    x = image.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(IMAGE_MEAN, dtype=np.float32)) / np.asarray(IMAGE_STD, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def denormalize_image(image) -> np.ndarray:
    """Inverse of normalize_image for viewing: [3, H, W] -> RGB uint8 [H, W, 3] (rounded, clipped)."""
    x = torch.as_tensor(image).detach().cpu().numpy().astype(np.float32).transpose(1, 2, 0)
    x = (x * np.asarray(IMAGE_STD, dtype=np.float32) + np.asarray(IMAGE_MEAN, dtype=np.float32)) * 255.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class PoseTransform:
    """Crop (+ augmentation when `augmentation` is given), normalise, render targets. See module docstring.

    input_size S (square crop) must be a multiple of heatmap_size; stride = S / heatmap_size.
    """

    def __init__(self, skeleton: Skeleton, input_size: int = 256, heatmap_size: int = 64,
                 sigma: float = 1.0, augmentation: Augmentation | None = None):
        if input_size <= 0 or heatmap_size <= 0 or input_size % heatmap_size:
            raise ValueError(f"input_size ({input_size}) must be a positive multiple of heatmap_size "
                             f"({heatmap_size})")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.skeleton = skeleton
        self.input_size = int(input_size)
        self.heatmap_size = int(heatmap_size)
        self.stride = self.input_size // self.heatmap_size
        self.sigma = float(sigma)
        self.augmentation = augmentation
        self._flip_index = np.asarray(skeleton.flip_index, dtype=np.int64)

    @property
    def train(self) -> bool:
        return self.augmentation is not None

    def __call__(self, image: np.ndarray, record: PoseRecord,
                 rng: np.random.Generator | None = None) -> dict:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{record.image}: transform expects an RGB uint8 [H, W, 3] image, "
                             f"got {image.dtype} {image.shape}")
        if record.num_joints != self.skeleton.num_joints:
            raise ValueError(f"{record.image}: record has {record.num_joints} joints, skeleton "
                             f"{self.skeleton.name!r} has {self.skeleton.num_joints}")
        p = draw_params(self.augmentation, rng)
        size = self.input_size
        A = crop_affine(record.center, record.scale * p.scale_factor, size, p.rotation_deg, p.flip)

        crop = cv2.warpAffine(image, A, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        if p.brightness != 1.0 or p.contrast != 1.0 or p.saturation != 1.0:
            crop = color_jitter(crop, p.brightness, p.contrast, p.saturation)

        joints = apply_affine(record.joints, A)
        visibility = record.visibility
        if p.flip:
            joints = joints[self._flip_index]
            visibility = visibility[self._flip_index]
        joints_t = torch.from_numpy(joints.astype(np.float32))[None]
        vis_t = torch.from_numpy(visibility.astype(np.int64))[None]
        joints_hm = input_to_heatmap(joints_t, self.stride)
        hw = (self.heatmap_size, self.heatmap_size)
        heatmaps = render_gaussian(joints_hm, vis_t, hw, self.sigma)[0]
        weight = target_weight(joints_hm, vis_t, hw, self.sigma)[0]
        joints_t = torch.nan_to_num(joints_t, nan=0.0, posinf=0.0, neginf=0.0)  # weight is 0 there
        return {
            "image": normalize_image(crop),
            "heatmaps": heatmaps,
            "target_weight": weight,
            "joints": joints_t[0],
            "visibility": torch.from_numpy(np.ascontiguousarray(visibility, dtype=np.int8)),
            "affine": torch.from_numpy(A),
            "center": torch.from_numpy(record.center.copy()),
            "scale": float(record.scale),
        }


def train_transform(skeleton: Skeleton, input_size: int = 256, heatmap_size: int = 64, sigma: float = 1.0,
                    augmentation: Augmentation | None = None) -> PoseTransform:
    """The training transform (default Augmentation(): rotation +-30 deg, scale 0.75-1.25, flip 0.5,
    colour jitter 0.2)."""
    return PoseTransform(skeleton, input_size, heatmap_size, sigma, augmentation or Augmentation())


def eval_transform(skeleton: Skeleton, input_size: int = 256, heatmap_size: int = 64,
                   sigma: float = 1.0) -> PoseTransform:
    """No augmentation: the record's centre/scale crop only (flip-test lives in the model wrapper)."""
    return PoseTransform(skeleton, input_size, heatmap_size, sigma, None)
