"""Image loading edge cases (checked pixel by pixel where the file is readable) and how the dataset/loader
report unusable samples: skipped + counted + named, or one clear error in the main process."""

from __future__ import annotations

import logging
import pickle

import cv2
import numpy as np
import pytest
from PIL import Image
from pose_sample import make_sample

from data_pipelines.batch import BadSample
from data_pipelines.errors import UserError
from data_pipelines.images import BadImageError, load_image
from data_pipelines.loaders.cpu import PoseDataset, make_loader
from data_pipelines.lsp import load_lsp
from data_pipelines.records import NOT_ANNOTATED, PoseRecord
from data_pipelines.sampling import BadSampleError
from data_pipelines.skeletons import LSP

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def lsp_record(lsp_root):
    return load_lsp(lsp_root, "train")[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory, lsp_record):
    """Every kind of awkward file, made from a real LSP image."""
    d = tmp_path_factory.mktemp("images")
    src = lsp_record.image
    raw = open(src, "rb").read()
    rgb = np.asarray(Image.open(src).convert("RGB"))
    f = {"rgb": rgb}
    (d / "good.jpg").write_bytes(raw)
    f["good"] = d / "good.jpg"
    f["truncated"] = d / "truncated.jpg"
    f["truncated"].write_bytes(raw[: len(raw) * 6 // 10])
    f["corrupt"] = d / "corrupt.jpg"  # header intact, entropy-coded data overwritten
    bad = bytearray(raw)
    bad[2000:6000] = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    f["corrupt"].write_bytes(bytes(bad))
    f["garbage"] = d / "garbage.jpg"
    f["garbage"].write_bytes(b"this is not an image" * 10)
    f["empty"] = d / "empty.jpg"
    f["empty"].write_bytes(b"")
    f["missing"] = d / "missing.jpg"
    f["gray"] = d / "gray.jpg"
    Image.fromarray(rgb).convert("L").save(f["gray"], quality=95)
    f["cmyk"] = d / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(f["cmyk"], quality=95)
    # RGBA: left third transparent, middle half-transparent, right opaque
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    w = rgb.shape[1]
    alpha[:, w // 3: 2 * w // 3] = 128
    alpha[:, 2 * w // 3:] = 255
    f["alpha_value"] = alpha
    f["alpha"] = d / "alpha.png"
    Image.fromarray(np.dstack([rgb, alpha])).save(f["alpha"])
    g16 = (np.arange(30 * 40).reshape(30, 40) * 53).astype(np.uint16)
    f["g16_value"] = g16
    f["gray16"] = d / "gray16.png"
    cv2.imwrite(str(f["gray16"]), g16)
    rgb16 = np.stack([g16, 65535 - g16, g16 // 2], axis=-1)
    f["rgb16_value"] = rgb16
    f["rgb16"] = d / "rgb16.png"
    cv2.imwrite(str(f["rgb16"]), rgb16[:, :, ::-1].copy())  # cv2 writes BGR
    # EXIF orientation 6 ("rotate 90 CW to display") on a non-square image
    f["exif"] = d / "exif.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(f["exif"], quality=95, exif=exif.tobytes())
    return f


def mean_abs(a, b) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


# ------------------------------------------------------------------------------------------------ loading

@pytest.mark.parametrize("kind, reason", [
    ("truncated", "truncated"), ("corrupt", "cannot decode"), ("garbage", "cannot decode"),
    ("empty", "empty file"), ("missing", "not found")])
def test_unreadable_files_raise_bad_image_error_naming_file(files, kind, reason):
    with pytest.raises(BadImageError) as info:
        load_image(files[kind])
    err = info.value
    assert isinstance(err, UserError)
    assert str(err).startswith(str(files[kind])) and reason in str(err)
    assert err.path == str(files[kind]) and reason in err.reason
    again = pickle.loads(pickle.dumps(err))  # crosses worker processes intact
    assert type(again) is BadImageError and again.path == err.path and str(again) == str(err)


def test_directory_is_refused(tmp_path):
    with pytest.raises(BadImageError, match="not a regular file"):
        load_image(tmp_path)


def test_good_jpeg_equals_reference_decode(files):
    img = load_image(files["good"])
    assert img.dtype == np.uint8 and img.shape == files["rgb"].shape and img.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(img, files["rgb"])
    # cv2 decodes the same file to the same pixels (both libjpeg-turbo) up to IDCT rounding
    assert mean_abs(img, cv2.imread(str(files["good"]))[:, :, ::-1]) < 1.0


def test_grayscale_becomes_three_equal_channels(files):
    img = load_image(files["gray"])
    assert img.shape == files["rgb"].shape
    np.testing.assert_array_equal(img[..., 0], img[..., 1])
    np.testing.assert_array_equal(img[..., 0], img[..., 2])
    luma = np.asarray(Image.fromarray(files["rgb"]).convert("L"))
    assert mean_abs(img[..., 0], luma) < 2.0  # JPEG loss only


def test_cmyk_jpeg_converts_to_the_right_colours(files):
    assert Image.open(files["cmyk"]).mode == "CMYK"
    img = load_image(files["cmyk"])
    assert img.shape == files["rgb"].shape
    assert mean_abs(img, files["rgb"]) < 3.0  # JPEG loss only; inverted CMYK would be off by ~100
    # cv2 agrees on this file (it also converts CMYK), so either decoder would do here
    assert mean_abs(img, cv2.imread(str(files["cmyk"]))[:, :, ::-1]) < 2.0


def test_alpha_is_composited_on_black(files):
    img = load_image(files["alpha"]).astype(np.int64)
    rgb, alpha = files["rgb"].astype(np.int64), files["alpha_value"].astype(np.int64)
    expected = (rgb * alpha[..., None] + 127) // 255
    np.testing.assert_array_equal(img, expected)
    w = rgb.shape[1]
    assert img[:, : w // 3].max() == 0 and np.array_equal(img[:, 2 * w // 3:], rgb[:, 2 * w // 3:])


def test_palette_png_with_transparency(tmp_path):
    pal = Image.new("P", (4, 2))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.info["transparency"] = 0  # palette entry 0 is transparent
    path = tmp_path / "pal.png"
    pal.save(path, transparency=0)
    img = load_image(path)
    assert img[0, 0].tolist() == [200, 100, 50] and img[1, 3].tolist() == [0, 0, 0]


def test_sixteen_bit_keeps_high_byte(files):
    g = load_image(files["gray16"])
    np.testing.assert_array_equal(g, np.repeat((files["g16_value"] >> 8).astype(np.uint8)[..., None], 3, 2))
    c = load_image(files["rgb16"])
    np.testing.assert_array_equal(c, (files["rgb16_value"] >> 8).astype(np.uint8))


def test_exif_orientation_is_not_applied(files):
    """Annotations refer to the stored pixel grid; cv2.imread would turn this image by 90 degrees."""
    assert Image.open(files["exif"]).getexif().get(0x0112) == 6
    img = load_image(files["exif"])
    assert img.shape == files["rgb"].shape
    assert mean_abs(img, files["rgb"]) < 3.0
    assert cv2.imread(str(files["exif"])).shape[:2] == files["rgb"].shape[1::-1]


# --------------------------------------------------------------------------------- dataset and loader

def records_for(files, lsp_record):
    """One record per file (the LSP person's annotation), plus two annotation problems."""
    r = lsp_record

    def rec(path, **kw):
        args = dict(image=str(path), joints=r.joints, visibility=r.visibility, center=r.center, scale=r.scale,
                    dataset="lsp", index=r.index)
        args.update(kw)
        return PoseRecord(**args)

    recs = [rec(files[k]) for k in ("good", "truncated", "gray", "corrupt", "cmyk", "empty", "alpha",
                                    "missing", "garbage")]
    recs.append(rec(files["good"], visibility=np.full(14, NOT_ANNOTATED)))  # 9: nothing annotated
    far = r.center + np.array([5000.0, 5000.0])
    recs.append(rec(files["good"], joints=np.tile(far, (14, 1))))  # 10: every joint far outside the crop
    return recs


BAD = {1: "truncated", 3: "cannot decode", 5: "empty file", 7: "not found", 8: "cannot decode",
       9: "no annotated joint", 10: "no annotated joint inside the crop"}


def test_skip_mode_counts_and_names_bad_samples(files, lsp_record, caplog):
    recs = records_for(files, lsp_record)
    ds = PoseDataset(recs, LSP, 64, 16, 1.0, on_bad_sample="skip")
    for i, why in BAD.items():
        marker = ds[i]
        assert isinstance(marker, BadSample) and marker.file == recs[i].image and why in marker.reason
    loader = make_loader(ds, batch_size=4, num_workers=2, shuffle=False)
    with caplog.at_level(logging.WARNING, logger="data_pipelines.batch"):
        batches = list(loader)
    indices = [i for b in batches for i in b["index"].tolist()]
    assert indices == [0, 2, 4, 6]  # good, gray, cmyk, alpha: loaded
    # batches shrink by their bad samples; the third batch (indices 8-10) held only bad ones
    assert [b["num_samples"] for b in batches] == [2, 2] and [b["batch_index"] for b in batches] == [0, 1]
    skipped = [f for b in batches for f in b["skipped"]]
    assert skipped == [recs[i].image for i in (1, 3, 5, 7)]  # the last, all-bad batch: counters only
    assert loader.skipped_total == len(BAD) == loader.skipped_in_epoch
    assert sorted(loader.skipped_files) == sorted(recs[i].image for i in BAD)
    warned = [m.getMessage() for m in caplog.records if m.levelno == logging.WARNING]
    assert len(warned) == len(BAD)
    for i, why in BAD.items():
        assert any(recs[i].image in w and why in w for w in warned), (recs[i].image, warned)
    # the usable odd files give proper crops: the alpha sample's crop is the warp of the composite
    alpha_sample = ds[6]
    rgb = load_image(files["alpha"])
    direct = make_sample(rgb, recs[6], None, None, 64, 16, 1.0)
    np.testing.assert_array_equal(alpha_sample["image"], direct["crop"])


def test_all_bad_batch_is_not_yielded_but_counted(files, lsp_record):
    recs = records_for(files, lsp_record)
    order = [0, 5, 7, 2]  # good, empty, missing, gray
    ds = PoseDataset([recs[i] for i in order], LSP, 64, 16, 1.0)
    got = list(make_loader(ds, batch_size=2, num_workers=0, shuffle=False))
    assert [b["batch_index"] for b in got] == [0, 1] and [b["num_samples"] for b in got] == [1, 1]
    loader = make_loader(ds, batch_size=1, num_workers=0, shuffle=False)
    got = list(loader)
    assert [b["batch_index"] for b in got] == [0, 3]  # batches 1 and 2 held only bad samples ...
    assert got[1]["skipped"] == [recs[5].image, recs[7].image]  # ... reported with the next batch
    assert got[1]["skipped_reasons"][0] == "empty file (0 bytes)"
    assert loader.skipped_total == 2


def test_raise_mode_gives_one_clear_error(files, lsp_record):
    recs = records_for(files, lsp_record)
    ds = PoseDataset(recs, LSP, 64, 16, 1.0, on_bad_sample="raise")
    assert ds[0]["index"] == 0
    with pytest.raises(BadSampleError) as info:
        ds[1]
    assert str(info.value).startswith(recs[1].image) and "truncated" in str(info.value)
    assert isinstance(info.value, UserError) and isinstance(info.value.__cause__, BadImageError)
    with pytest.raises(BadSampleError, match="no annotated joint inside the crop"):
        ds[10]
    # through worker processes: raised in the main process, one line naming the file, no worker traceback
    loader = make_loader(ds, batch_size=4, num_workers=2, shuffle=False)
    with pytest.raises(BadSampleError) as info:
        list(loader)
    msg = str(info.value)
    assert msg.startswith(recs[1].image) and "truncated" in msg
    assert "\n" not in msg and "Traceback" not in msg


def test_constructor_checks(lsp_record):
    with pytest.raises(ValueError, match="on_bad_sample"):
        PoseDataset([lsp_record], LSP, on_bad_sample="ignore")
    with pytest.raises(ValueError, match="no records"):
        PoseDataset([], LSP)
    short = PoseRecord("x.jpg", np.zeros((3, 2)), np.ones(3), (1, 1), 1.0)
    with pytest.raises(ValueError, match="x.jpg"):
        PoseDataset([short], LSP)


def test_bug_in_image_loader_names_the_sample(lsp_record):
    def broken(record):
        raise KeyError("oops")

    ds = PoseDataset([lsp_record], LSP, image_loader=broken)
    with pytest.raises(KeyError) as info:
        ds[0]
    assert any(lsp_record.image in note for note in getattr(info.value, "__notes__", []))
