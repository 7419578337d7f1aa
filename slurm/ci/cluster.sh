#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests and CI (Debian 12 / Slurm 22.05, run as root,
# works in a container without systemd or cgroups).
#
#   slurm/ci/cluster.sh start    install slurm-wlm + munge if missing, write the config, start munged,
#                                slurmctld and slurmd; wait until the node is idle (fails loudly with
#                                the daemons' log tails otherwise). Idempotent: a running cluster is kept.
#   slurm/ci/cluster.sh stop     cancel all jobs, stop the three daemons, delete the cluster directory.
#   slurm/ci/cluster.sh status   daemons and `sinfo`; exit 0 when up, 3 when not.
#   slurm/ci/cluster.sh env      print `export SLURM_CONF=...`: clients (sbatch, squeue, scontrol) need it:
#                                eval "$(slurm/ci/cluster.sh env)"
#
# Everything (config, munge key and socket, state, spool, logs, pid files) lives in one private directory,
# $SATPOSE_SLURM_DIR (default /tmp/satpose-slurm); nothing under /etc is changed. Other knobs:
#   SATPOSE_SLURM_PORT       slurmctld port (default 6817); slurmd uses the next one
#   SATPOSE_SLURM_CPUS       CPUs the node advertises (default: the machine's count, at least 8)
#   SATPOSE_SLURM_PARTITION  partition name (default satpose)
#   SATPOSE_SLURM_CRED_EXPIRE  seconds a requeued job waits before it may run again (default 10)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${SATPOSE_SLURM_DIR:-/tmp/satpose-slurm}"
conf="$dir/slurm.conf"
node="$(hostname -s)"
ctld_port="${SATPOSE_SLURM_PORT:-6817}"
partition="${SATPOSE_SLURM_PARTITION:-satpose}"
export SLURM_CONF="$conf"

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

our_pid() {  # our_pid NAME: the pid in NAME's pid file if that process is alive and is NAME
  local f="$dir/run/$1.pid" pid
  [ -s "$f" ] || return 1
  pid="$(cat "$f")"
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
  echo "$pid"
}

pid_alive() { our_pid "$1" >/dev/null; }

node_state() { { sinfo -h -N -n "$node" -o %T 2>/dev/null || true; } | head -n1; }

is_up() {
  pid_alive munged && pid_alive slurmctld && pid_alive slurmd && [ "$(node_state)" != "" ]
}

install_if_missing() {
  local missing=0 b
  for b in munged mungekey slurmctld slurmd sbatch sinfo scontrol; do
    command -v "$b" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$b" >/dev/null 2>&1 || missing=1
  done
  [ "$missing" = 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "slurm/munge are not installed and this is not root: apt-get install slurm-wlm munge"
  command -v apt-get >/dev/null || die "slurm/munge are not installed and there is no apt-get (Debian/Ubuntu only)"
  log "installing slurm-wlm and munge with apt-get"
  local t0=$SECONDS apt=(apt-get install -y -qq --no-install-recommends slurm-wlm munge)
  # policy-rc.d (containers) stops the packages from starting their own daemons; a failed start is fine.
  if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" >"$dir/apt.log" 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$dir/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" >>"$dir/apt.log" 2>&1 \
      || { tail -n 30 "$dir/apt.log" >&2; die "apt-get install slurm-wlm munge failed (log above)"; }
  fi
  log "installed in $((SECONDS - t0)) s: $(slurmctld -V)"
}

write_config() {
  local hw_cpus mem_mb cpus
  hw_cpus="$(nproc)"
  mem_mb="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
  cpus="${SATPOSE_SLURM_CPUS:-$(( hw_cpus < 8 ? 8 : hw_cpus ))}"
  sed -e "s|@DIR@|$dir|g" -e "s|@NODE@|$node|g" -e "s|@CTLD_PORT@|$ctld_port|g" \
      -e "s|@SLURMD_PORT@|$((ctld_port + 1))|g" -e "s|@CPUS@|$cpus|g" -e "s|@HW_CPUS@|$hw_cpus|g" \
      -e "s|@MEM_MB@|$mem_mb|g" -e "s|@PARTITION@|$partition|g" \
      -e "s|@CRED_EXPIRE@|${SATPOSE_SLURM_CRED_EXPIRE:-10}|g" -e "s|@SCHED_INTERVAL@|2|g" \
      "$here/slurm.conf.in" >"$conf"
  local left
  left="$(grep -v '^#' "$conf" | grep -o '@[A-Z_]*@' | head -n1 || true)"
  [ -z "$left" ] || die "unfilled template field $left in $conf"
}

log_tails() {
  local f
  for f in "$dir"/log/daemons.out "$dir"/munge/munged.log "$dir"/log/slurmctld.log "$dir"/log/slurmd.log; do
    [ -f "$f" ] && { echo "---- tail of $f" >&2; tail -n 25 "$f" >&2; }
  done
  return 0
}

kill_daemon() {  # kill_daemon NAME: TERM, up to 10 s grace, then KILL; only the pid in our pid file
  local pid
  if pid="$(our_pid "$1")"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { log "$1 ($pid) ignored SIGTERM, killing"; kill -KILL "$pid" 2>/dev/null || true; }
  fi
  rm -f "$dir/run/$1.pid"
}

stop_daemons() {
  if pid_alive slurmctld && [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
    scancel --quiet --partition="$partition" 2>/dev/null || true
    for _ in $(seq 1 30); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  kill_daemon slurmd
  kill_daemon slurmctld
  kill_daemon munged
}

daemon() {  # daemon CMD...: start a self-daemonizing CMD with no inherited descriptors (munged keeps
  # them otherwise, and with them our lock and the caller's output pipes)
  (
    for fd in /proc/"$BASHPID"/fd/*; do
      fd="${fd##*/}"
      [ "$fd" -gt 2 ] && eval "exec $fd>&-"
    done
    exec "$@" </dev/null >>"$dir/log/daemons.out" 2>&1
  )
}

start() {
  mkdir -p "$dir"
  install_if_missing
  if is_up; then
    log "already running ($dir, node $node: $(node_state))"
    return 0
  fi
  stop_daemons  # leftovers of a half-started or crashed cluster
  rm -rf "$dir/state" "$dir/spool" "$dir/log" "$dir/run"
  mkdir -p "$dir/munge" "$dir/run" "$dir/state" "$dir/spool" "$dir/log"
  chmod 755 "$dir" "$dir/run"  # munged wants its socket directory readable by all ...
  chmod 700 "$dir/munge"       # ... and its key private
  [ -s "$dir/munge/munge.key" ] || mungekey --create --keyfile="$dir/munge/munge.key"
  write_config

  local t0=$SECONDS
  daemon munged --socket="$dir/run/munge.socket" --key-file="$dir/munge/munge.key" \
    --log-file="$dir/munge/munged.log" --pid-file="$dir/run/munged.pid" --seed-file="$dir/munge/munged.seed" \
    || { log_tails; die "munged did not start"; }
  daemon slurmctld -f "$conf" || { log_tails; die "slurmctld did not start"; }
  daemon slurmd -f "$conf" -N "$node" || { log_tails; die "slurmd did not start"; }

  local state="" name dead=""
  while [ $((SECONDS - t0)) -lt 30 ] && [ -z "$dead" ]; do
    state="$(node_state)"
    case "$state" in idle|mixed|allocated) break ;; esac
    sleep 0.5
    if [ $((SECONDS - t0)) -ge 3 ]; then  # the daemons fork at once; give them time to fail
      for name in munged slurmctld slurmd; do pid_alive "$name" || dead="$dead $name"; done
    fi
  done
  case "$state" in
    idle|mixed|allocated) ;;
    *)
      log_tails
      stop_daemons
      [ -z "$dead" ] || die "daemon(s)$dead died at start (log tails above)"
      die "node $node is not idle after 30 s (state '${state}'; log tails above)" ;;
  esac
  log "up in $((SECONDS - t0)) s: node $node $state, partition $partition, SLURM_CONF=$conf"
}

status() {
  local name rc=0
  for name in munged slurmctld slurmd; do
    if pid_alive "$name"; then echo "$name: running (pid $(our_pid "$name"))"; else echo "$name: not running"; rc=3; fi
  done
  if [ "$rc" = 0 ]; then sinfo -N || rc=3; fi
  return "$rc"
}

# One start/stop at a time (concurrent test sessions share the cluster).
mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9

case "${1:-}" in
  start) start ;;
  stop) stop_daemons; rm -rf "$dir"; log "stopped" ;;
  status) status ;;
  env) echo "export SLURM_CONF=$conf" ;;
  *) echo "usage: $0 {start|stop|status|env}" >&2; exit 2 ;;
esac
