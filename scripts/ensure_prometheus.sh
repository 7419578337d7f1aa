#!/usr/bin/env bash
# Print the path of a Prometheus server binary, installing Debian's `prometheus` package first if there is
# none (the telemetry tests start their own server from it; slurm/ci/cluster.sh does the same for SLURM).
#
#   bash scripts/ensure_prometheus.sh      -> /usr/bin/prometheus on stdout, progress on stderr; exit 1 if
#                                             it cannot be had (not root, no apt-get, apt failed: log tail)
#
# $SATPOSE_PROMETHEUS names a binary to use instead. The package is installed without its recommended
# node exporter, and no service is started by this script: in a container policy-rc.d stops the package's
# own unit; where systemd runs it, the packaged service listens on :9090 - the tests never use it (they
# start a private server on a free loopback port).
set -euo pipefail

log() { echo "ensure_prometheus.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

if [ -n "${SATPOSE_PROMETHEUS:-}" ]; then
  [ -x "$SATPOSE_PROMETHEUS" ] || die "SATPOSE_PROMETHEUS=$SATPOSE_PROMETHEUS is not an executable"
  echo "$SATPOSE_PROMETHEUS"; exit 0
fi
found() { command -v prometheus 2>/dev/null || PATH="$PATH:/usr/sbin:/usr/bin" command -v prometheus 2>/dev/null; }
if bin="$(found)"; then echo "$bin"; exit 0; fi

[ "$(id -u)" = 0 ] || die "prometheus is not installed and this is not root: apt-get install prometheus"
command -v apt-get >/dev/null || die "prometheus is not installed and there is no apt-get (Debian/Ubuntu only)"
logfile="$(mktemp -t satpose-apt-prometheus.XXXXXX.log)"
apt=(apt-get install -y -qq --no-install-recommends prometheus)
log "installing Debian's prometheus package (log: $logfile)"
t0=$SECONDS
# One apt at a time on this machine (several test runs or engineers may install at once).
exec 9>/tmp/apt.lock
flock 9
if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" >"$logfile" 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$logfile" 2>&1 || true
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" >>"$logfile" 2>&1 \
    || { tail -n 30 "$logfile" >&2; die "apt-get install prometheus failed (log above)"; }
fi
flock -u 9
bin="$(found)" || die "the prometheus package is installed but no prometheus binary is on PATH"
log "installed in $((SECONDS - t0)) s: $("$bin" --version 2>&1 | head -n1)"
echo "$bin"
