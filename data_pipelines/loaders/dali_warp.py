"""The DALI backend's CPU-mode warp: a Numba bilinear affine warp run by DALI's Numba operator.

DALI 2.4's CPU `fn.warp_affine` (bilinear, fill 0) is a generic per-pixel loop: 3.2 ms of CPU per 256 x 256
crop where cv2.warpAffine takes 0.75 ms (docs/benchmarks/2026-11-26_data-dali_cpu-2core.md). In DALI's CPU
mode the loader therefore warps with `warp_affine_linear` below, run per sample on DALI's CPU thread pool by
DALI's own Numba operator (`nvidia.dali.plugin.numba`, NumbaFunction on the CPU backend: the operator calls
the compiled function through a C pointer, without the GIL). On a GPU the pipeline keeps `fn.warp_affine`.

Semantics: those of `fn.warp_affine(image, matrix, size=(S, S), fill_value=0, interp_type=INTERP_LINEAR)`
with the same `matrix` (dali_source.dali_matrix: destination -> source, pixel corners at integer
coordinates): destination pixel (x, y) reads the source at M @ (x + .5, y + .5) - .5 (pixel centres, as cv2),
bilinearly; a tap outside the image reads 0 (constant black border), so a pixel whose four taps are all
outside is 0. Arithmetic: source positions in fixed point (1/2048 pixel; the per-column terms a table, as in
cv2's warpAffine), integer weights summing to 2 ** 22, rounded half up. Against a float64 evaluation of the
definition that is within one grey level, about 0.1% of values off by one; against cv2.warpAffine (the torch
backend's warp_crop, opencv 5) the same (tests/test_dali.py). As fast as cv2.warpAffine here (0.42 vs 0.42 ms
per 256 x 256 crop of an LSP image, one core); input arrays must be C-contiguous (DALI's are).

Compile cost: `warp_affine_linear` is cached on disk by Numba (`cache=True`: __pycache__ beside this file,
else Numba's user cache dir): 0.8 s to compile in the first process, 0.2 s to load after. DALI's Numba
operator compiles its own C wrappers around it when built, about 1.8 s; `warp_operator` builds it once per
process and crop size and every later pipeline (epoch) of the process reuses it.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

_ONE = np.uint64(1)
_TWO = np.uint64(2)
_THREE = np.uint64(3)
_FOUR = np.uint64(4)
_FIVE = np.uint64(5)
_ONE_22, _HALF_22 = 1 << 22, 1 << 21


@njit(nogil=True, cache=True, boundscheck=False)
def warp_affine_linear(out: np.ndarray, image: np.ndarray, matrix: np.ndarray) -> None:  # pragma: no cover
    """out[y, x] = bilinear sample of `image` (uint8 [H, W, 3]) at DALI-convention `matrix` (2 x 3, float32:
    destination -> source, pixel corners at integers) applied to (x + .5, y + .5); out: uint8 [S_h, S_w, 3].
    Indices are unsigned where they cannot be negative: Numba then skips its negative-index wraparound."""
    h, w = image.shape[0], image.shape[1]
    out_h, out_w = out.shape[0], out.shape[1]
    src, dst = image.reshape(-1), out.reshape(-1)
    row = np.uint64(w * 3)
    a, b, d, e = np.float64(matrix[0, 0]), np.float64(matrix[0, 1]), np.float64(matrix[1, 0]), np.float64(matrix[1, 1])
    c = np.float64(matrix[0, 2]) + 0.5 * (a + b) - 0.5  # pixel centres at integer coordinates, as cv2
    f = np.float64(matrix[1, 2]) + 0.5 * (d + e) - 0.5
    # positions in fixed point, 1/2048 pixel: (x, y) -> 4096 * position, each term rounded, then (+1) >> 1;
    # the per-column terms are a table, as in cv2's warpAffine
    step_x, step_y = np.empty(out_w, np.int32), np.empty(out_w, np.int32)
    for x in range(out_w):
        step_x[x] = np.int32(np.rint(a * x * 4096.0))
        step_y[x] = np.int32(np.rint(d * x * 4096.0))
    o = np.uint64(0)
    for y in range(out_h):
        base_x = np.int32(np.rint((b * y + c) * 4096.0)) + 1
        base_y = np.int32(np.rint((e * y + f) * 4096.0)) + 1
        for x in range(out_w):
            sx = (base_x + step_x[x]) >> 1
            sy = (base_y + step_y[x]) >> 1
            ix, iy, fx, fy = sx >> 11, sy >> 11, sx & 2047, sy & 2047
            if np.uint32(ix) < np.uint32(w - 1) and np.uint32(iy) < np.uint32(h - 1):  # all four taps inside
                w11 = fx * fy  # the four weights sum to 2 ** 22
                w10 = (fy << 11) - w11
                w01 = (fx << 11) - w11
                w00 = _ONE_22 - w01 - w10 - w11
                p = np.uint64(iy) * row + np.uint64(ix) * _THREE
                q = p + row
                dst[o] = (src[p] * w00 + src[p + _THREE] * w01 + src[q] * w10 + src[q + _THREE] * w11
                          + _HALF_22) >> 22
                dst[o + _ONE] = (src[p + _ONE] * w00 + src[p + _FOUR] * w01 + src[q + _ONE] * w10
                                 + src[q + _FOUR] * w11 + _HALF_22) >> 22
                dst[o + _TWO] = (src[p + _TWO] * w00 + src[p + _FIVE] * w01 + src[q + _TWO] * w10
                                 + src[q + _FIVE] * w11 + _HALF_22) >> 22
            elif ix >= w or ix < -1 or iy >= h or iy < -1:  # all four taps outside
                dst[o] = 0
                dst[o + _ONE] = 0
                dst[o + _TWO] = 0
            else:  # on the border: taps outside read 0
                for ch in range(3):
                    acc = _HALF_22
                    for dy in range(2):
                        yy = iy + dy
                        if 0 <= yy < h:
                            wy = fy if dy else 2048 - fy
                            for dx in range(2):
                                xx = ix + dx
                                if 0 <= xx < w:
                                    acc += wy * (fx if dx else 2048 - fx) * np.int64(src[yy * (w * 3) + xx * 3 + ch])
                    dst[o + np.uint64(ch)] = acc >> 22
            o += _THREE


def _run(out0, in0, in1):  # pragma: no cover - compiled by DALI's Numba operator
    warp_affine_linear(out0, in0, in1)


@functools.cache
def warp_operator(size: int):
    """DALI's Numba operator (ops API, CPU backend) that warps a uint8 HWC image with a float32 2 x 3
    DALI-convention matrix to a size x size x 3 crop; built once per process and crop size, since building
    one compiles its C wrapper (see the module docstring). Call it inside a pipeline: op(image, matrix)."""
    from nvidia.dali import types
    from nvidia.dali.plugin.numba import NumbaFunction

    side = int(size)

    def setup(outs, ins):  # pragma: no cover - compiled by DALI's Numba operator; once per batch
        for i in range(len(outs[0])):
            outs[0][i][0] = side
            outs[0][i][1] = side
            outs[0][i][2] = 3

    return NumbaFunction(run_fn=_run, setup_fn=setup, out_types=[types.UINT8], in_types=[types.UINT8, types.FLOAT],
                         outs_ndim=[3], ins_ndim=[3, 2], device="cpu", batch_processing=False)
