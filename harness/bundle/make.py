"""What goes into an offline bundle (the groups of `--with`) and how it is fetched: the LSP subset, and
pinned wheels for the GPU image downloaded with pip (or built from an sdist), then packed by parts.pack."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.bundle.parts import BundleError, pack

# pip's flags for wheels that run on the GPU image (CPython 3.12, manylinux x86_64: /work/.library/device)
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]


@dataclass(frozen=True)
class Group:
    """One `--with` choice: pinned wheels (deps first: the install order), groups it needs, modules to check."""
    wheels: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    imports: tuple[str, ...] = ()
    sdists: tuple[str, ...] = ()  # no wheel on PyPI: built here with `pip wheel --no-deps --no-build-isolation`


# What the GPU image lacks (its package list: /work/.library/device/KINDS.md), from each wheel's METADATA
# Requires-Dist, read on 2026-12-05. Already there: numpy, six, packaging, pyyaml, typing-extensions (kept
# below for pydantic's >= 4.16), numba, msgpack, ninja, psutil, py-cpuinfo, einops, tqdm, nvidia-ml-py,
# click, filelock, protobuf, requests, attrs, pandas, pyarrow, fsspec, aiosignal, frozenlist.
GROUPS: dict[str, Group] = {
    "lsp": Group(),  # the LSP subset: files, not wheels (see lsp_files)
    "lsp-full": Group(),  # all LSP images, unchanged: the lsp-tta protocol of `gpu_check.sh --only accuracy`
    "pydantic": Group(("typing-extensions==4.16.0", "annotated-types==0.8.0", "typing-inspection==0.4.5",
                       "pydantic-core==2.50.5", "pydantic==2.14.4"), imports=("pydantic",)),
    # nvidia-dali-cuda130 2.4.0 needs nvidia-nvimgcodec-cu13[all] 0.9 and nvidia-libnvcomp-cu13 ==5.3.0.16;
    # of the [all] extra only nvidia-nvjpeg (libnvjpeg.so.13, CUDA 13.0's) is taken: nvjpeg2k and nvtiff
    # decode JPEG 2000 and TIFF, which this project does not read.
    "dali": Group(("astunparse==1.6.3", "gast==0.7.0", "makefun==1.16.0", "libcst==1.9.0", "nvtx==0.2.17",
                   "optree==0.20.0", "nvidia-nvjpeg==13.0.4.44", "nvidia-libnvcomp-cu13==5.3.0.16",
                   "nvidia-nvimgcodec-cu13==0.9.0.20", "nvidia-dali-cuda130==2.4.0"),
                  imports=("nvidia.dali", "nvidia.nvimgcodec")),
    "deepspeed": Group(("hjson==3.1.0",), needs=("pydantic",), imports=("deepspeed", "hjson"),
                       sdists=("deepspeed==0.19.8",)),
    "ray": Group(("rpds-py==2026.9.1", "referencing==0.37.0", "jsonschema-specifications==2025.9.1",
                  "jsonschema==4.26.0", "tensorboardX==2.6.5", "ray==2.60.0"), needs=("pydantic",),
                 imports=("ray", "jsonschema", "tensorboardX")),
}


def resolve_groups(names: Iterable[str]) -> list[str]:
    """The groups asked for plus the groups they need, needs first, each once."""
    out: list[str] = []

    def add(name: str) -> None:
        if name not in GROUPS:
            raise ValueError(f"unknown bundle group {name!r}: choose from {', '.join(GROUPS)}")
        for need in GROUPS[name].needs:
            add(need)
        if name not in out:
            out.append(name)

    for n in names:
        if n.strip():
            add(n.strip())
    return out


def lsp_files(lsp_root: Path, images: int, stage: Path) -> list[tuple[str, Path]]:
    """The first `images` LSP images (im0001..) and their joints.mat cut to them (3 x 14 x N), staged as
    lsp/joints.mat and lsp/images/imNNNN.jpg: real JPEGs, read with data.train_split=all on the GPU image."""
    import scipy.io  # here only (make), never on the install side

    joints = scipy.io.loadmat(lsp_root / "joints.mat")["joints"]
    if joints.shape[:2] != (3, 14):
        raise BundleError(f"{lsp_root}/joints.mat: expected the 3 x 14 x N LSP layout, got {joints.shape}")
    if not 1 <= images <= joints.shape[2]:
        raise BundleError(f"--images {images}: {lsp_root}/joints.mat has {joints.shape[2]} people")
    (stage / "lsp").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(stage / "lsp" / "joints.mat", {"joints": joints[:, :, :images]})
    files = [("lsp/joints.mat", stage / "lsp" / "joints.mat")]
    for i in range(1, images + 1):
        src = lsp_root / "images" / f"im{i:04d}.jpg"
        if not src.is_file():
            raise BundleError(f"{src}: LSP image not found")
        files.append((f"lsp/images/im{i:04d}.jpg", src))
    return files


def _wheel_in(cache: Path, requirement: str) -> Path | None:
    name, _, version = requirement.partition("==")
    norm = re.sub(r"[-_.]+", "_", name).lower()
    for p in sorted(cache.glob("*.whl")):
        dist, ver = p.name.split("-")[:2]
        if re.sub(r"[-_.]+", "_", dist).lower() == norm and ver == version:
            return p
    return None


def fetch_wheels(requirements: Iterable[str], cache: Path, sdist: bool = False) -> list[Path]:
    """Each pinned requirement's wheel in `cache`, downloaded (or built from its sdist) when absent."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for req in requirements:
        if (whl := _wheel_in(cache, req)) is None:
            if sdist:  # a pure-Python wheel built with this interpreter's torch (DeepSpeed: DS_BUILD_OPS=0)
                cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                       "-w", str(cache), req]
            else:
                cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                       "--python-version", "3.12", "--implementation", "cp",
                       *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(cache), req]
            print(f"bundle: {' '.join(cmd[2:5])} {req}", file=sys.stderr)
            subprocess.run(cmd, check=True, env={**os.environ, "DS_BUILD_OPS": "0"})
            if (whl := _wheel_in(cache, req)) is None:
                raise BundleError(f"{req}: pip gave no wheel named for it in {cache}")
        out.append(whl)
    return out


def lsp_full_files(lsp_root: Path) -> list[tuple[str, Path]]:
    """Every LSP image and joints.mat as they are, staged as lsp-full/...: the 1000 + 1000 train/test protocol."""
    files = [("lsp-full/joints.mat", lsp_root / "joints.mat")]
    files += [(f"lsp-full/images/{f.name}", f) for f in sorted((lsp_root / "images").glob("im*.jpg"))]
    if not files[0][1].is_file() or len(files) < 2:
        raise BundleError(f"{lsp_root}: no joints.mat or no images/im*.jpg for the lsp-full group")
    return files


def make(groups: list[str], out_dir: Path, part_size: int, images: int, lsp_root: Path, cache: Path) -> dict:
    groups = resolve_groups(groups)
    stage = Path(tempfile.mkdtemp(prefix="satpose-bundle-"))
    try:
        files: list[tuple[str, Path]] = []
        if "lsp" in groups:
            files += lsp_files(lsp_root, images, stage)
        if "lsp-full" in groups:
            files += lsp_full_files(lsp_root)
        wheels: list[Path] = []
        for g in groups:
            wheels += fetch_wheels(GROUPS[g].wheels, cache)
            wheels += fetch_wheels(GROUPS[g].sdists, cache, sdist=True)
        files += [(f"wheels/{w.name}", w) for w in wheels]
        imports = [m for g in groups for m in GROUPS[g].imports]
        return pack(files, out_dir / "parts", part_size, [f"wheels/{w.name}" for w in wheels], groups, imports)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ verify
