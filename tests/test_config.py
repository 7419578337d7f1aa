"""The config's cross-field check of crop, heatmap and hourglass depth against the models it builds."""

from __future__ import annotations

import pytest
import torch

from data_pipelines.errors import UserError
from harness.build import build_discriminator, build_generator
from harness.config import G_STRIDE, load_config


@pytest.mark.parametrize("size, depth", [(64, 4), (96, 3), (128, 2)])
def test_g_and_d_of_a_config_map_its_crop_to_its_heatmaps(size, depth):
    cfg = load_config("lsp-tta-tiny", None, [f"data.input_size={size}", f"data.heatmap_size={size // G_STRIDE}",
                                             f"model.depth={depth}", "model.features=8", "discriminator.features=8"])
    g, d = build_generator(cfg, 14).eval(), build_discriminator(cfg, 14).eval()
    hourglass_levels = sum(1 for name, _ in g.hourglasses[0].named_modules() if name.endswith("pool"))
    assert hourglass_levels == depth
    image = torch.randn(2, 3, size, size)
    with torch.no_grad():
        heatmaps = g(image)[-1]
        assert heatmaps.shape == (2, 14, cfg.data.heatmap_size, cfg.data.heatmap_size)
        assert d(heatmaps, image).reconstruction.shape == heatmaps.shape


@pytest.mark.parametrize("overrides, message", [
    (["data.input_size=128", "data.heatmap_size=16"], "data.input_size 128 needs data.heatmap_size 32, not 16"),
    (["data.input_size=96", "data.heatmap_size=24", "model.depth=4"], "must be a multiple of 16"),
    (["model.depth=0"], "model.depth"),
])
def test_sizes_the_models_cannot_produce_are_one_clear_error(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config("lsp-tta-tiny", None, overrides)

