#!/usr/bin/env bash
# Make .gpu/, what scripts/gpu_check.sh needs on a bare GPU image beside the repository (git-ignored here
# through .git/info/exclude; carry it with the repo, e.g. the device tool's `carry: [".gpu"]`):
#   .gpu/lsp/     the first N LSP images (default 320) renamed im0001.. and their joints.mat (3 x 14 x N):
#                 real JPEGs for the end-to-end loader, read with data.train_split=all (no ../shared there)
#   .gpu/wheels/  the runtime dependencies a torch + triton + torchvision image lacks (pydantic and its
#                 own dependencies), as wheels for CPython 3.12 on manylinux x86_64, installed there offline
#                 by gpu_check.sh (pip --no-index). pyyaml, rich, scipy, opencv, matplotlib and pillow are on
#                 this workplace's GPU image (/work/.library/device/KINDS.md); gpu_check.sh names any missing.
#   .gpu/lsp-full/ (with --full-lsp) all 2000 LSP images and joints.mat unchanged, for the lsp-tta protocol of
#                 `gpu_check.sh --only accuracy`; the JPEGs are re-encoded at quality 75 (49 MiB instead of the
#                 shared copy's 81, over the device tool's 64 MiB): pixels differ a little from the originals
# Usage: bash scripts/make_gpu_bundle.sh [--images N] [--lsp DIR] [--no-wheels] [--full-lsp]
#        (about 15 MiB; with --full-lsp about 60)
set -euo pipefail
cd "$(dirname "$0")/.."
N=320
LSP=${SATPOSE_DATASETS:-../shared/datasets}/lsp
WHEELS=1
FULL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --images) N=$2; shift 2 ;;
    --lsp) LSP=$2; shift 2 ;;
    --no-wheels) WHEELS=0; shift ;;
    --full-lsp) FULL=1; shift ;;
    *) echo "usage: $0 [--images N] [--lsp DIR] [--no-wheels] [--full-lsp]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-.venv/bin/python}
[ -d .git ] && { grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude; }
rm -rf .gpu/lsp && mkdir -p .gpu/lsp/images
"$PY" - "$LSP" "$N" <<'PYEOF'
import shutil, sys
from pathlib import Path
import scipy.io
src, n = Path(sys.argv[1]), int(sys.argv[2])
joints = scipy.io.loadmat(src / "joints.mat")["joints"]
if joints.shape[:2] != (3, 14):
    sys.exit(f"{src}/joints.mat: expected the 3 x 14 x N LSP layout, got {joints.shape}")
scipy.io.savemat(".gpu/lsp/joints.mat", {"joints": joints[:, :, :n]})
for i in range(1, n + 1):
    shutil.copyfile(src / "images" / f"im{i:04d}.jpg", f".gpu/lsp/images/im{i:04d}.jpg")
print(f".gpu/lsp: {n} images and joints.mat from {src}")
PYEOF
if [ "$FULL" = 1 ]; then
  rm -rf .gpu/lsp-full && mkdir -p .gpu/lsp-full/images
  "$PY" - "$LSP" <<'PYEOF'
import shutil, sys
from pathlib import Path
import cv2
src = Path(sys.argv[1])
shutil.copyfile(src / "joints.mat", ".gpu/lsp-full/joints.mat")
for f in sorted((src / "images").glob("im*.jpg")):
    ok = cv2.imwrite(f".gpu/lsp-full/images/{f.name}", cv2.imread(str(f), cv2.IMREAD_COLOR),
                     [cv2.IMWRITE_JPEG_QUALITY, 75])
    if not ok:
        sys.exit(f"{f}: could not re-encode")
(Path(".gpu/lsp-full") / "README.md").write_text(
    f"All LSP images of {src}, re-encoded at JPEG quality 75 (scripts/make_gpu_bundle.sh --full-lsp); "
    "joints.mat unchanged.\n")
print(f".gpu/lsp-full: {len(list(Path('.gpu/lsp-full/images').iterdir()))} images (JPEG quality 75) from {src}")
PYEOF
fi
if [ "$WHEELS" = 1 ]; then
  rm -rf .gpu/wheels && mkdir -p .gpu/wheels
  for pkg in pydantic pydantic-core annotated-types typing-inspection; do
    ver=$("$PY" -c "from importlib.metadata import version; print(version('$pkg'))")
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels "$pkg==$ver"
  done
  echo ".gpu/wheels: $(ls .gpu/wheels | tr '\n' ' ')"
fi
du -sh .gpu
