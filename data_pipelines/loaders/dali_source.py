"""The DALI backend's per-sample input: encoded bytes and the sample's plan (no DALI import here).

`DaliSampleSource` is the callable of DALI's parallel per-sample `fn.external_source`: DALI calls it with a
`SampleInfo` in worker processes; it maps the sample's position in this rank's epoch to the same
`SampleKey` as the torch backend (`EpochBatchSampler`'s order), plans the sample with the backend-neutral
sampling code, and returns numpy arrays (`OUTPUTS`). DALI itself draws no random number. The plan's fields
travel packed in one uint8 output (`plan_dtype`): every output of DALI's parallel external source costs
CPU time per sample in the worker and in the main process (12 outputs: 0.14 ms per sample here, 2: 0.04 ms).

Decoding parity with `data_pipelines/images.py` (Pillow). DALI's decoder (nvImageCodec; libjpeg-turbo on
the CPU) gives the same pixels as Pillow for 8-bit YCbCr/gray JPEGs with `jpeg_fancy_upsampling=True` and
`adjust_orientation=False` (tested), but it handles the awkward files differently: it ignores alpha
instead of compositing it on black, and a corrupt JPEG decodes silently to garbage where Pillow refuses
it. So `plain_encoding` checks each file's structure (cheap: headers and marker bytes, no pixel is
decoded) and only a plain file (8-bit baseline/progressive JPEG with 1 or 3 components and a complete,
well-formed marker sequence; 8-bit gray/RGB PNG without transparency, ending in IEND) goes to DALI as it
is. Any other file is decoded here by the torch backend's own loader: a failure becomes the same
`BadImageError` reason as in the torch backend, a success is re-encoded as a lossless PNG, which DALI
decodes to exactly those pixels. Synthetic records are rendered and PNG-encoded the same way.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import NamedTuple

import cv2
import numpy as np

from data_pipelines.batch import SAMPLE_FIELDS, sample_fields
from data_pipelines.images import BadImageError
from data_pipelines.records import PoseRecord
from data_pipelines.sampling import Augmentation, BadSampleError, EpochBatchSampler, SampleKey, plan_sample

# DALI's warp_affine samples destination pixel (i, j) at M @ (i + .5, j + .5) and its bilinear sampler puts
# source pixel centres at +.5 (dali/kernels/imgproc/warp/map_coords.h, dali/kernels/imgproc/sampler.h):
# pixel CORNERS are at integer coordinates. The project's matrices use pixel CENTRES (geometry.py).
_HALF = np.array([0.5, 0.5])

OUTPUTS = ("encoded", "warp_matrix", "plan", "reason")
PLAN_FIELDS = tuple(k for k in SAMPLE_FIELDS if k != "image")  # the host batch's fields but the crop (DALI's)
GOOD, BAD, PAD = 0, 1, 2  # `status`: a usable sample, a bad one (`reason` says why), padding past the end

_JPEG_SOF_OK = {0xC0, 0xC1, 0xC2}  # baseline, extended Huffman, progressive
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def dali_matrix(A: np.ndarray) -> np.ndarray:
    """The project's forward original -> crop matrix A (pixel centres) as DALI's warp_affine `matrix` with
    the default inverse_map=True: destination -> source with pixel corners at integer coordinates.

    A_corner = T(+.5) A T(-.5), i.e. the same linear part L and t' = t + (I - L) [.5, .5]; inverted in float64,
    then float32 (DALI's type for the matrix).
    """
    A = np.asarray(A, dtype=np.float64)
    L, t = A[:, :2], A[:, 2]
    inv_L = np.linalg.inv(L)
    t_corner = t + (np.eye(2) - L) @ _HALF
    return np.concatenate([inv_L, (-inv_L @ t_corner)[:, None]], axis=1).astype(np.float32)


def plan_dtype(num_joints: int) -> np.dtype:
    """The packed `plan` output: PLAN_FIELDS with the host batch's dtypes (batch.SAMPLE_FIELDS) and the
    sample's `status`; a sample's plan is one record of it as uint8 bytes, a batch's is [B, itemsize]."""
    shapes = {"joints": (num_joints, 2), "visibility": (num_joints,), "target_weight": (num_joints,), "color": (3,),
              "affine": (2, 3), "center": (2,), "scale": (), "index": ()}
    return np.dtype([(k, SAMPLE_FIELDS[k], shapes[k]) for k in PLAN_FIELDS] + [("status", np.int8)])


def plain_encoding(data: bytes) -> bool:
    """True when DALI may decode `data` itself (see the module docstring); False: decode with Pillow."""
    if data[:2] == b"\xff\xd8":
        return _plain_jpeg(np.frombuffer(data, np.uint8))
    if data[:8] == _PNG_SIGNATURE:
        return _plain_png(data)
    return False


def _plain_jpeg(b: np.ndarray) -> bool:
    n = len(b)
    ff = np.flatnonzero(b[:-1] == 0xFF)
    nxt = b[ff + 1]
    # marker candidates inside entropy-coded data: 0xFF not followed by stuffing (00), RSTn or fill (FF)
    markers = ff[(nxt != 0x00) & ((nxt < 0xD0) | (nxt > 0xD7)) & (nxt != 0xFF)].tolist()
    pos, sof = 2, False
    while pos + 1 < n:
        if b[pos] != 0xFF:
            return False
        m = int(b[pos + 1])
        if m == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if m == 0xD9:  # EOI
            return sof
        if m in _JPEG_STANDALONE:
            pos += 2
            continue
        if pos + 4 > n:
            return False
        length = int(b[pos + 2]) << 8 | int(b[pos + 3])
        end = pos + 2 + length
        if length < 2 or end > n:
            return False
        if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):  # SOFn
            if m not in _JPEG_SOF_OK or length < 8 or b[pos + 4] != 8 or b[pos + 9] not in (1, 3):
                return False
            sof = True
        elif m == 0xDA:  # SOS: skip the entropy-coded data to the next real marker
            if not sof:
                return False
            k = bisect.bisect_left(markers, end)
            if k == len(markers):
                return False  # truncated: no marker (EOI) after the scan
            end = markers[k]
        elif not (m in (0xC4, 0xCC, 0xDB, 0xDD, 0xFE) or 0xE0 <= m <= 0xEF):
            return False  # a marker libjpeg does not expect: corrupt data
        pos = end
    return False


def _plain_png(data: bytes) -> bool:
    n, pos, first = len(data), 8, True
    while pos + 12 <= n:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if first:  # IHDR: bit depth 8, colour type 0 (gray) or 2 (RGB), not interlaced
            if kind != b"IHDR" or length != 13 or data[pos + 16] != 8 or data[pos + 17] not in (0, 2) \
                    or data[pos + 20] != 0:
                return False
            first = False
        if kind == b"tRNS":
            return False
        pos += 12 + length
        if kind == b"IEND":
            return pos == n
    return False


def png_bytes(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] as a lossless PNG (fast compression): DALI decodes it to exactly these pixels."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode a PNG")
    return buf.reshape(-1)


class Encoded(NamedTuple):
    data: np.ndarray  # uint8 [n]: what DALI decodes
    reason: str  # "": good; else why the image is unusable (BadImageError.reason)


def encoded_image(record: PoseRecord, image_loader: Callable, trust_plain: bool = True) -> Encoded:
    """The record's image as bytes DALI decodes like `image_loader` (the torch backend's loader) would;
    `trust_plain=False` decodes even plain files with `image_loader` (after DALI's decoder failed on one)."""
    if trust_plain and not record.image.startswith("synthetic:"):
        try:
            with open(record.image, "rb") as f:
                data = f.read()
            if plain_encoding(data):
                return Encoded(np.frombuffer(data, np.uint8), "")
        except OSError:
            pass  # the loader below says why, in the torch backend's words
    try:
        return Encoded(png_bytes(image_loader(record)), "")
    except BadImageError as err:
        return Encoded(_BLACK_PNG, err.reason or str(err))


_BLACK_PNG = png_bytes(np.zeros((1, 1, 3), np.uint8))
_IDENTITY = np.eye(2, 3, dtype=np.float32)


class DaliSampleSource:
    """Per-sample callable of DALI's parallel external source for one rank and one epoch (picklable).

    Position p = start_batch * batch_size + SampleInfo.idx_in_epoch of this rank's order
    (`sampler.rank_indices()`) is sample SampleKey(indices[p], seed, epoch), exactly the torch backend's
    p-th sample. The source never raises StopIteration: positions past the epoch's last batch (DALI
    prefetches ahead; a short final batch) come back as PAD and the loader drops them, so every batch holds
    the same positions as the torch backend's. Batches in `reference_batches` decode every file with the
    torch backend's loader (the loader's answer to a decoder error inside DALI).
    """

    def __init__(self, records: Sequence[PoseRecord], sampler: EpochBatchSampler, aug: Augmentation | None,
                 input_size: int, heatmap_size: int, sigma: float, flip_index: Sequence[int],
                 image_loader: Callable, start_batch: int, reference_batches: frozenset[int] = frozenset()):
        self.records = records
        self.indices = sampler.rank_indices()
        self.seed, self.epoch, self.batch_size = sampler.seed, sampler.epoch, sampler.batch_size
        self.start = start_batch * sampler.batch_size
        self.stop = min(len(self.indices), sampler.batches_per_epoch * sampler.batch_size)
        self.aug, self.input_size, self.heatmap_size, self.sigma = aug, input_size, heatmap_size, sigma
        self.flip_index = list(flip_index)
        self.image_loader = image_loader
        self.reference_batches = reference_batches
        self.plan_dtype = plan_dtype(len(self.flip_index))

    def __call__(self, sample_info) -> tuple[np.ndarray, ...]:
        pos = self.start + sample_info.idx_in_epoch
        if pos >= self.stop:
            return self._output(0, PAD)
        index = self.indices[pos]
        record = self.records[index]
        try:
            plan = plan_sample(record, SampleKey(index, self.seed, self.epoch), self.aug, self.input_size,
                               self.heatmap_size, self.sigma, self.flip_index)
        except BadSampleError as err:
            return self._output(index, BAD, err.reason or str(err))
        image = encoded_image(record, self.image_loader, pos // self.batch_size not in self.reference_batches)
        if image.reason:
            return self._output(index, BAD, image.reason)
        packed = np.zeros(1, self.plan_dtype)
        fields = sample_fields(None, plan, record, index)  # the crop is DALI's to make
        for name in PLAN_FIELDS:
            packed[name] = fields[name]
        return image.data, dali_matrix(plan.affine), packed.view(np.uint8), np.zeros(0, np.uint8)

    def _output(self, index: int, status: int, reason: str = "") -> tuple[np.ndarray, ...]:
        """A placeholder sample (black 1x1 PNG, identity matrix) carrying only index, status and reason."""
        packed = np.zeros(1, self.plan_dtype)
        packed["color"], packed["affine"], packed["scale"] = 1, np.eye(2, 3), 1
        packed["index"], packed["status"] = index, status
        return _BLACK_PNG, _IDENTITY, packed.view(np.uint8), np.frombuffer(reason.encode(), np.uint8)
