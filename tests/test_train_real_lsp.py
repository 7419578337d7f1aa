"""Training on real LSP images: the loss falls, and a small model overfits a handful of images."""

from __future__ import annotations

import json

from harness.config import load_config
from harness.trainer import Trainer


def lsp_config(root, *extra):
    return load_config(None, None, [
        "data.name=lsp", f"data.root={root}", "data.input_size=128", "data.heatmap_size=32",
        "data.num_workers=1", "model.stacks=1", "model.features=64", "train.log_every=1", "train.threads=2",
        *extra])


def test_short_real_lsp_training_loss_falls(tmp_path, lsp_root):
    cfg = lsp_config(lsp_root, "adversarial.objective=sat", "discriminator.features=32",
                     "data.max_train_samples=240", "data.max_val_samples=16", "train.batch_size=8",
                     "train.max_steps=30", "train.val_every=1000",
                     "train.generator.lr=1e-3")
    Trainer(cfg, tmp_path, interactive=False).fit()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    mse = [r["loss_mse"] for r in rows if r["kind"] == "train"]
    assert len(mse) == 30
    first, last = sum(mse[:5]) / 5, sum(mse[-5:]) / 5
    assert last < 0.5 * first, (first, last)


def test_overfit_handful_of_real_lsp_images(tmp_path, lsp_root):
    """8 real training images, no augmentation, scored on themselves: PCK@0.2 >= 0.9."""
    cfg = lsp_config(lsp_root, "adversarial.objective=none", "data.max_train_samples=8",
                     "data.val_split=train", "data.max_val_samples=8", "data.rotation=0",
                     "data.scale_jitter=0", "data.flip=false", "data.color_jitter=0", "train.batch_size=8",
                     "train.max_steps=250", "train.val_every=50", "train.generator.lr=2e-3",
                     "train.flip_test=false")
    summary = Trainer(cfg, tmp_path, interactive=False).fit()
    assert summary["best"]["value"] >= 90.0, summary
