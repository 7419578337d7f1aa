"""Offline bundles in parts: what a bare, offline GPU image (or an air-gapped cluster) lacks, split into
numbered parts small enough for one transfer each, with a manifest of hashes; reassembled, verified and
installed there with python3 + pip alone (this module imports nothing outside the standard library).

    python -m harness.bundle make [--with lsp,pydantic,dali,deepspeed,ray] [--dir .gpu] [--part-size 60MiB]
                                  [--images 320] [--lsp DIR] [--cache DIR]
    python -m harness.bundle verify [--dir .gpu]
    python -m harness.bundle install [--dir .gpu] [--site DIR]

`make` stages the chosen groups' files (an LSP subset as lsp/; wheels for CPython 3.12 on manylinux x86_64 as
wheels/, downloaded with pip, or built from the sdist where PyPI has no wheel), concatenates them into one
byte stream in install order and cuts it into DIR/parts/satpose-<id>.NNN-of-MMM.part, beside
DIR/parts/manifest.json: each file's path, size, sha256 and offset in the stream; each part's name, size and
sha256; the part count; the wheels' install order; the modules each group must make importable. The id is a
hash of the contents, so parts of two bundles never share a name. `verify` checks every part against the
manifest and names each missing, truncated or corrupt part (expected against found size and sha256), the files
it breaks, and parts found there that belong to another bundle. `install` verifies, reassembles the files
under DIR (DIR/lsp, DIR/wheels: where scripts/gpu_check.sh looks), checks every file's sha256, installs the
wheels with `pip install --no-index --no-deps --target SITE` (default DIR/site) and prints the PYTHONPATH to
use. Exit codes: 0 done, 1 a part or file is missing or corrupt (or pip failed), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FORMAT = "satpose-bundle/1"
MANIFEST = "manifest.json"
MiB = 1 << 20
DEFAULT_PART_SIZE = 60 * MiB  # the device tool takes 64 MiB a transfer, the repository's own files included
CHUNK = 4 * MiB

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


class BundleError(Exception):
    """A bundle that cannot be used: every line of the message names a part or file and what is wrong."""


# ------------------------------------------------------------------------------------------------ helpers

def parse_size(text: str) -> int:
    """'62914560', '60M', '60MiB', '1.5G', '512k' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?B)?\s*", str(text))
    if not m:
        raise ValueError(f"part size {text!r}: expected bytes or a number with k, M or G (e.g. 60M)")
    size = int(float(m.group(1)) * {"": 1, "k": 1 << 10, "m": MiB, "g": 1 << 30}[m.group(2).lower()])
    if size < 1:
        raise ValueError(f"part size {text!r}: must be at least 1 byte")
    return size


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


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


def _human(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


# ------------------------------------------------------------------------------------------------ make

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


def pack(files: list[tuple[str, Path]], parts_dir: Path, part_size: int, install_order: list[str],
         groups: list[str], imports: list[str]) -> dict:
    """Concatenate `files` (bundle path, source) in order, cut the stream into parts of at most `part_size`
    bytes in `parts_dir` (old parts and manifest there are removed) and write the manifest; returns it."""
    paths = [p for p, _ in files]
    if len(set(paths)) != len(paths):
        raise BundleError(f"two files with one bundle path: {sorted({p for p in paths if paths.count(p) > 1})}")
    entries, offset = [], 0
    for rel, src in files:
        size = Path(src).stat().st_size
        entries.append({"path": rel, "size": size, "sha256": sha256_file(Path(src)), "offset": offset})
        offset += size
    total = offset
    count = max(1, -(-total // part_size))
    ident = hashlib.sha256(json.dumps([[e["path"], e["sha256"]] for e in entries] + [part_size]).encode())
    bundle = ident.hexdigest()[:12]
    parts_dir.mkdir(parents=True, exist_ok=True)
    for old in [*parts_dir.glob("satpose-*.part"), parts_dir / MANIFEST]:
        old.unlink(missing_ok=True)
    names = [f"satpose-{bundle}.{i + 1:03d}-of-{count:03d}.part" for i in range(count)]
    parts = []
    out, h, written = None, None, 0

    def close() -> None:
        out.close()
        parts.append({"name": names[len(parts)], "size": written, "sha256": h.hexdigest()})

    for (_, src) in files:
        with open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                while chunk:
                    if out is None or written == part_size:
                        if out is not None:
                            close()
                        out, h, written = open(parts_dir / names[len(parts)], "wb"), hashlib.sha256(), 0
                    take = chunk[: part_size - written]
                    out.write(take)
                    h.update(take)
                    written += len(take)
                    chunk = chunk[len(take):]
    if out is None:  # an empty bundle is one empty part
        out, h, written = open(parts_dir / names[0], "wb"), hashlib.sha256(), 0
    close()
    manifest = {"format": FORMAT, "bundle": bundle,
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "groups": groups, "part_size": part_size, "total_size": total, "part_count": count,
                "parts": parts, "files": entries, "install_order": install_order, "imports": imports}
    tmp = parts_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, parts_dir / MANIFEST)
    return manifest


def make(groups: list[str], out_dir: Path, part_size: int, images: int, lsp_root: Path, cache: Path) -> dict:
    groups = resolve_groups(groups)
    stage = Path(tempfile.mkdtemp(prefix="satpose-bundle-"))
    try:
        files: list[tuple[str, Path]] = []
        if "lsp" in groups:
            files += lsp_files(lsp_root, images, stage)
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

def read_manifest(parts_dir: Path) -> dict:
    path = parts_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: no manifest (send it with the parts: it is made beside them)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise BundleError(f"{path}: not valid JSON ({err}): the manifest is damaged, send it again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a {FORMAT} manifest")
    return manifest


def files_in(manifest: dict, start: int, end: int) -> list[str]:
    """The bundle's files with bytes in the stream range [start, end)."""
    return [f["path"] for f in manifest["files"] if f["offset"] < end and f["offset"] + f["size"] > start]


def _broken(files: list[str]) -> str:
    shown = ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
    return f"breaks {shown}" if files else "holds no file's bytes"


def verify(parts_dir: Path) -> dict:
    """The manifest, once every part is present with its size and sha256; else BundleError naming each bad part
    (expected against found), the files it breaks, and parts of another bundle found beside them."""
    manifest = read_manifest(parts_dir)
    problems = []
    for i, part in enumerate(manifest["parts"]):
        path = parts_dir / part["name"]
        start, end = i * manifest["part_size"], i * manifest["part_size"] + part["size"]
        broken = _broken(files_in(manifest, start, end))
        where = f"part {i + 1} of {manifest['part_count']}, {path.name}"
        if not path.is_file():
            problems.append(f"{where}: MISSING (expected {part['size']} bytes, sha256 {part['sha256']}); {broken}")
            continue
        size = path.stat().st_size
        if size != part["size"]:
            what = "truncated" if size < part["size"] else "too long"
            problems.append(f"{where}: {what}: {size} bytes, expected {part['size']}; {broken}")
            continue
        found = sha256_file(path)
        if found != part["sha256"]:
            problems.append(f"{where}: CORRUPT: sha256 {found}, expected {part['sha256']} (same size: damaged "
                            f"in transfer); {broken}")
    if problems:
        mine = f"satpose-{manifest['bundle']}"
        others = sorted({p.name.split(".")[0] for p in parts_dir.glob("satpose-*.part")} - {mine})
        if others:
            problems.append(f"{parts_dir} also holds parts of another bundle ({', '.join(others)}): "
                            f"{MANIFEST} is bundle {manifest['bundle']}'s; if those parts are the ones you sent, "
                            "the manifest belongs to another bundle: send the manifest made with them")
        ok = manifest["part_count"] - sum(1 for p in problems if p.startswith("part "))
        raise BundleError(f"bundle {manifest['bundle']} in {parts_dir}: {ok} of {manifest['part_count']} parts "
                          "good\n" + "\n".join(problems))
    return manifest


# ------------------------------------------------------------------------------------------------ install

def reassemble(parts_dir: Path, manifest: dict, dest: Path) -> list[str]:
    """Write every file of the bundle under `dest` from the verified parts, each checked against its sha256
    (a file is written to a temp name and renamed when whole). Returns the files written."""
    parts = [parts_dir / p["name"] for p in manifest["parts"]]
    part_size = manifest["part_size"]
    written, bad = [], []
    for entry in manifest["files"]:
        target = dest / entry["path"]
        if not target.resolve().is_relative_to(dest.resolve()):
            raise BundleError(f"manifest file {entry['path']!r} lies outside {dest}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        h, pos, end = hashlib.sha256(), entry["offset"], entry["offset"] + entry["size"]
        with open(tmp, "wb") as out:
            while pos < end:
                k, within = divmod(pos, part_size)
                with open(parts[k], "rb") as f:
                    f.seek(within)
                    data = f.read(min(end - pos, part_size - within))
                if not data:
                    raise BundleError(f"{parts[k].name}: ends before byte {within} (needed by {entry['path']})")
                out.write(data)
                h.update(data)
                pos += len(data)
        if h.hexdigest() != entry["sha256"]:
            tmp.unlink()
            bad.append(f"{entry['path']}: sha256 {h.hexdigest()}, expected {entry['sha256']}")
            continue
        os.replace(tmp, target)
        written.append(entry["path"])
    if bad:
        raise BundleError("reassembled files do not match the manifest (the manifest itself is damaged?):\n"
                          + "\n".join(bad))
    return written


def namespace_init(site: Path) -> list[str]:
    """Give each top-level namespace portion of `site` (a folder of packages with no __init__.py, e.g. nvidia/
    from nvidia-dali) an __init__.py that extends its __path__ over every folder of that name on sys.path:
    otherwise a regular `nvidia/__init__.py` in the image's site-packages would hide site's nvidia/dali (a
    regular package found anywhere on sys.path wins over namespace portions found before it), while the
    image's nvidia/* stay importable through the extended __path__."""
    fixed = []
    for d in sorted(p for p in site.iterdir() if p.is_dir() and p.name.isidentifier()):
        if not (d / "__init__.py").exists() and any((c / "__init__.py").exists() for c in d.iterdir() if c.is_dir()):
            (d / "__init__.py").write_text("__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n")
            fixed.append(d.name)
    return fixed


def check_imports(site: Path, modules: list[str]) -> list[str]:
    """The modules not found (importlib.util.find_spec: a dotted name imports its parents) with `site` first on
    the path, each with the reason."""
    if not modules:
        return []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    code = ("import importlib.util, sys\nfor m in sys.argv[1:]:\n    try:\n"
            "        importlib.util.find_spec(m) or print(f'{m} (not found)')\n"
            "    except Exception as e:\n        print(f'{m} ({type(e).__name__}: {e})')\n")
    proc = subprocess.run([sys.executable, "-c", code, *modules], env=env, capture_output=True, text=True)
    return proc.stdout.splitlines() if proc.returncode == 0 else [f"{m} (the check failed: {proc.stderr[-300:]})"
                                                                  for m in modules]


def install(bundle_dir: Path, site: Path | None = None) -> Path:
    """Verify the parts, reassemble the files under bundle_dir, pip-install the wheels into `site` offline;
    returns `site`. Skips the work when `site` already holds this bundle (its stamp file)."""
    parts_dir = bundle_dir / "parts"
    manifest = verify(parts_dir)
    site = Path(site) if site else bundle_dir / "site"
    stamp = site / ".satpose-bundle"
    if stamp.is_file() and stamp.read_text().strip() == manifest["bundle"]:
        print(f"bundle {manifest['bundle']}: already installed in {site}")
    else:
        written = reassemble(parts_dir, manifest, bundle_dir)
        print(f"bundle {manifest['bundle']}: {manifest['part_count']} parts verified, {len(written)} files "
              f"({_human(manifest['total_size'])}) reassembled under {bundle_dir}, every sha256 checked")
        wheels = [str(bundle_dir / w) for w in manifest["install_order"]]
        if wheels:
            shutil.rmtree(site, ignore_errors=True)
            site.mkdir(parents=True)
            cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                   "--no-cache-dir", "--disable-pip-version-check", "--upgrade", "--target", str(site), *wheels]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise BundleError(f"pip install --target {site} failed (exit {proc.returncode}):\n"
                                  + (proc.stderr or proc.stdout).strip()[-3000:])
            fixed = namespace_init(site)
            print(f"installed {len(wheels)} wheels into {site}"
                  + (f" (made {', '.join(fixed)} extend the image's packages of that name)" if fixed else ""))
        else:
            site.mkdir(parents=True, exist_ok=True)
        stamp.write_text(manifest["bundle"] + "\n")
    missing = check_imports(site, manifest.get("imports", []))
    if missing:
        raise BundleError(f"installed into {site}, but these modules are not found with it on PYTHONPATH: "
                          f"{'; '.join(missing)}")
    return site


# ------------------------------------------------------------------------------------------------ CLI

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.bundle", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make", help="stage, download and split a bundle into DIR/parts")
    mk.add_argument("--with", dest="groups", default="lsp,pydantic",
                    help=f"comma-separated groups: {','.join(GROUPS)} (default lsp,pydantic)")
    mk.add_argument("--part-size", default=str(DEFAULT_PART_SIZE), help="largest part, e.g. 60M (default 60 MiB)")
    mk.add_argument("--images", type=int, default=320, help="LSP images in the lsp group (default 320)")
    mk.add_argument("--lsp", type=Path, default=Path(os.environ.get("SATPOSE_DATASETS", "../shared/datasets")) / "lsp")
    mk.add_argument("--cache", type=Path, help="where wheels are downloaded and kept (default DIR/cache)")
    for s in (mk, sub.add_parser("verify", help="check every part against the manifest"),
              ins := sub.add_parser("install", help="verify, reassemble, pip install --no-index --target")):
        s.add_argument("--dir", type=Path, default=Path(".gpu"), help="the bundle folder (parts in DIR/parts)")
    ins.add_argument("--site", type=Path, help="pip's --target (default DIR/site)")
    args = p.parse_args(argv)
    try:
        if args.command == "make":
            m = make(args.groups.split(","), args.dir, parse_size(args.part_size), args.images, args.lsp,
                     args.cache or args.dir / "cache")
            print(f"bundle {m['bundle']}: groups {', '.join(m['groups'])}; {len(m['files'])} files, "
                  f"{_human(m['total_size'])} in {m['part_count']} parts of at most {_human(m['part_size'])}:")
            for part in m["parts"]:
                print(f"  {args.dir / 'parts' / part['name']}  {_human(part['size'])}")
            print(f"  {args.dir / 'parts' / MANIFEST}  (send with every part)")
        elif args.command == "verify":
            m = verify(args.dir / "parts")
            print(f"bundle {m['bundle']}: all {m['part_count']} parts present and their sha256 match "
                  f"({_human(m['total_size'])}, groups {', '.join(m['groups'])})")
        else:
            site = install(args.dir, args.site)
            print(f"PYTHONPATH={site.resolve()}")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (BundleError, OSError, subprocess.CalledProcessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
