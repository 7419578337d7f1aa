#!/usr/bin/env bash
# Set up everything this project needs in ./.venv, on a CPU box or a GPU box.
#   scripts/setup.sh            runtime only
#   scripts/setup.sh dev        + test tools (pytest, ruff, pycocotools)
#   scripts/setup.sh dev,deepspeed,tune,dali   any extras of pyproject.toml
# torch: an importable torch >= 2.13 in the venv is kept (older ones are upgraded: DDP's buffer broadcast
# before 2.13 breaks D's plain BatchNorm on CUDA, pytorch/pytorch#175024, fixed by #175851). Otherwise a
# machine with an NVIDIA driver gets the registry's default (CUDA) build; a machine without gets the pinned
# CPU build ($TORCH_CPU_SPEC, default torch==2.13.0). Extra pip arguments for torch (e.g. an --index-url of CPU wheels) go in
# $TORCH_PIP_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if ! .venv/bin/python -c 'import sys, torch; sys.exit(tuple(map(int, torch.__version__.split(".")[:2])) < (2, 13))' \
    2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing the CUDA build of torch" >&2
    "${pip[@]}" ${TORCH_PIP_ARGS:-} "torch>=2.13"
  else
    echo "setup: no GPU, installing ${TORCH_CPU_SPEC:-torch==2.13.0} (CPU)" >&2
    "${pip[@]}" ${TORCH_PIP_ARGS:-} "${TORCH_CPU_SPEC:-torch==2.13.0}"
  fi
fi
# DALI (the `dali` extra) comes as one wheel per CUDA major version: nvidia-dali-cuda130 where the driver
# reports CUDA 13 or later, else nvidia-dali-cuda120. The CUDA 12 build also runs DALI's CPU mode on a machine
# without a GPU or CUDA libraries (pipelines with device_id=None), which is what the CPU-only CI runs. Numba
# (the same spec as pyproject's `dali` extra) runs the CPU-mode warp through DALI's Numba operator.
if [[ ",$extras," == *",dali,"* ]]; then
  cuda=$({ nvidia-smi 2>/dev/null || true; } | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -n 1)
  dali_build=nvidia-dali-cuda120
  [ "${cuda:-0}" -ge 13 ] && dali_build=nvidia-dali-cuda130
  echo "setup: installing $dali_build (driver CUDA: ${cuda:-none})" >&2
  "${pip[@]}" "$dali_build>=2.4,<2.5" "numba>=0.61,<0.69"
  extras=$(echo ",$extras," | sed 's/,dali,/,/; s/^,//; s/,$//')
fi
"${pip[@]}" -e ".${extras:+[$extras]}"
echo "setup: ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")')" >&2
