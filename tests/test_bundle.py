"""harness.bundle: split into parts, verify, reassemble and install offline, and name what is missing or corrupt.

Small local files only (no download): two wheels written here (one a namespace portion of `nvidia`, like
nvidia-dali's) and plain files, cut into parts smaller than the files."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from harness.bundle import make as bundle_make
from harness.bundle import parts as bundle

REPO = Path(__file__).resolve().parents[1]


def make_wheel(folder: Path, dist: str, files: dict[str, str]) -> Path:
    """A minimal valid wheel (METADATA, WHEEL, RECORD with hashes) holding `files` (path -> text)."""
    info = f"{dist}-0.1.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    path = folder / f"{dist}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in {**files, f"{info}/RECORD": "\n".join(record) + "\n"}.items():
            z.writestr(name, text)
    return path


@pytest.fixture
def sources(tmp_path):
    """Two wheels and two plain files (3000 and 5000 random bytes) as (bundle path, source) pairs."""
    src = tmp_path / "src"
    src.mkdir()
    tiny = make_wheel(src, "tinypkg", {"tinypkg/__init__.py": "ANSWER = 42\n"})
    ns = make_wheel(src, "nvidia_tiny", {"nvidia/tiny/__init__.py": "NAME = 'tiny'\n"})
    rng = __import__("random").Random(0)
    for name, n in (("a.bin", 3000), ("b.bin", 5000)):
        (src / name).write_bytes(bytes(rng.randrange(256) for _ in range(n)))
    return [("lsp/a.bin", src / "a.bin"), ("lsp/b.bin", src / "b.bin"),
            (f"wheels/{tiny.name}", tiny), (f"wheels/{ns.name}", ns)]


def pack(sources, folder: Path, part_size: int = 1000) -> dict:
    wheels = [p for p, _ in sources if p.startswith("wheels/")]
    return bundle.pack(sources, folder / "parts", part_size, wheels, ["test"], ["tinypkg", "nvidia.tiny"])


def problem(folder: Path) -> str:
    with pytest.raises(bundle.BundleError) as err:
        bundle.verify(folder / "parts")
    return str(err.value)


def test_parts_reassemble_install_and_import(tmp_path, sources):
    """Parts smaller than the files; every byte back, every hash checked; the wheels importable with the
    printed PYTHONPATH, also beside a regular `nvidia` package elsewhere on the path (the GPU image's)."""
    m = pack(sources, tmp_path / "b")
    total = sum(src.stat().st_size for _, src in sources)
    assert m["part_count"] == -(-total // 1000) > len(sources) and m["total_size"] == total
    assert [p["size"] for p in m["parts"]][:-1] == [1000] * (m["part_count"] - 1)
    names = sorted(p.name for p in (tmp_path / "b" / "parts").glob("*.part"))
    assert names == sorted(p["name"] for p in m["parts"])
    assert all(n.startswith(f"satpose-{m['bundle']}.") for n in names)
    assert json.loads((tmp_path / "b" / "parts" / "manifest.json").read_text()) == m
    assert bundle.verify(tmp_path / "b" / "parts") == m

    site = bundle.install(tmp_path / "b", tmp_path / "site")
    for rel, src in sources:
        assert (tmp_path / "b" / rel).read_bytes() == src.read_bytes(), rel
    image = tmp_path / "image"  # the GPU image's site-packages: a regular nvidia package of its own
    (image / "nvidia" / "cublas").mkdir(parents=True)
    (image / "nvidia" / "__init__.py").write_text("")
    (image / "nvidia" / "cublas" / "__init__.py").write_text("LIB = 'cublas'\n")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{image}"}
    out = subprocess.run([sys.executable, "-c", "import tinypkg, nvidia.tiny, nvidia.cublas; "
                          "print(tinypkg.ANSWER, nvidia.tiny.NAME, nvidia.cublas.LIB)"],
                         env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["42", "tiny", "cublas"], out.stderr
    # a second install finds its stamp and leaves the site alone
    (site / "tinypkg" / "marker").write_text("x")
    bundle.install(tmp_path / "b", site)
    assert (site / "tinypkg" / "marker").exists()


def test_missing_truncated_and_flipped_parts_are_named_with_the_files_they_break(tmp_path, sources):
    m = pack(sources, tmp_path / "b")
    parts = tmp_path / "b" / "parts"
    p = [parts / x["name"] for x in m["parts"]]
    # part 2 holds bytes 1000-1999: the middle of a.bin (0-2999)
    saved = p[1].read_bytes()
    p[1].unlink()
    msg = problem(tmp_path / "b")
    assert f"{m['part_count'] - 1} of {m['part_count']} parts good" in msg
    sha = m["parts"][1]["sha256"]
    assert f"part 2 of {m['part_count']}, {p[1].name}: MISSING (expected 1000 bytes, sha256 {sha})" in msg
    assert "breaks lsp/a.bin" in msg and "b.bin" not in msg
    p[1].write_bytes(saved[:700])  # truncated
    assert f"{p[1].name}: truncated: 700 bytes, expected 1000; breaks lsp/a.bin" in problem(tmp_path / "b")
    flipped = bytearray(saved)
    flipped[500] ^= 1
    p[1].write_bytes(bytes(flipped))
    msg = problem(tmp_path / "b")
    found = hashlib.sha256(bytes(flipped)).hexdigest()
    assert f"{p[1].name}: CORRUPT: sha256 {found}, expected {m['parts'][1]['sha256']}" in msg, msg
    # part 3 (2000-2999 of a.bin; b.bin starts at 3000) and part 4 (b.bin): the boundary is exact
    p[1].write_bytes(saved)
    p[3].unlink()
    assert "breaks lsp/b.bin" in problem(tmp_path / "b") and "a.bin" not in problem(tmp_path / "b")
    # install refuses before reassembling or calling pip
    with pytest.raises(bundle.BundleError, match="MISSING"):
        bundle.install(tmp_path / "b", tmp_path / "site")
    assert not (tmp_path / "site").exists() and not (tmp_path / "b" / "lsp").exists()


def test_a_manifest_of_another_bundle_is_named(tmp_path, sources):
    pack(sources, tmp_path / "a")
    other = pack(sources[:2], tmp_path / "b")
    shutil.copy(tmp_path / "b" / "parts" / "manifest.json", tmp_path / "a" / "parts" / "manifest.json")
    msg = problem(tmp_path / "a")
    assert f"0 of {other['part_count']} parts good" in msg and "MISSING" in msg
    assert "also holds parts of another bundle" in msg and "the manifest belongs to another bundle" in msg


def test_cli_exit_codes_and_messages(tmp_path, sources):
    pack(sources, tmp_path / "b")
    run = [sys.executable, "-m", "harness.bundle"]
    ok = subprocess.run([*run, "verify", "--dir", str(tmp_path / "b")], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and "parts present and their sha256 match" in ok.stdout, ok.stderr
    inst = subprocess.run([*run, "install", "--dir", str(tmp_path / "b")], cwd=REPO, capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr
    assert inst.stdout.splitlines()[-1] == f"PYTHONPATH={(tmp_path / 'b' / 'site').resolve()}"
    next((tmp_path / "b" / "parts").glob("*.002-of-*.part")).unlink()
    bad = subprocess.run([*run, "verify", "--dir", str(tmp_path / "b")], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("error: bundle ") and "MISSING" in bad.stderr
    none = subprocess.run([*run, "verify", "--dir", str(tmp_path / "nowhere")], cwd=REPO, capture_output=True,
                          text=True)
    assert none.returncode == 1 and "no manifest" in none.stderr
    size = subprocess.run([*run, "make", "--part-size", "lots"], cwd=REPO, capture_output=True, text=True)
    assert size.returncode == 2 and "part size 'lots'" in size.stderr


def test_sizes_groups_and_lsp_subset(tmp_path, lsp_root):
    assert bundle.parse_size("60M") == bundle.parse_size("60MiB") == 60 << 20
    assert bundle.parse_size("1000") == 1000 and bundle.parse_size("1.5k") == 1536
    for bad in ("0", "-1", "60 parsecs"):
        with pytest.raises(ValueError):
            bundle.parse_size(bad)
    assert bundle_make.resolve_groups(["ray", "deepspeed", "lsp"]) == ["pydantic", "ray", "deepspeed", "lsp"]
    with pytest.raises(ValueError, match="unknown bundle group 'dally'"):
        bundle_make.resolve_groups(["dally"])
    m = bundle_make.make(["lsp"], tmp_path, 50_000, 3, lsp_root, tmp_path / "cache")
    assert [f["path"] for f in m["files"]] == ["lsp/joints.mat"] + [f"lsp/images/im000{i}.jpg" for i in (1, 2, 3)]
    assert m["part_count"] > 1 and m["install_order"] == []
    bundle.install(tmp_path)
    import scipy.io

    assert scipy.io.loadmat(tmp_path / "lsp" / "joints.mat")["joints"].shape == (3, 14, 3)
    got = (tmp_path / "lsp" / "images" / "im0003.jpg").read_bytes()
    assert got == (lsp_root / "images" / "im0003.jpg").read_bytes()
