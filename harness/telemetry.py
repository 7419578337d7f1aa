"""The HTTP side of Prometheus telemetry: one exporter per rank and the file that lets Prometheus find them all.

Every rank serves its own registry on `telemetry.bind`:(`telemetry.port` + local rank), or on a port the
kernel picks when `telemetry.port` is 0, from a daemon thread: a scrape never waits for the training loop
and a dead scraper cannot stop it. The ranks exchange their addresses once (one all_gather at start) and
rank 0 writes Prometheus file-based service discovery JSON, `<run_dir>/prometheus-targets.json`, and
optionally a copy in `telemetry.sd_dir`, the folder a cluster Prometheus watches:

    [{"targets": ["node1:41234"], "labels": {"job": "123456", "node": "node1", "rank": "0", ...}}, ...]
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from data_pipelines.errors import UserError
from harness.config import TelemetryConfig
from harness.distributed import launch_env

SD_FILE = "prometheus-targets.json"
# After the scrape that close() waited for: time for its response (a few kB) to leave before the process ends.
_RESPONSE_GRACE_S = 0.2


def is_loopback(bind: str) -> bool:
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def target_host(bind: str) -> str:
    """The host Prometheus should scrape for an exporter bound to `bind`: the node's name for a wildcard."""
    if bind in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{bind}]" if ":" in bind else bind


def run_labels(job: str, rank: int, objective: str, run: str) -> dict[str, str]:
    """The labels on every metric of a rank: job (SLURM job id, else the run name), node, rank, objective, run."""
    return {"job": os.environ.get("SLURM_JOB_ID") or job, "node": socket.gethostname(), "rank": str(rank),
            "objective": objective, "run": run}


def git_commit() -> str:
    """The commit of the harness's checkout ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


class _ScrapeClock:
    """A collector that exports nothing and remembers when the registry was last collected, i.e. scraped."""

    def __init__(self):
        self.last: float | None = None

    def collect(self):
        self.last = time.monotonic()
        return []


class Exporter:
    """`registry` served over HTTP (GET /metrics) from a daemon thread until `close()`."""

    def __init__(self, registry: CollectorRegistry, cfg: TelemetryConfig):
        local_rank = launch_env()[2]
        port = cfg.port + local_rank if cfg.port else 0
        if port > 65535:
            raise UserError(f"telemetry.port: {cfg.port} + local rank {local_rank} = {port} is beyond 65535")
        self.clock = _ScrapeClock()
        registry.register(self.clock)
        try:
            self.server, self.thread = start_http_server(port, addr=cfg.bind, registry=registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"telemetry.port: port {port} on {cfg.bind} is in use (telemetry.port={cfg.port} + "
                                f"local rank {local_rank}); choose another telemetry.port, or 0 for free ports") \
                    from None
            raise UserError(f"telemetry.bind: cannot listen on {cfg.bind} port {port}: {exc.strerror or exc}") \
                from None
        self.bind = cfg.bind
        self.port = self.server.server_port

    @property
    def target(self) -> str:
        return f"{target_host(self.bind)}:{self.port}"

    def close(self, linger_s: float = 0.0) -> None:
        """Stop serving. If anything has scraped this exporter, first wait (at most `linger_s`) for one more
        scrape, so the final values - the last step, the summary - reach Prometheus."""
        if self.clock.last is not None and linger_s > 0:
            since, deadline = time.monotonic(), time.monotonic() + linger_s
            while self.clock.last < since and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.clock.last >= since:
                time.sleep(_RESPONSE_GRACE_S)
        self.server.shutdown()
        self.server.server_close()


def gather(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's `entry`, in rank order: one all_gather in a process group, else just this one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [entry]
    entries: list = [None] * dist.get_world_size()
    dist.all_gather_object(entries, entry)
    return entries


def sd_groups(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """File-SD target groups: one per rank, its address and its labels."""
    return [{"targets": [e["target"]], "labels": e["labels"]} for e in entries]


def sd_copy_name(labels: dict[str, str]) -> str:
    """The file name in a shared `telemetry.sd_dir`: unique per job and run."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"satpose-{labels['job']}-{labels['run']}") + ".json"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
