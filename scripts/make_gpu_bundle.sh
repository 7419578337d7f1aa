#!/usr/bin/env bash
# Make the offline bundle scripts/gpu_check.sh installs on a bare GPU image (or an air-gapped cluster):
# .gpu/parts/satpose-<id>.NNN-of-MMM.part (each at most --part-size, default 60 MiB: one per transfer) and
# .gpu/parts/manifest.json (sha256 and size of every file and part). The logic is harness/bundle/; see
# docs/offline-bundle.md. Groups (--with, comma-separated; default lsp,pydantic):
#   lsp        the first --images N LSP images (default 320) and their joints.mat, real JPEGs for the GPU checks
#   lsp-full   all 2000 LSP images and joints.mat, unchanged (81 MiB: two parts), for `gpu_check.sh --only accuracy`
#   pydantic   pydantic and its own deps (the harness's config needs it; the GPU image lacks it)
#   dali       nvidia-dali-cuda130 2.4.0 + nvImageCodec, nvCOMP, nvJPEG (CUDA 13) and its pure-Python deps
#   deepspeed  DeepSpeed 0.19.8 (a pure-Python wheel built here from the sdist, DS_BUILD_OPS=0) + hjson
#   ray        ray[tune] 2.60.0 + jsonschema, referencing, rpds-py, tensorboardX
# Wheels are for CPython 3.12 on manylinux x86_64, downloaded once into .gpu/cache (--cache DIR).
# Usage: bash scripts/make_gpu_bundle.sh [--with lsp,pydantic,dali,deepspeed,ray] [--part-size 60M] [--images N]
#                                        [--lsp DIR] [--cache DIR] [--dir .gpu]
# There: python3 -m harness.bundle install   (gpu_check.sh does it when .gpu/parts/manifest.json is present)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PY" -m harness.bundle make "$@"
