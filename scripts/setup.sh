#!/usr/bin/env bash
# Set up everything this project needs in ./.venv, on a CPU box or a GPU box.
#   scripts/setup.sh            runtime only
#   scripts/setup.sh dev        + test tools (pytest, ruff, pycocotools)
#   scripts/setup.sh dev,deepspeed,tune,dali   any extras of pyproject.toml
# torch: an importable torch in the venv is kept. Otherwise a machine with an NVIDIA driver gets the
# registry's default (CUDA) build; a machine without gets the pinned CPU build ($TORCH_CPU_SPEC,
# default torch==2.13.0). Extra pip arguments for torch (e.g. an --index-url of CPU wheels) go in
# $TORCH_PIP_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing the CUDA build of torch" >&2
    "${pip[@]}" ${TORCH_PIP_ARGS:-} "torch>=2.4"
  else
    echo "setup: no GPU, installing ${TORCH_CPU_SPEC:-torch==2.13.0} (CPU)" >&2
    "${pip[@]}" ${TORCH_PIP_ARGS:-} "${TORCH_CPU_SPEC:-torch==2.13.0}"
  fi
fi
"${pip[@]}" -e ".${extras:+[$extras]}"
echo "setup: ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")')" >&2
