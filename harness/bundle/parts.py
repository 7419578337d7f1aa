"""The parts of an offline bundle: pack files into numbered parts with a manifest, verify them (naming each
missing or corrupt part and the files it breaks), reassemble and pip-install offline. Standard library only:
it runs on the target before anything is installed (see harness/bundle/__init__.py)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

FORMAT = "satpose-bundle/1"
MANIFEST = "manifest.json"
MiB = 1 << 20
DEFAULT_PART_SIZE = 60 * MiB  # the device tool takes 64 MiB a transfer, the repository's own files included
CHUNK = 4 * MiB


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


def human_size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


# ------------------------------------------------------------------------------------------------ make


# ------------------------------------------------------------------------------------------------ pack

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
              f"({human_size(manifest['total_size'])}) reassembled under {bundle_dir}, every sha256 checked")
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
