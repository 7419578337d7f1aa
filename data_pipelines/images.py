"""Robust image loading: any JPEG/PNG (or other Pillow-readable file) -> RGB uint8 array [H, W, 3].

Decoding is done with Pillow, not cv2, on purpose:

- truncated files: Pillow raises on `load()`, whereas cv2.imread returns a half-grey image and only prints
  a libjpeg warning - a silent corruption of a training sample;
- EXIF orientation: cv2.imread (IMREAD_COLOR) rotates by the EXIF Orientation tag, Pillow does not. Pose
  annotations (LSP, MPII, COCO) refer to the STORED pixel grid, so EXIF orientation is deliberately NOT
  honoured here: the returned array is the pixel grid exactly as stored in the file;
- CMYK JPEGs (including Adobe's inverted CMYK): Pillow converts to RGB correctly (cv2 does as well).

Other conversions:

- grayscale (L, 1-bit, LA) -> the gray value repeated in 3 channels;
- palette images -> their RGB(A) colours;
- an alpha channel is composited onto BLACK: rgb * alpha / 255, rounded (black is also the warp's border
  value, so transparent regions look like "outside the image");
- 16-bit samples -> 8 bit by keeping the high byte (v >> 8), the same rule Pillow applies to 16-bit RGB;
- float images (mode F) are refused (no agreed value range).

Any failure - missing path, directory, zero-byte file, unidentifiable or corrupt data, truncated file,
unsupported mode - raises BadImageError whose message names the file and the reason.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageFile

from data_pipelines.errors import UserError


class BadImageError(UserError):
    """An image file that cannot be decoded. `path` and `reason` are also kept as attributes."""

    def __init__(self, message: str, path: str = "", reason: str = ""):
        super().__init__(message)
        self.path = path
        self.reason = reason

    @classmethod
    def for_file(cls, path, reason: str) -> BadImageError:
        """`<path>: cannot read image: <reason>` (starts with the file, like AnnotationError's messages)."""
        return cls(f"{os.fspath(path)}: cannot read image: {reason}", os.fspath(path), reason)

    def __reduce__(self):  # keep path/reason when the error crosses a process boundary
        return type(self), (str(self), self.path, self.reason)


def load_image(path) -> np.ndarray:
    """Decode `path` to a C-contiguous RGB uint8 array [H, W, 3] of the stored pixel grid (no EXIF turn)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise BadImageError.for_file(path, "file not found")
    if not os.path.isfile(path):
        raise BadImageError.for_file(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise BadImageError.for_file(path, "empty file (0 bytes)")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise BadImageError.for_file(path, "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set somewhere in this "
                                           "process; truncated files would load silently - unset it")
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img, path)
    except BadImageError:
        raise
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... depending on the codec
        raise BadImageError.for_file(path, f"cannot decode ({type(err).__name__}: {err})") from err


def _to_rgb(img: Image.Image, path: str) -> np.ndarray:
    mode = img.mode
    if mode == "F":
        raise BadImageError.for_file(path, "float image (mode F) is not supported")
    if mode == "I" or mode.startswith("I;16"):
        # 16-bit grayscale (Pillow opens 16-bit PNGs as I;16 or I): keep the high byte.
        gray = np.asarray(img).astype(np.int64)
        gray = np.clip(gray >> 8, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[:, :, :3] * rgba[:, :, 3:4] + 127) // 255  # round(rgb * alpha / 255): over black
        return np.ascontiguousarray(rgb.astype(np.uint8))
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
