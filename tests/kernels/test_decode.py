"""The decode kernel (models/kernels/decode.py): argmax + quarter-pixel shift + confidence, alone and fused
with the flip-test merge, equal to the torch reference (itself checked against a loop in
tests/test_heatmap.py) and to the float64 reference."""

from __future__ import annotations

import pytest
import torch

from data_pipelines.skeletons import LSP
from models.kernels.decode import decode_flip_merged_torch, decode_heatmaps_torch, decode_triton

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # -inf - -inf in numpy

# odd maps, J=3, B=1, 1x1 and 2x2 grids (no neighbours), and 70x90 (more than one 4096-pixel tile)
SHAPES = [(2, 3, 7, 5), (1, 3, 1, 1), (1, 2, 2, 2), (2, 4, 16, 16), (1, 2, 70, 90)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def quantised_maps(shape, g):
    """Small integers (exact in every dtype, sums too): many tied maxima and equal neighbours, plus a NaN
    map, an all -inf map and a peak on the border."""
    maps = torch.randint(0, 4, shape, generator=g).float()
    maps[0, 0].view(-1)[-1] = float("nan")
    if shape[0] * shape[1] > 2:
        maps[-1, -1] = float("-inf")
    maps[0, -1, 0, -1] = 9.0  # top-right corner
    return maps


def assert_same(got, want):
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_equals_torch_and_float64(triton_device, shape, dtype):
    g = torch.Generator().manual_seed(0)
    for maps in (quantised_maps(shape, g), torch.randn(shape, generator=g), torch.full(shape, 2.0)):
        maps = maps.to(dtype)
        got = decode_triton(maps.to(triton_device))
        assert_same(got, decode_heatmaps_torch(maps))
        coords64, conf64 = decode_heatmaps_torch(maps.double())
        assert_same(got, (coords64.to(dtype), conf64.to(dtype)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_flip_merged_decode_equals_torch_and_float64(triton_device, shape, dtype):
    g = torch.Generator().manual_seed(1)
    flip_index = torch.randperm(shape[1], generator=g).tolist()
    for maps, flipped in ((quantised_maps(shape, g), quantised_maps(shape, g)),
                          (torch.randn(shape, generator=g), torch.randn(shape, generator=g)),
                          (torch.full(shape, 2.0), torch.full(shape, 2.0))):  # all tied, across tiles too
        maps, flipped = maps.to(dtype), flipped.to(dtype)
        got = decode_triton(maps.to(triton_device), flipped.to(triton_device), flip_index)
        assert_same(got, decode_flip_merged_torch(maps, flipped, flip_index))
        if dtype == torch.float32:  # the merged value 0.5 (a + b) rounds differently in float64 for random maps
            coords64, conf64 = decode_flip_merged_torch(maps.double(), flipped.double(), flip_index)
            torch.testing.assert_close(got[0].cpu().double(), coords64, rtol=0, atol=0, equal_nan=True)
            torch.testing.assert_close(got[1].cpu().double(), conf64, rtol=1e-7, atol=0, equal_nan=True)


def test_real_flip_index_and_strided_inputs(triton_device):
    g = torch.Generator().manual_seed(2)
    shape = (1, LSP.num_joints, 9, 11)
    maps, flipped = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    want = decode_flip_merged_torch(maps, flipped, LSP.flip_index)
    cl = maps.to(triton_device, memory_format=torch.channels_last)
    assert_same(decode_triton(cl, flipped.to(triton_device), LSP.flip_index), want)
    wide = torch.randn(1, 3, 9, 22, generator=g)
    assert_same(decode_triton(wide[..., ::2].to(triton_device)), decode_heatmaps_torch(wide[..., ::2]))


def test_bad_input_is_named(triton_device):
    maps = torch.zeros(1, 3, 4, 4, device=triton_device)
    with pytest.raises(ValueError, match="flipped"):
        decode_triton(maps, maps[:, :2], [0, 1])
    with pytest.raises(ValueError, match="flip_index"):
        decode_triton(maps, maps, [0, 0, 1])
    with pytest.raises(ValueError, match="dtype"):
        decode_triton(maps, maps.half(), [0, 1, 2])
    with pytest.raises(ValueError, match="heatmaps"):
        decode_triton(maps[0])
