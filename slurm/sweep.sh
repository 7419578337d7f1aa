#!/usr/bin/env bash
# A Ray Tune sweep under SLURM:  sbatch [sbatch options] slurm/sweep.sh --preset NAME [sweep arguments]
# Submit from the repository root (or set SATPOSE_REPO). Every knob is described in slurm/README.md
# ("Sweeps"); options given to sbatch override the defaults below.
#SBATCH --job-name=satpose-sweep
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#
# What runs: a Ray head on the first node of the allocation (in this batch shell) and one Ray worker per
# other node (srun), then the sweep driver `python -m harness sweep --resume --storage STORAGE --name NAME
# "$@"` on the first node, then Ray is stopped (only this job's Ray: its own processes, not `ray stop`).
#   - Token authentication (RAY_AUTH_MODE=token): a fresh random token per job run, written with umask 077
#     into EXPERIMENT/ray_auth_token (mode 0600); Ray reads it from RAY_AUTH_TOKEN_PATH. The token itself
#     never appears on a command line, in the environment or in the log.
#   - Ports: one block of 100 per job, 10000 + (SLURM_JOB_ID % 50) * 100 (SATPOSE_RAY_PORT_BASE), below
#     train.sh's rendezvous ports (15000..29999) and the kernel's ephemeral range; every Ray port is set
#     explicitly inside it, so two sweeps on one node do not collide (unless their ids are equal mod 50).
#   - One node: Ray binds to 127.0.0.1. Several nodes: to the first node's address (SATPOSE_RAY_IP).
#   - No dashboard; Ray Client is not started (its dependency, ray[client], is not installed by the tune
#     extra) unless present, and then on a port of the block.
#   - Temp dir /tmp/ray_$SLURM_JOB_ID: short (AF_UNIX socket paths <= 107 bytes) and node-local.
# Preemption: ~300 s before the time limit Slurm sends SIGUSR1 to this shell, which forwards it to the
# driver; Ray Tune then stops the trials (each trainer checkpoints on its SIGTERM), saves the experiment
# and the driver exits 85; this script stops Ray and requeues the job; the next run resumes the sweep
# (`--resume`): finished trials are kept, the others continue from their checkpoints.
set -uo pipefail

log() { echo "sweep.sh: $(date '+%F %T') $*" >&2; }
die() { log "error: $*"; exit 2; }

[ -n "${SLURM_JOB_ID:-}" ] || die "run this through sbatch: sbatch [options] slurm/sweep.sh --preset NAME [sweep arguments]"
repo="${SATPOSE_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}"
[ -f "$repo/slurm/sweep.sh" ] || die "$repo is not the satpose repository: submit from its root or set SATPOSE_REPO"
cd "$repo" || die "cannot cd to $repo"

python="${SATPOSE_PYTHON:-python}"
command -v "$python" >/dev/null 2>&1 || die "python interpreter '$python' not found (set SATPOSE_PYTHON)"
python="$(command -v "$python")"
ray_bin="$(dirname "$python")/ray"
[ -x "$ray_bin" ] || die "no ray next to $python: install the tune extra (scripts/setup.sh tune)"
module="${SATPOSE_SWEEP_MODULE:-harness}"
storage="$(realpath -m "${SATPOSE_SWEEP_STORAGE:-runs/sweeps}")"
name="${SATPOSE_SWEEP_NAME:-${SLURM_JOB_NAME}-${SLURM_JOB_ID}}"
experiment="$storage/$name"
num_nodes="${SLURM_JOB_NUM_NODES:-1}"
cpus="${SLURM_CPUS_ON_NODE:-1}"
gpus="${SLURM_GPUS_ON_NODE:-0}"
[[ "$gpus" =~ ^[0-9]+$ ]] || gpus=0

base="${SATPOSE_RAY_PORT_BASE:-$((10000 + SLURM_JOB_ID % 50 * 100))}"
[[ "$base" =~ ^[0-9]+$ ]] && [ "$base" -ge 1024 ] && [ "$base" -le 65435 ] \
  || die "SATPOSE_RAY_PORT_BASE must be a port number in 1024..65435, got '$base'"
gcs_port=$base
ports=(--node-manager-port=$((base + 1)) --object-manager-port=$((base + 2))
       --dashboard-agent-grpc-port=$((base + 3)) --dashboard-agent-listen-port=$((base + 4))
       --metrics-export-port=$((base + 5)) --runtime-env-agent-port=$((base + 6))
       --min-worker-port=$((base + 10)) --max-worker-port=$((base + 99)))
if "$python" -c 'from ray._private.utils import get_ray_client_dependency_error as e; raise SystemExit(e() is not None)' 2>/dev/null; then
  ports+=(--ray-client-server-port=$((base + 7)))
fi
temp_dir="/tmp/ray_$SLURM_JOB_ID"

mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
[ "${#hosts[@]}" -ge 1 ] || die "no hosts in SLURM_JOB_NODELIST='${SLURM_JOB_NODELIST:-}'"
if [ "$num_nodes" -le 1 ]; then
  head_ip=127.0.0.1
else
  head_ip="${SATPOSE_RAY_IP:-$(getent ahostsv4 "${hosts[0]}" | awk 'NR == 1 {print $1}')}"
  [ -n "$head_ip" ] || die "cannot resolve the address of ${hosts[0]} (set SATPOSE_RAY_IP)"
fi

# The token: fresh for this run, created unreadable for others, passed to Ray by its path only.
mkdir -p "$experiment" || die "cannot create $experiment"
token_file="$experiment/ray_auth_token"
rm -f "$token_file"
(umask 077 && "$python" -c 'import secrets, sys; sys.stdout.write(secrets.token_hex(32))' > "$token_file") \
  || die "cannot write $token_file"
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$token_file" RAY_ADDRESS="$head_ip:$gcs_port"
# The autoscaler monitor's metrics server would take 44217 in every job: give it a port of the block.
export RAY_USAGE_STATS_ENABLED=0 AUTOSCALER_METRIC_PORT=$((base + 8))

ray_pids=()
stop_ray() {
  local pid
  for pid in "${ray_pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${ray_pids[@]}"; do wait "$pid" 2>/dev/null; done
  ray_pids=()
  rm -rf "$temp_dir"
}
trap stop_ray EXIT

log "job $SLURM_JOB_ID run $((${SLURM_RESTART_COUNT:-0} + 1)) on ${num_nodes} node(s) ${SLURM_JOB_NODELIST}: Ray head" \
    "$RAY_ADDRESS (ports $base..$((base + 99)), temp $temp_dir, token auth), experiment $experiment"
# --block: the `ray start` process owns the node's Ray processes and takes them down when it is stopped.
"$ray_bin" start --head --block --node-ip-address="$head_ip" --port="$gcs_port" "${ports[@]}" \
  --num-cpus="$cpus" --num-gpus="$gpus" --temp-dir="$temp_dir" --include-dashboard=false \
  --disable-usage-stats >"$temp_dir.head.log" 2>&1 &
ray_pids+=($!)
if [ "$num_nodes" -gt 1 ]; then
  srun --nodes=$((num_nodes - 1)) --ntasks=$((num_nodes - 1)) --ntasks-per-node=1 --exclude="${hosts[0]}" \
    --cpus-per-task="$cpus" "$ray_bin" start --block --address="$RAY_ADDRESS" "${ports[@]}" \
    --num-cpus="$cpus" --num-gpus="$gpus" --disable-usage-stats &
  ray_pids+=($!)
fi
ready=0
for _ in $(seq 120); do
  if "$python" -c 'import ray; ray.init(); n = len([x for x in ray.nodes() if x["Alive"]]); raise SystemExit(n < int(__import__("sys").argv[1]))' \
      "$num_nodes" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "${ray_pids[0]}" 2>/dev/null || break
  sleep 1
done
[ "$ready" = 1 ] || { cat "$temp_dir.head.log" >&2; die "Ray did not come up with $num_nodes node(s) at $RAY_ADDRESS"; }
rm -f "$temp_dir.head.log"
log "Ray is up"

driver_pid=""
signals=0
# shellcheck disable=SC2317  # called by the trap
forward_usr1() {
  signals=$((signals + 1))
  log "SIGUSR1 received (pre-end / preemption signal): asking the sweep driver to stop and save"
  [ -n "$driver_pid" ] && kill -USR1 "$driver_pid" 2>/dev/null
}
trap forward_usr1 USR1

"$python" -u -m "$module" sweep --resume --storage "$storage" --name "$name" "$@" &
driver_pid=$!
while :; do
  seen=$signals
  wait "$driver_pid"
  rc=$?
  [ "$signals" = "$seen" ] && break
done
stop_ray
log "Ray stopped"

case "$rc" in
  0) log "sweep finished: $experiment"; exit 0 ;;
  85)
    log "the sweep was interrupted and saved (exit 85): requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID" && exit 0
    log "error: scontrol requeue failed; resume with: SATPOSE_SWEEP_NAME=$name sbatch slurm/sweep.sh $*"
    exit 85 ;;
  *) log "error: the sweep driver failed with exit code $rc"; exit "$rc" ;;
esac
