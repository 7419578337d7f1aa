"""The Prometheus sink without training: metric names and values after fake events, ports, discovery file,
linger, scrapes while the main thread writes a checkpoint, and the docs/dashboard that name its metrics."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from data_pipelines.errors import UserError
from harness import checkpoint as ckpt
from harness import telemetry
from harness.config import load_config
from harness.sinks.prometheus import METRICS, PrometheusSink, reason_label

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "docs" / "grafana" / "satpose-training.json"


@pytest.fixture
def single_process(monkeypatch):
    """No launcher environment: local rank 0, no SLURM job (the job label is the run name)."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)


def make_sink(tmp_path: Path, *overrides: str, rank: int = 0, run: str = "run") -> PrometheusSink:
    cfg = load_config(None, None, ["telemetry.enabled=true", "telemetry.linger_s=0", *overrides])
    return PrometheusSink(cfg, rank, tmp_path / run)


def scrape(port: int, timeout: float = 5.0) -> dict[str, list]:
    """{family name: [(sample name, labels, value)]} of one GET /metrics (families with samples)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout).read().decode()
    return {f.name if f.type != "counter" else f.name + "_total": [(s.name, s.labels, s.value) for s in f.samples]
            for f in text_string_to_metric_families(text) if f.samples}


def value(families: dict, name: str, sample: str | None = None, **labels: str) -> float:
    found = [v for s, lab, v in families[name] if s == (sample or name) and labels.items() <= lab.items()]
    assert len(found) == 1, f"{name} {labels}: {families.get(name)}"
    return found[0]


def feed(sink: PrometheusSink) -> None:
    """One of every event, with values a test can recognise."""
    sink.record("start", {"device": "cpu", "resumed_step": 10, "rank": 0, "world_size": 1})
    for i, (step_s, data_s) in enumerate([(0.02, 0.001), (0.3, 0.05), (2.0, 0.4)]):
        sink.step(11 + i, {"images": 8, "images_rank": 4, "step_s": step_s, "data_s": data_s})
    sink.record("train", {"step": 13, "epoch": 0, "loss_g": 1.25, "loss_mse": 1.0, "loss_adv": 0.5, "loss_d": 0.75,
                          "l_real": 0.375, "l_fake": 0.125, "k": 0.0625, "convergence": 0.4375, "d_fake": 0.25,
                          "lr_g": 2.5e-4, "lr_d": 8e-5, "grad_norm_g": 3.5, "grad_norm_d": 1.5, "images_per_s": 9.0})
    sink.record("skipped", {"file": "/data/a.jpg", "reason": "cannot decode (OSError: /data/a.jpg is torn)"})
    sink.record("skipped", {"file": "/data/b.jpg", "reason": "cannot decode (OSError: /data/b.jpg is torn)"})
    sink.record("skipped", {"file": "/data/c.jpg", "reason": "file not found"})
    sink.record("checkpoint", {"step": 13, "path": "x.pt", "best": True, "seconds": 0.7})
    sink.record("val", {"step": 13, "metric": "PCK@0.2", "value": 61.5, "auc": 42.25, "per_joint": {}})
    sink.record("summary", {"steps": 13})


def test_metrics_after_events(tmp_path, single_process):
    sink = make_sink(tmp_path, "adversarial.objective=cgan", run="myrun")
    try:
        feed(sink)
        m = scrape(sink.port)
    finally:
        sink.close()
    labels = {"job": "myrun", "node": socket.gethostname(), "rank": "0", "objective": "cgan", "run": "myrun"}
    assert value(m, "satpose_images_total", **labels) == 12
    assert value(m, "satpose_steps_total") == 3
    assert value(m, "satpose_step") == 13
    assert value(m, "satpose_step_seconds", "satpose_step_seconds_count") == 3
    assert value(m, "satpose_step_seconds", "satpose_step_seconds_sum") == pytest.approx(2.32)
    assert value(m, "satpose_step_seconds", "satpose_step_seconds_bucket", le="0.25") == 1
    assert value(m, "satpose_data_wait_seconds", "satpose_data_wait_seconds_bucket", le="0.05") == 2
    assert value(m, "satpose_data_wait_seconds", "satpose_data_wait_seconds_sum") == pytest.approx(0.451)
    for term, expected in (("mse", 1.0), ("adversarial", 0.5), ("total", 1.25)):
        assert value(m, "satpose_generator_loss", term=term) == expected
    for term, expected in (("real", 0.375), ("fake", 0.125), ("total", 0.75)):
        assert value(m, "satpose_discriminator_loss", term=term) == expected
    assert value(m, "satpose_k_t") == 0.0625 and value(m, "satpose_convergence") == 0.4375
    assert value(m, "satpose_d_fake_ratio") == 0.25
    assert value(m, "satpose_learning_rate", model="generator") == 2.5e-4
    assert value(m, "satpose_learning_rate", model="discriminator") == 8e-5
    assert value(m, "satpose_grad_norm", model="generator") == 3.5
    assert value(m, "satpose_grad_norm", model="discriminator") == 1.5
    assert value(m, "satpose_skipped_samples_total", reason="cannot decode") == 2
    assert value(m, "satpose_skipped_samples_total", reason="file not found") == 1
    assert value(m, "satpose_checkpoint_write_seconds", "satpose_checkpoint_write_seconds_sum") == 0.7
    assert value(m, "satpose_validation_score", metric="PCK@0.2") == 61.5
    assert value(m, "satpose_validation_auc", metric="PCK@0.2") == 42.25
    info = m["satpose_build_info"][0][1]
    assert info["torch"] == torch.__version__ and re.fullmatch(r"[0-9a-f]{40}|unknown", info["git_commit"])
    assert info["version"] and info["python"]
    # every series carries the run's labels; device memory is absent on CPU, everything else is there
    assert all(labels.items() <= lab.items() for samples in m.values() for _, lab, _ in samples)
    assert set(m) == set(METRICS) - {"satpose_device_memory_allocated_bytes", "satpose_device_memory_peak_bytes"}


def test_malformed_events_never_raise(tmp_path, single_process):
    """The exporter never kills training: missing, None or non-numeric fields are left out."""
    sink = make_sink(tmp_path)
    try:
        sink.record("start", {})
        sink.step(1, {})
        sink.record("train", {"loss_g": None, "k": "x", "lr_g": True})
        sink.record("val", {"metric": None})
        sink.record("checkpoint", {})
        sink.record("skipped", {})
        sink.record("no-such-event", {"a": 1})
        m = scrape(sink.port)
    finally:
        sink.close()
    assert "satpose_generator_loss" not in m and "satpose_k_t" not in m
    assert value(m, "satpose_skipped_samples_total", reason="unknown") == 1


def test_reason_label_drops_file_names():
    assert reason_label("cannot decode (UnidentifiedImageError: cannot identify image file '/x/y.jpg')") \
        == "cannot decode"
    assert reason_label("empty file (0 bytes)") == "empty file"
    assert reason_label(None) == "unknown" == reason_label("")


def test_discovery_file_and_shared_copy(tmp_path, single_process, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    sd_dir = tmp_path / "sd"
    sink = make_sink(tmp_path, f"telemetry.sd_dir={sd_dir}", run="exp 1")
    try:
        groups = json.loads((tmp_path / "exp 1" / telemetry.SD_FILE).read_text())
        copies = list(sd_dir.glob("*.json"))
        assert [p.name for p in copies] == ["satpose-4242-exp_1.json"]
        assert json.loads(copies[0].read_text()) == groups
    finally:
        sink.close()
    assert groups == [{"targets": [f"127.0.0.1:{sink.port}"],
                       "labels": {"job": "4242", "node": socket.gethostname(), "rank": "0", "objective": "sat",
                                  "run": "exp 1"}}]
    assert not copies[0].exists(), "the shared copy must go when the run ends"
    assert (tmp_path / "exp 1" / telemetry.SD_FILE).exists()


def test_other_ranks_write_no_discovery_file(tmp_path, single_process):
    sink = make_sink(tmp_path, rank=1)
    sink.close()
    assert not (tmp_path / "run" / telemetry.SD_FILE).exists()


def test_port_zero_gives_each_exporter_a_free_port(tmp_path, single_process):
    a, b = make_sink(tmp_path, run="a"), make_sink(tmp_path, run="b")
    try:
        assert a.port != b.port and a.port > 0 and b.port > 0
        assert value(scrape(a.port), "satpose_steps_total", run="a") == 0
        assert value(scrape(b.port), "satpose_steps_total", run="b") == 0
    finally:
        a.close()
        b.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_base_port_plus_local_rank(tmp_path, single_process, monkeypatch):
    port = free_port()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    sink = make_sink(tmp_path, f"telemetry.port={port - 1}", rank=3)
    try:
        assert sink.port == port
        assert value(scrape(port), "satpose_steps_total", rank="3") == 0
    finally:
        sink.close()


def test_port_in_use_is_one_error_naming_port_and_key(tmp_path, single_process):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError) as err:
            make_sink(tmp_path, f"telemetry.port={port}")
        assert f"port {port}" in str(err.value) and "telemetry.port" in str(err.value)
        # the same through the CLI: the sink is built before any data or model, so this fails fast
        res = subprocess.run([sys.executable, "-m", "harness", "train", "--run-dir", str(tmp_path / "cli"),
                              "data.synthetic_train_size=8", "telemetry.enabled=true", f"telemetry.port={port}"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: telemetry.port:") and f"port {port}" in lines[0], lines


def test_unusable_bind_address_is_a_user_error(tmp_path, single_process):
    with pytest.raises(UserError, match="telemetry.bind"):
        make_sink(tmp_path, "telemetry.bind=198.51.100.7")  # TEST-NET-2: no interface has it


def test_binding_beyond_loopback_warns(tmp_path, single_process, monkeypatch, capsys):
    """The classification is checked directly; the warning by pretending 127.0.0.1 were not loopback (the
    test opens no port beyond loopback)."""
    assert telemetry.is_loopback("127.0.0.1") and telemetry.is_loopback("::1") and telemetry.is_loopback("localhost")
    assert not telemetry.is_loopback("0.0.0.0") and not telemetry.is_loopback("10.1.2.3")
    assert telemetry.target_host("0.0.0.0") == socket.gethostname() == telemetry.target_host("::")
    assert telemetry.target_host("::1") == "[::1]" and telemetry.target_host("10.1.2.3") == "10.1.2.3"
    make_sink(tmp_path).close()
    assert "warning" not in capsys.readouterr().err
    monkeypatch.setattr(telemetry, "is_loopback", lambda bind: False)
    make_sink(tmp_path).close()
    err = capsys.readouterr().err
    assert err.startswith("warning: telemetry.bind=127.0.0.1") and "beyond loopback" in err


def test_scrapes_answered_while_a_checkpoint_is_written(tmp_path, single_process):
    """The exporter thread answers while the main thread pickles and fsyncs a checkpoint (as during a
    validation checkpoint or a preemption's)."""
    sink = make_sink(tmp_path)
    state = {f"w{i}": torch.randn(256, 256) for i in range(400)}  # 100 MB in 400 tensors
    latencies, failures, stop = [], [], threading.Event()

    def scraper():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                scrape(sink.port, timeout=2.0)
                latencies.append((t0, time.monotonic() - t0))
            except OSError as exc:
                failures.append(repr(exc))
            time.sleep(0.02)

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    try:
        t_save = time.monotonic()
        for _ in range(2):
            ckpt.save_atomic(state, tmp_path / "big.pt")
        t_done = time.monotonic()
    finally:
        stop.set()
        thread.join(10)
        sink.close()
    during = [lat for t0, lat in latencies if t_save <= t0 < t_done]
    assert not failures, failures
    assert len(during) >= 3, f"only {len(during)} scrapes during {t_done - t_save:.2f} s of checkpoint writing"
    assert max(during) < 1.0, f"slowest scrape during the checkpoint: {max(during):.2f} s"


def test_close_waits_for_one_more_scrape_only_when_scraped(tmp_path, single_process):
    never = make_sink(tmp_path, "telemetry.linger_s=20", run="never")
    t0 = time.monotonic()
    never.close()
    assert time.monotonic() - t0 < 3, "an exporter nobody scrapes must not delay the end of the run"

    sink = make_sink(tmp_path, "telemetry.linger_s=20", run="scraped")
    scrape(sink.port)
    sink.step(1, {"images_rank": 7, "step_s": 0.1, "data_s": 0.0})  # the final values, after the last scrape
    seen: list[float] = []

    def late_scrape():
        time.sleep(0.5)
        seen.append(value(scrape(sink.port), "satpose_images_total"))

    thread = threading.Thread(target=late_scrape)
    t0 = time.monotonic()
    thread.start()
    sink.close()
    waited = time.monotonic() - t0
    thread.join(5)
    assert seen == [7] and 0.5 <= waited < 5
    with pytest.raises(OSError):
        scrape(sink.port, timeout=2)


def exported_names() -> set[str]:
    """Names a PromQL query can use: every metric, with its histogram series."""
    return set(METRICS) | {f"{name}_{suffix}" for name in METRICS for suffix in ("bucket", "count", "sum")}


def test_dashboard_queries_only_exported_metrics():
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    queried = {name for e in exprs for name in re.findall(r"\bsatpose_[a-z0-9_]+", e)}
    assert queried - exported_names() == set()
    titles = " ".join(p["title"].lower() for p in board["panels"])
    for topic in ("throughput", "loss", "k_t", "data wait", "memory"):
        assert topic in titles, f"no {topic} panel"
    templated = {v["name"] for v in board["templating"]["list"]}
    assert {"job"} <= templated


def test_docs_list_every_metric():
    doc = (REPO / "docs" / "telemetry.md").read_text()
    listed = set(re.findall(r"^\| `(satpose_[a-z0-9_]+)`", doc, flags=re.M))
    assert listed == set(METRICS)


@pytest.mark.slow
def test_scrapes_answered_through_a_preemption(tmp_path):
    """SIGUSR1 during training: the run checkpoints and exits 85, every scrape until the exporter closes is
    answered, and the linger serves one scrape after the preemption checkpoint with its final step."""
    run_dir = tmp_path / "run"
    tiny = ["data.name=synthetic", "data.input_size=64", "data.heatmap_size=16", "data.synthetic_train_size=24",
            "data.synthetic_val_size=8", "data.num_workers=0", "model.stacks=2", "model.features=16",
            "discriminator.features=16", "train.batch_size=4", "train.log_every=1", "train.threads=1"]
    proc = subprocess.Popen([sys.executable, "-m", "harness", "train", "--run-dir", str(run_dir), *tiny,
                             "train.max_steps=100000", "train.val_every=100000", "telemetry.enabled=true",
                             "telemetry.linger_s=30"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")})
    answered: list[tuple[float, float]] = []  # (time, satpose_step)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / telemetry.SD_FILE).exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.1)
        port = int(json.loads((run_dir / telemetry.SD_FILE).read_text())[0]["targets"][0].rsplit(":", 1)[1])
        t_signal = None
        while True:
            try:
                m = scrape(port, timeout=5)
            except OSError:
                break  # the exporter closed (or failed: then the step checks below fail)
            step = value(m, "satpose_step") if "satpose_step" in m else 0.0
            answered.append((time.monotonic(), step))
            if t_signal is None and step >= 3:
                proc.send_signal(signal.SIGUSR1)
                t_signal = time.monotonic()
            assert time.monotonic() < deadline, "no preemption within 300 s"
            time.sleep(0.05)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    output = proc.stdout.read()
    assert rc == 85, output[-3000:]
    saved = max(int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*.pt"))
    after = [step for t, step in answered if t > t_signal]
    assert after and after[-1] == saved, (after, saved)
