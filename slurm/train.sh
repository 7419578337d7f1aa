#!/usr/bin/env bash
# Train under SLURM:  sbatch [sbatch options] slurm/train.sh [python -m harness train arguments]
# Submit from the repository root (or set SATPOSE_REPO): the default --output goes to its logs/ folder.
# Every knob is described in slurm/README.md. Options given to sbatch override the defaults below.
#SBATCH --job-name=satpose
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#
# What runs: one srun task per node, each a torchrun agent (slurm/torchrun_exitcode.py) starting
# nproc-per-node workers of `python -m harness train --run-dir RUN_DIR --resume auto "$@"`, rendezvous
# c10d on the first node of the allocation.
#
# Preemption contract (the trainer's side is implemented by `harness train`):
#   - ~300 s before the time limit Slurm sends SIGUSR1 to this batch shell only (--signal=B:USR1@300);
#     this script forwards SIGUSR1 to the training step, and Slurm delivers it to every process of the
#     step, i.e. every worker (the torchrun agents ignore it).
#   - On SIGUSR1 every rank stops at a safe point, the run's checkpoint is written into RUN_DIR, all ranks
#     synchronise (so no rank exits before the checkpoint is complete), and every rank exits with code
#     85 = "checkpointed, please requeue".
#   - Step exit code 85: this script runs `scontrol requeue $SLURM_JOB_ID`; the job keeps its id, so the
#     next run gets the same RUN_DIR and `--resume auto` continues from the checkpoint
#     (SLURM_RESTART_COUNT counts the requeues). Exit 0: done. Any other exit code fails the job with it.
set -uo pipefail

log() { echo "train.sh: $(date '+%F %T') $*" >&2; }
die() { log "error: $*"; exit 2; }

[ -n "${SLURM_JOB_ID:-}" ] || die "run this through sbatch: sbatch [options] slurm/train.sh [train arguments]"

# sbatch runs a copy of this script from the spool directory: find the repository by the submit dir.
repo="${SATPOSE_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}"
[ -f "$repo/slurm/torchrun_exitcode.py" ] \
  || die "$repo is not the satpose repository (no slurm/torchrun_exitcode.py): submit from the repository root or set SATPOSE_REPO"
cd "$repo" || die "cannot cd to $repo"

python="${SATPOSE_PYTHON:-python}"
command -v "$python" >/dev/null 2>&1 || die "python interpreter '$python' not found (set SATPOSE_PYTHON)"
module="${SATPOSE_TRAIN_MODULE:-harness}"
run_dir="${SATPOSE_RUN_DIR:-runs/${SLURM_JOB_NAME}-${SLURM_JOB_ID}}"
restarts="${SLURM_RESTART_COUNT:-0}"
num_nodes="${SLURM_JOB_NUM_NODES:-1}"

mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
[ "${#hosts[@]}" -ge 1 ] || die "no hosts in SLURM_JOB_NODELIST='${SLURM_JOB_NODELIST:-}'"
rdzv_host="${hosts[0]}"
# A port per job (a requeued job keeps its id, hence its port), below the kernel's ephemeral range.
rdzv_port="${SATPOSE_RDZV_PORT:-$((15000 + SLURM_JOB_ID % 15000))}"
# A killed or crashed worker: torchrun restarts the whole worker group (all nodes re-rendezvous) and the
# trainer resumes from the newest checkpoint, up to this many times per job run.
max_restarts="${SATPOSE_MAX_RESTARTS:-3}"
[[ "$max_restarts" =~ ^[0-9]+$ ]] || die "SATPOSE_MAX_RESTARTS must be a non-negative integer, got '$max_restarts'"

# Processes per node, first that applies: SATPOSE_NPROC_PER_NODE; the GPUs Slurm allocated on this node
# (SLURM_GPUS_ON_NODE); the GPUs this shell can use: CUDA_VISIBLE_DEVICES when set ("" = none), else the ones
# nvidia-smi lists (a GPU node without Slurm GPU scheduling); the tasks per node asked for (CPU-only runs:
# --ntasks-per-node=N means N training processes per node); 1.
smi_gpus() {
  local n=0
  command -v nvidia-smi >/dev/null 2>&1 && n="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')"
  echo "${n:-0}"
}
visible_gpus() {
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    case "$CUDA_VISIBLE_DEVICES" in
      ""|NoDevFiles|-1*) echo 0 ;;
      *) local ids; IFS=, read -ra ids <<< "$CUDA_VISIBLE_DEVICES"; echo "${#ids[@]}" ;;
    esac
  else
    smi_gpus
  fi
}
slurm_gpus="${SLURM_GPUS_ON_NODE:-0}"
[[ "$slurm_gpus" =~ ^[0-9]+$ ]] || slurm_gpus=0
if [ -n "${SATPOSE_NPROC_PER_NODE:-}" ]; then
  nproc="$SATPOSE_NPROC_PER_NODE"; nproc_from="SATPOSE_NPROC_PER_NODE"
elif [ "$slurm_gpus" -gt 0 ]; then
  nproc="$slurm_gpus"; nproc_from="SLURM_GPUS_ON_NODE"
elif [ "$(visible_gpus)" -gt 0 ]; then
  nproc="$(visible_gpus)"
  nproc_from="$([ -n "${CUDA_VISIBLE_DEVICES+set}" ] && echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES" || echo "nvidia-smi -L")"
elif [ -n "${SLURM_NTASKS_PER_NODE:-}" ]; then
  nproc="${SLURM_NTASKS_PER_NODE%%(*}"; nproc_from="SLURM_NTASKS_PER_NODE (CPU only)"
else
  nproc=1; nproc_from="default"
fi
[[ "$nproc" =~ ^[1-9][0-9]*$ ]] || die "processes per node must be a positive integer, got '$nproc' (from $nproc_from)"

# GPUs for the training step: srun gets the node's allocated GPUs explicitly. Without this the one task per
# node inherits the job's per-task GPU request (sbatch --gpus-per-task=1 --ntasks-per-node=8: one GPU for
# the torchrun agent and its 8 workers, which harness/distributed.py then refuses).
gpu_args=()
if [ "$slurm_gpus" -gt 0 ]; then
  gpu_args=(--gres="gpu:$slurm_gpus")
fi
# A node whose driver lists more GPUs than Slurm gave this job: without cgroup device limits the workers
# could use GPUs of other jobs; with no GPU allocated at all they may train on the CPU (device=auto).
node_gpus="$(smi_gpus)"
if [ "$node_gpus" -gt "$slurm_gpus" ] && [ -z "${SATPOSE_NPROC_PER_NODE:-}" ]; then
  log "warning: nvidia-smi lists $node_gpus GPU(s) on this node but Slurm allocated $slurm_gpus to this job" \
      "(SLURM_GPUS_ON_NODE=${SLURM_GPUS_ON_NODE:-unset}): request them, e.g. sbatch --gpus-per-node=$node_gpus"
fi

cpus_on_node="${SLURM_CPUS_ON_NODE:-1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cpus_on_node / nproc > 0 ? cpus_on_node / nproc : 1 ))}"
# Data loading (JPEG decode + warp in data.num_workers processes per GPU) needs about 8-12 CPUs per GPU.
if [ "$slurm_gpus" -gt 0 ] && [ $(( cpus_on_node / nproc )) -lt 4 ]; then
  log "warning: $cpus_on_node CPU(s) for $nproc GPU process(es) on this node: data loading will starve the" \
      "GPUs; submit with --cpus-per-task=$(( 10 * nproc )) and data.num_workers=8 (slurm/README.md)"
fi
# Each rendezvous round gets its own store (hosted by the new rank 0) instead of the agents' shared one:
# a shared store outlives a restart and hands restarted workers their dead predecessors' addresses
# (pytorch/pytorch#135712). harness/distributed.py:restart_safe_store covers the single-agent case.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE="${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}"

log "job $SLURM_JOB_ID run $((restarts + 1)) (SLURM_RESTART_COUNT=$restarts) on ${num_nodes} node(s) ${SLURM_JOB_NODELIST}:" \
    "$nproc process(es) per node (from $nproc_from), GPUs for the step: ${gpu_args[*]:-none}, rendezvous $rdzv_host:$rdzv_port, run dir $run_dir," \
    "python $python, module $module"

# The batch shell gets the pre-end SIGUSR1 (B:). bash runs a trap only between commands, so the step runs
# in the background and the script waits for it; the trap forwards the signal to the step.
step_pid=""
signals=0
# shellcheck disable=SC2317  # called by the trap
forward_usr1() {
  signals=$((signals + 1))
  log "SIGUSR1 received (pre-end / preemption signal): forwarding it to the training step"
  [ -n "$step_pid" ] && kill -USR1 "$step_pid" 2>/dev/null
}
trap forward_usr1 USR1

# The step: one task per node holding all the node's GPUs (the job's per-task GPU settings are not the step's).
step=(env -u SLURM_GPUS_PER_TASK -u SLURM_TRES_PER_TASK
  srun --nodes="$num_nodes" --ntasks="$num_nodes" --ntasks-per-node=1 --cpus-per-task="$cpus_on_node" "${gpu_args[@]}"
  "$python" slurm/torchrun_exitcode.py
    --nnodes="$num_nodes" --nproc-per-node="$nproc"
    --rdzv-backend=c10d --rdzv-endpoint="$rdzv_host:$rdzv_port" --rdzv-id="$SLURM_JOB_ID"
    --max-restarts="$max_restarts"
    -m "$module" train --run-dir "$run_dir" --resume auto "$@")
"${step[@]}" &
step_pid=$!

while :; do
  seen=$signals
  wait "$step_pid"
  rc=$?
  [ "$signals" = "$seen" ] && break  # a trapped signal interrupts `wait`: wait again for the real status
done

case "$rc" in
  0) log "training finished"; exit 0 ;;
  85)
    log "the trainer checkpointed (exit 85): requeueing job $SLURM_JOB_ID"
    if scontrol requeue "$SLURM_JOB_ID"; then
      exit 0  # the requeue ends this run of the job (Slurm may terminate this script before it gets here)
    fi
    log "error: scontrol requeue failed (submitted with --no-requeue?); resume with: sbatch ... with SATPOSE_RUN_DIR=$run_dir"
    exit 85 ;;
  *) log "error: training step failed with exit code $rc"; exit "$rc" ;;
esac
