#!/usr/bin/env bash
# The one command to run on a machine with a GPU: every CUDA path with a PASS / FAIL / SKIP line, then the
# train, infer and kernels benchmark suites (about 8 minutes on one H100), reports written to --out.
#
#   bash scripts/make_gpu_bundle.sh        # here, once: .gpu/ (LSP subset + offline wheels), carried along
#   bash scripts/gpu_check.sh [--out DIR]  # there (default out: docs/benchmarks)
#   bash scripts/gpu_check.sh --dry        # no GPU (or asked): the same steps on the CPU at tiny sizes (CI);
#                                          # its reports go to a temporary folder unless --out is given
#
# Needs only python3 with torch (+ triton on a GPU) and the repository; installs nothing from the network.
# Runtime imports the harness needs that the image lacks (pydantic on a bare torch image) are installed from
# .gpu/wheels into a temporary folder; anything still missing is named and the script stops. Optional
# packages (DALI, DeepSpeed, Ray, prometheus-client) are not needed: their checks are listed as skipped.
# Exit code: the number of failed checks (0 = all passed).
set -uo pipefail
shopt -s lastpipe  # `... | count` runs count in this shell, so its FAIL tally survives
cd "$(dirname "$0")/.."
DRY=0
OUT=
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) DRY=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [--dry] [--out DIR]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
FAILS=0
SKIPS=()
say() {  # STATUS NAME DETAIL
  echo "$1 $2: $3"
  [ "$1" = FAIL ] && FAILS=$((FAILS + 1))
  [ "$1" = SKIP ] && SKIPS+=("$2")
  return 0
}
count() {  # the PASS/FAIL/SKIP lines of a python step, counted here too
  while IFS= read -r l; do
    echo "$l"
    case "$l" in FAIL*) FAILS=$((FAILS + 1)) ;; SKIP*) SKIPS+=("${l#SKIP }") ;; esac
  done
}

# -- dependencies -----------------------------------------------------------------------------------------
if ! "$PY" -c "import pydantic" 2>/dev/null && ls .gpu/wheels/*.whl >/dev/null 2>&1; then
  SITE=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" .gpu/wheels/*.whl && export PYTHONPATH="$PYTHONPATH:$SITE"
fi
MISSING=$("$PY" - <<'EOF2'
import importlib.util
need = {"torch": "torch", "numpy": "numpy", "scipy": "scipy", "yaml": "pyyaml", "pydantic": "pydantic",
        "rich": "rich", "PIL": "pillow", "cv2": "opencv-python-headless", "matplotlib": "matplotlib"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
EOF2
)
if [ -n "$MISSING" ]; then
  say FAIL dependencies "missing: $MISSING (make .gpu/wheels with scripts/make_gpu_bundle.sh, or pip install -e .)"
  exit 1
fi
say PASS dependencies "$("$PY" -c 'import torch, sys; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}")')"
for opt in triton:triton nvidia.dali:DALI deepspeed:DeepSpeed ray:Ray prometheus_client:prometheus-client pytest:pytest; do
  "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('${opt%%:*}') is None)" \
    || say SKIP "${opt#*:}" "not installed: its checks and rows are left out"
done

# -- device -----------------------------------------------------------------------------------------------
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$DRY" = 0 ] && [ "$GPUS" = 0 ]; then
  say SKIP gpu "no CUDA device visible: running the CPU dry mode (--dry)"
  DRY=1
fi
DRYFLAG=$( [ "$DRY" = 1 ] && echo --dry )
[ -n "$OUT" ] || OUT=$( [ "$DRY" = 1 ] && mktemp -d -t gpu_check_dry.XXXX || echo docs/benchmarks )
[ "$DRY" = 0 ] && say PASS gpu "$GPUS x $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))'), driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)"

# -- Triton kernels against torch ---------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
  say SKIP "kernel tests" "CPU: CI runs tests/kernels under TRITON_INTERPRET=1; bench kernels below checks every case"
elif "$PY" -c "import pytest, triton" 2>/dev/null; then
  if SATPOSE_KEEP_GPUS=1 SATPOSE_REQUIRE_GPU=1 "$PY" -m pytest tests/kernels -q -p no:cacheprovider -x \
      > /tmp/gpu_check_kernels.log 2>&1; then
    say PASS "kernel tests" "$(tail -1 /tmp/gpu_check_kernels.log) (tests/kernels on cuda)"
  else
    say FAIL "kernel tests" "$(tail -1 /tmp/gpu_check_kernels.log); log: /tmp/gpu_check_kernels.log"
  fi
else
  say SKIP "kernel tests" "pytest or triton not installed"
fi

# -- DALI's GPU pipeline (mixed decode, GPU warp) against the torch backend, where DALI is installed -----------
if [ "$DRY" = 1 ]; then
  say SKIP "DALI GPU path" "CPU: CI runs tests/test_dali.py in DALI's CPU mode"
elif "$PY" -c "import pytest, nvidia.dali" 2>/dev/null; then
  if SATPOSE_KEEP_GPUS=1 "$PY" -m pytest tests/test_dali.py -k gpu_path -q -p no:cacheprovider -rs \
      > /tmp/gpu_check_dali.log 2>&1 && ! grep -q "SKIPPED" /tmp/gpu_check_dali.log; then
    say PASS "DALI GPU path" "$(tail -1 /tmp/gpu_check_dali.log)"
  else
    say FAIL "DALI GPU path" "$(tail -1 /tmp/gpu_check_dali.log); log: /tmp/gpu_check_dali.log"
  fi
else
  say SKIP "DALI GPU path" "DALI not installed (bash scripts/setup.sh dali)"
fi

# -- steps (bf16, fp16 x objectives), compile, checkpoint, deterministic, process group + BatchNorm ------------
"$PY" -m harness.bench.gpucheck $DRYFLAG --only steps compile checkpoint deterministic 2>/tmp/gpu_check.err | count
if [ "$DRY" = 1 ] || [ "$GPUS" -ge 2 ]; then
  "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m harness.bench.gpucheck $DRYFLAG \
    --only distributed 2>>/tmp/gpu_check.err | count
else
  "$PY" -m harness.bench.gpucheck --only distributed 2>>/tmp/gpu_check.err | count
fi

# -- benchmark suites ---------------------------------------------------------------------------------------
if [ -f .gpu/lsp/joints.mat ]; then
  DATA=(data.name=lsp data.root=.gpu/lsp data.train_split=all data.val_split=all)
else
  DATA=(data.name=synthetic)
  say SKIP "real images" "no .gpu/lsp (scripts/make_gpu_bundle.sh): the suites read synthetic people"
fi
if [ "$DRY" = 1 ]; then
  SIZE=(model.stacks=1 model.features=16 discriminator.features=16 data.input_size=64 data.heatmap_size=16
        train.batch_size=4 data.num_workers=0 data.max_train_samples=16 data.max_val_samples=4
        data.synthetic_train_size=16 data.synthetic_val_size=4 train.device=cpu)
  RUN=(--steps 2 --warmup 1 --repeats 1); VARIANTS=(reference bf16); BS=(1 4); KB=(--kernel-batch 2)
else
  SIZE=(train.batch_size=64 data.num_workers=8 train.device=cuda)
  RUN=(--steps 10 --warmup 3 --repeats 3); VARIANTS=(reference fast); BS=(1 16 64 256); KB=()
fi
NOTE="scripts/gpu_check.sh$( [ "$DRY" = 1 ] && echo ' --dry (CPU rehearsal at tiny sizes: not a measurement)' )"
bench() {  # NAME TIMEOUT ARGS...: one suite, its report's files listed
  local name=$1 limit=$2 t0=$SECONDS; shift 2
  if timeout "$limit" "$PY" -m harness bench "$@" --out "$OUT" --note "$NOTE" > "/tmp/gpu_check_$name.log" 2>&1; then
    say PASS "bench $name" "$((SECONDS - t0)) s; $(grep '^wrote' "/tmp/gpu_check_$name.log" | sed 's/^wrote //' | tr '\n' ' ')"
  else
    say FAIL "bench $name" "exit $? (timeout ${limit}s); log: /tmp/gpu_check_$name.log: $(tail -2 "/tmp/gpu_check_$name.log" | tr '\n' ' ')"
  fi
}
bench train 300 train --preset lsp-sat-4s "${DATA[@]}" "${SIZE[@]}" --input resident --variants "${VARIANTS[@]}" \
  "${RUN[@]}" --label "sat-4s-1s$( [ "$DRY" = 1 ] && echo -dry )"
bench infer 180 infer --preset lsp-sat-4s "${DATA[@]}" "${SIZE[@]}" --variants "${VARIANTS[@]}" --batch-sizes "${BS[@]}" \
  "${RUN[@]}" --label "g-4s$( [ "$DRY" = 1 ] && echo -dry )"
if [ "$DRY" = 0 ] && [ "$GPUS" -ge 2 ]; then  # DDP over NCCL with D run twice per step (issue 14, item 4)
  bench scaling 240 scaling --preset lsp-sat-4s "${DATA[@]}" train.batch_size=32 data.num_workers=4 train.device=cuda \
    --input resident --steps 5 --warmup 2 --repeats 2 --label sat-4s-1s
else
  say SKIP "bench scaling" "needs 2 GPUs (DDP over NCCL, issue 14 item 4); CI runs it on CPU with gloo"
fi
bench kernels 120 kernels "${KB[@]}" --repeats 3 --label "$( [ "$DRY" = 1 ] && echo dry || echo gpu-check )"
KJSON=$(grep '^wrote .*kernels.*\.json' /tmp/gpu_check_kernels.log 2>/dev/null | sed 's/^wrote //')
if [ -n "$KJSON" ]; then
  "$PY" - "$KJSON" <<'EOF2' | count
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    if r["backend"] == "triton":
        ok = r["correct"]
        print(f"{'PASS' if ok else 'FAIL'} kernel {r['op']}: relative error vs torch {r['rel_error']:.1e}"
              + (f", {r['value']:.4f} ms, {r.get('x_floor') or float('nan'):.2f}x the bandwidth floor"
                 if r.get("timed") else ", not timed (interpreter)"))
EOF2
fi

echo "---"
echo "gpu_check: $SECONDS s, $FAILS failed; skipped: $( [ ${#SKIPS[@]} -gt 0 ] && printf '%s; ' "${SKIPS[@]}" || echo nothing)"
exit "$FAILS"
