"""A real Prometheus server (Debian's package, scripts/ensure_prometheus.sh) scrapes a 2-rank torchrun CPU run
through the file-SD JSON the run writes, and its HTTP API must report what the run itself reports: images
per rank as in summary.json, losses as in metrics.jsonl; every Grafana dashboard query must evaluate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.name=synthetic", "data.input_size=64", "data.heatmap_size=16", "data.synthetic_train_size=32",
        "data.synthetic_val_size=8", "data.num_workers=0", "model.stacks=2", "model.features=16",
        "discriminator.features=16", "train.batch_size=4", "train.log_every=1", "train.threads=1",
        "train.val_every=100"]
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, "OMP_NUM_THREADS": "1",
       "PYTHONUNBUFFERED": "1"}
SCRAPE_CONFIG = """\
global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: satpose
    honor_labels: true
    file_sd_configs: [{{files: ["{sd_file}"], refresh_interval: 1s}}]
"""


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_binary() -> str:
    res = subprocess.run(["bash", str(REPO / "scripts" / "ensure_prometheus.sh")], capture_output=True, text=True,
                         timeout=900)
    if res.returncode:
        msg = f"no Prometheus server: {res.stderr.strip()[-1500:]}"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)
    return res.stdout.strip().splitlines()[-1]


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def api(self, path: str, **params) -> dict:
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str, **params) -> list[dict]:
        return self.api("query", query=promql, **params)["result"]

    def per_rank(self, promql: str) -> dict[str, float]:
        return {r["metric"]["rank"]: float(r["value"][1]) for r in self.query(promql)}


@pytest.fixture
def prometheus(tmp_path):
    """A private server on a free loopback port whose only targets come from <tmp>/run's discovery file."""
    binary = prometheus_binary()
    run_dir = tmp_path / "run"
    run_dir.mkdir()  # Prometheus watches the file's folder, so it must exist before the run writes the file
    config = tmp_path / "prometheus.yml"
    config.write_text(SCRAPE_CONFIG.format(sd_file=run_dir / "prometheus-targets.json"))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()[-2000:]}"
            try:
                if urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready after 60 s"
            time.sleep(0.2)
        yield Prometheus(url)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def scraped(server: Prometheus, promql: str, want: dict[str, float], timeout: float = 20) -> dict[str, float]:
    """`promql` per rank once it equals `want` (the last scrape may still be in flight), else its last value."""
    deadline = time.monotonic() + timeout
    while (got := server.per_rank(promql)) != want and time.monotonic() < deadline:
        time.sleep(0.5)
    return got


@pytest.mark.slow
def test_prometheus_scrapes_a_two_rank_run(prometheus, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "harness", "train", "--run-dir", str(run_dir), *TINY, "train.max_steps=120",
           "telemetry.enabled=true", "telemetry.linger_s=15"]
    res = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-5000:]}"
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in rows if r["kind"] == "train"}
    last = train[summary["steps"]]
    job = run_dir.name
    assert {g["labels"]["rank"] for g in json.loads((run_dir / "prometheus-targets.json").read_text())} == {"0", "1"}
    assert server_targets(prometheus, job) == {"0", "1"}

    # images and steps per rank, as the run's summary has them (synthetic data: no sample is skipped)
    per_rank = summary["steps_this_run"] * 4 / summary["world_size"]
    assert scraped(prometheus, f'last_over_time(satpose_images_total{{job="{job}"}}[10m])',
                   {"0": per_rank, "1": per_rank}) == {"0": per_rank, "1": per_rank}
    steps = float(summary["steps_this_run"])
    assert scraped(prometheus, f'last_over_time(satpose_steps_total{{job="{job}"}}[10m])',
                   {"0": steps, "1": steps}) == {"0": steps, "1": steps}

    # the final logged step's values, as metrics.jsonl has them (rank-averaged: the same on both ranks)
    expected = {'satpose_step': last["step"], 'satpose_generator_loss{term="mse"}': last["loss_mse"],
                'satpose_generator_loss{term="adversarial"}': last["loss_adv"],
                'satpose_generator_loss{term="total"}': last["loss_g"],
                'satpose_discriminator_loss{term="real"}': last["l_real"],
                'satpose_discriminator_loss{term="fake"}': last["l_fake"],
                'satpose_discriminator_loss{term="total"}': last["loss_d"], "satpose_k_t": last["k"],
                'satpose_learning_rate{model="generator"}': last["lr_g"],
                'satpose_grad_norm{model="discriminator"}': last["grad_norm_d"]}
    for series, value in expected.items():
        name, _, labels = series.partition("{")
        promql = f'last_over_time({name}{{job="{job}",{labels.rstrip("}")}}}[10m])'
        assert prometheus.per_rank(promql) == {"0": value, "1": value}, promql

    # every loss Prometheus scraped during the run is one metrics.jsonl logged
    samples = prometheus.query(f'satpose_generator_loss{{job="{job}",term="mse",rank="0"}}[10m]')[0]["values"]
    logged = {r["loss_mse"] for r in train.values()}
    assert len(samples) >= 3 and {float(v) for _, v in samples} <= logged

    # the dashboard's queries evaluate against this server; the core panels have data
    t_end = max(t for t, _ in samples)
    board = json.loads((REPO / "docs" / "grafana" / "satpose-training.json").read_text())
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = (target["expr"].replace("$__rate_interval", "1m").replace("$job", job)
                    .replace("$rank", ".*"))
            result = prometheus.query(expr, time=t_end)
            if any(word in panel["title"] for word in ("Throughput", "loss", "Step time", "Data wait")):
                assert result, f"no data for panel {panel['title']!r}: {expr}"


def server_targets(server: Prometheus, job: str) -> set[str]:
    """Ranks of `job` among the targets the server discovered from the file."""
    active = server.api("targets", state="active")["activeTargets"]
    return {t["labels"]["rank"] for t in active if t["labels"].get("job") == job}
