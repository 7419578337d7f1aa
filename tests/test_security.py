"""Shared-cluster safety (docs/security.md): a checkpoint that would run code is refused and its code does not
run, no source calls a loader that could run code, and every listening socket of a 2-rank training run with
telemetry on is one the documentation names, on the port and address it names."""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from data_pipelines.errors import UserError
from harness import checkpoint as ckpt
from harness import telemetry
from harness.config import TelemetryConfig

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("harness", "models", "data_pipelines", "sweeps")
TINY = ["data.name=synthetic", "data.input_size=64", "data.heatmap_size=16", "data.synthetic_train_size=32",
        "data.synthetic_val_size=8", "data.num_workers=0", "model.stacks=2", "model.features=16",
        "discriminator.features=16", "train.batch_size=4", "train.log_every=1", "train.threads=1",
        "train.val_every=100"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# -- a checkpoint that would run code -------------------------------------------------------------------

class _Payload:
    """Unpickles as exec(code): arbitrary code, here one that creates the marker file."""

    def __init__(self, marker: Path):
        self.code = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('pwned')"

    def __reduce__(self):
        return exec, (self.code,)


@pytest.fixture(scope="module")
def malicious(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, marker): a complete checkpoint whose generator entry is the payload. Loading it with a full
    unpickler creates the marker (checked here, so the payload is known to be live), then the marker goes."""
    folder = tmp_path_factory.mktemp("malicious")
    marker, path = folder / "marker.txt", folder / "evil.pt"
    torch.save({"generator": _Payload(marker), "discriminator": {}, "optim_g": {}, "optim_d": {}, "step": 1,
                "epoch": 0, "config": {}}, path)
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"],
                   check=True, timeout=120, capture_output=True)
    assert marker.read_text() == "pwned", "the payload must be live for this test to mean anything"
    marker.unlink()
    return path, marker


def test_malicious_checkpoint_is_refused_by_load(malicious):
    path, marker = malicious
    with pytest.raises(UserError) as err:
        ckpt.load(path)
    message = str(err.value)
    assert "\n" not in message and f"checkpoint {path} is refused" in message and "GLOBAL exec" in message
    assert "weights_only=False" not in message  # torch's advice to load it anyway is not passed on
    assert not marker.exists()


@pytest.mark.parametrize("command", [
    ["eval", "--checkpoint", "{path}"],
    ["train", "--run-dir", "{run}", "--resume", "{path}", *TINY, "distributed.strategy=deepspeed"],
], ids=["eval", "train-resume-deepspeed"])
def test_malicious_checkpoint_is_one_error_line_from_the_cli(malicious, tmp_path, command):
    path, marker = malicious
    args = [a.format(path=path, run=tmp_path / "run") for a in command]
    res = subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO, env=ENV, capture_output=True,
                         text=True, timeout=600)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: checkpoint {path} is refused"), res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    if command[0] == "eval":  # nothing else prints on this path: the error is the only line
        assert res.stderr.strip() == errors[0]
    assert not marker.exists()


# -- no loader that could run code --------------------------------------------------------------------------

# Calls that unpickle (or otherwise execute) what they read. DeepSpeed's checkpoint loading is among them:
# its engine loads with torch.load(weights_only=False).
_UNSAFE_CALLS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cloudpickle.load", "cloudpickle.loads",
                 "dill.load", "dill.loads", "marshal.load", "marshal.loads", "joblib.load", "yaml.load",
                 "yaml.unsafe_load", "yaml.full_load", "shelve.open"}
_UNSAFE_METHODS = {"load_checkpoint", "load_universal_checkpoint", "load_module_state_dict",
                   "get_fp32_state_dict_from_zero_checkpoint", "load_state_dict_from_zero_checkpoint"}
_UNSAFE_MODULES = {"pickle", "cloudpickle", "dill", "marshal", "joblib", "shelve"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str):
    found = [k.value for k in call.keywords if k.arg == name]
    return found[0].value if found and isinstance(found[0], ast.Constant) else ("absent" if not found else "?")


def torch_load_calls(source: str) -> int:
    return sum(isinstance(n, ast.Call) and _dotted(n.func) == "torch.load" for n in ast.walk(ast.parse(source)))


def unsafe_loads(source: str) -> list[str]:
    """`line: call` for every call in `source` that could execute what it loads."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _UNSAFE_MODULES | {"torch"}:
            names = {a.name for a in node.names}
            if node.module.split(".")[0] in _UNSAFE_MODULES or "load" in names:
                bad.append(f"{node.lineno}: from {node.module} import {', '.join(sorted(names))}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in _UNSAFE_CALLS or name.rsplit(".", 1)[-1] in _UNSAFE_METHODS:
            bad.append(f"{node.lineno}: {name}")
        elif name == "torch.load" and _keyword(node, "weights_only") is not True:
            bad.append(f"{node.lineno}: torch.load without weights_only=True")
        elif name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") not in (False, "absent"):
            bad.append(f"{node.lineno}: {name} with allow_pickle")
    return bad


def test_the_scan_finds_unsafe_loads():
    assert unsafe_loads("torch.load(p, weights_only=True)\nnp.load(f, allow_pickle=False)\nyaml.safe_load(t)") == []
    found = unsafe_loads("torch.load(p)\ntorch.load(p, weights_only=False)\nengine.load_checkpoint(d)\n"
                         "np.load(f, allow_pickle=True)\nyaml.load(t)\nfrom pickle import loads\npickle.loads(b)")
    assert sorted(int(f.split(":")[0]) for f in found) == [1, 2, 3, 4, 5, 6, 7], found


def test_no_source_calls_a_loader_that_can_run_code():
    files = [p for d in SOURCES for p in sorted((REPO / d).rglob("*.py"))]
    assert any(p.name.startswith("deepspeed") for p in files)  # the DeepSpeed strategy is among them
    bad = [f"{p.relative_to(REPO)}:{hit}" for p in files for hit in unsafe_loads(p.read_text())]
    assert bad == [], "loaders that can run code from a file:\n" + "\n".join(bad)
    loads = [p.relative_to(REPO).as_posix() for p in files if torch_load_calls(p.read_text())]
    assert loads == ["harness/checkpoint.py"], "checkpoints are read in one place only"


# -- listening sockets --------------------------------------------------------------------------------------

def documented_listeners() -> dict[str, dict[str, str]]:
    """docs/security.md's table: {listener: {"port": cell, "bind": cell}}."""
    rows = {}
    for line in (REPO / "docs" / "security.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 5 and cells[1].startswith("`") and cells[1].endswith("`"):
            rows[cells[1].strip("`")] = {"port": cells[3], "bind": cells[4]}
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ephemeral(port: int) -> bool:
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return low <= port <= high


def listening(root: psutil.Process) -> set[tuple[str, int, str, int]]:
    """(role, pid, ip, port) of every listening TCP socket in the process tree under `root`."""
    found = set()
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for proc in procs:
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add(("agent" if proc.pid == root.pid else "worker", proc.pid, conn.laddr.ip,
                               conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.slow
def test_listening_sockets_of_a_training_run_are_documented(tmp_path):
    doc = documented_listeners()
    run_dir, master = tmp_path / "run", free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(master),
           "-m", "harness", "train", "--run-dir", str(run_dir), *TINY, "train.max_steps=40",
           "telemetry.enabled=true", "telemetry.linger_s=0"]
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    seen: set[tuple[str, int, str, int]] = set()
    try:
        root, deadline = psutil.Process(proc.pid), time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            seen |= listening(root)
            time.sleep(0.2)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        log.close()
    assert rc == 0, (tmp_path / "run.log").read_text()[-4000:]
    exporters = {int(t.rsplit(":", 1)[1]) for g in json.loads((run_dir / telemetry.SD_FILE).read_text())
                 for t in g["targets"]}
    host_addresses = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    assert master in {port for *_, port in seen} and exporters <= {port for *_, port in seen}, \
        f"the run ended before its listeners were seen: {sorted(seen)}"

    undocumented, gloo_per_worker = [], {}
    for role, pid, ip, port in sorted(seen):
        if port == master:
            row, ok = doc.get("rendezvous"), role == "agent"
            ok = ok and row is not None and "MASTER_PORT" in row["port"] and f"`{ip}`" in row["bind"]
        elif port in exporters:
            row, default = doc.get("prometheus"), TelemetryConfig().bind
            ok = role == "worker" and ip == default and row is not None and "`telemetry.port`" in row["port"] \
                and "ephemeral" in row["port"] and "`telemetry.bind`" in row["bind"] and f"`{default}`" in row["bind"]
        else:
            row = doc.get("gloo")
            gloo_per_worker[pid] = gloo_per_worker.get(pid, 0) + 1
            ok = role == "worker" and ephemeral(port) and ip in host_addresses and row is not None \
                and "ephemeral" in row["port"] and "host name" in row["bind"]
        if not ok:
            undocumented.append(f"{role} pid {pid} listens on {ip} port {port}")
    assert undocumented == [], "listening sockets docs/security.md does not document:\n" + "\n".join(undocumented)
    assert sorted(gloo_per_worker.values()) == [1, 1], f"one gloo listener per worker, got {gloo_per_worker}"
