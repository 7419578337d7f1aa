"""`bench compile`: how long torch.compile of the training step takes, cold and warm, per variant.

Each measurement is a fresh Python process (`python -m harness.bench.suite_compile CONFIG_JSON`), so nothing
compiled in memory carries over: `cold` gets an empty inductor cache folder (TORCHINDUCTOR_CACHE_DIR, where
inductor's FX-graph and AOTAutograd caches and the generated kernels live), `warm` runs again on the folder the
cold run filled, as a restarted or second job on a cluster with a shared cache would. The process builds the
variant's models, takes one resident batch and runs steps of the real training step (`bench train`'s
VariantRun): compile time = the first step's time - the median of the next ones (the first step of the eager
reference is not faster than the rest by more than a few allocations). Also reported: the graphs Dynamo compiled
(its `unique_graphs` counter) and the steady step time, so a compile that pays for itself can be read off.
Variants and repeats are interleaved (cold_a, warm_a, cold_b, warm_b, ...).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data_pipelines.errors import UserError
from harness.bench.timing import spread
from harness.bench.variants import Variant

STEADY_STEPS = 3
CHILD_TIMEOUT_S = 1800


def _probe(cfg_dict: dict) -> dict:
    """In the child: build, step once (compile), step STEADY_STEPS more; -> times and Dynamo's graph count."""
    import torch
    import torch._dynamo.utils

    from harness.bench.suite_train import VariantRun, host_batches
    from harness.bench.timing import sync
    from harness.config import config_from_dict
    from harness.data import RunData
    from harness.distributed import init_runtime

    cfg = config_from_dict(cfg_dict, "bench compile")
    rt = init_runtime(cfg.train.device, cfg.distributed.backend)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    micro_batch = cfg.train.batch_size // cfg.train.grad_accum
    data = RunData(cfg, rt.rank, rt.world_size)
    host = next(host_batches(data, micro_batch))
    with tempfile.TemporaryDirectory(prefix="satpose-compile-") as tmp:
        run = VariantRun(Variant("probe", [], cfg), rt, data, micro_batch, tmp)
        run.resident = [data.to_device(host, rt.device, cfg.train.channels_last)] * cfg.train.grad_accum
        times = []
        for _ in range(1 + STEADY_STEPS):
            t0 = time.perf_counter()
            run.step([host] * cfg.train.grad_accum, 0.0)
            sync(rt.device)
            times.append(time.perf_counter() - t0)
        run.sinks.close()
    steady = sorted(times[1:])[len(times[1:]) // 2]
    return {"first_step_s": times[0], "steady_step_s": steady, "compile_s": max(times[0] - steady, 0.0),
            "graphs": int(torch._dynamo.utils.counters["stats"]["unique_graphs"]), "device": str(rt.device)}


def _child(cfg_dict: dict, cache_dir: str) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, "PYTHONUNBUFFERED": "1"}
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run([sys.executable, "-m", "harness.bench.suite_compile", json.dumps(cfg_dict)], env=env,
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {CHILD_TIMEOUT_S} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ['no output']}"}
    return json.loads(lines[-1])


def run(variants: list[Variant], repeats: int) -> dict:
    usable = [v for v in variants if v.cfg is not None]
    if not usable:
        raise UserError("no variant is available in this config")
    results: dict[str, dict[str, list[dict]]] = {v.name: {"cold": [], "warm": []} for v in usable}
    for _ in range(repeats):
        for v in usable:
            with tempfile.TemporaryDirectory(prefix="satpose-inductor-cache-") as cache:
                for kind in ("cold", "warm"):
                    results[v.name][kind].append(_child(v.cfg.to_dict(), cache))
    rows, device = [], "cpu"
    for v in usable:
        for kind in ("cold", "warm"):
            got = results[v.name][kind]
            errors = [r["error"] for r in got if "error" in r]
            ok = [r for r in got if "error" not in r]
            device = ok[0]["device"] if ok else device
            t = v.cfg.train
            row = {"key": f"{v.name}/{kind}", "variant": v.name, "cache": kind, "metric": "s",
                   "higher_is_better": False, "overrides": v.overrides,
                   "compile": t.compile, "scope": t.compile_scope if t.compile else "-",
                   "backend": t.compile_backend if t.compile else "-", "errors": errors,
                   "value": spread([r["compile_s"] for r in ok])["median"] if ok else None}
            if ok:
                row.update(compile_s=spread([r["compile_s"] for r in ok]),
                           steady_step_ms=spread([r["steady_step_s"] * 1e3 for r in ok]),
                           graphs=max(r["graphs"] for r in ok))
            rows.append(row)
    notes = ["compile s = first step - median of the next 3 steps, each measurement a fresh process; cold: empty "
             "TORCHINDUCTOR_CACHE_DIR, warm: the folder the cold run filled"]
    return {"rows": rows, "notes": notes, "runtime": {"device": device}, "config": usable[0].cfg.to_dict()}


if __name__ == "__main__":
    print(json.dumps(_probe(json.loads(sys.argv[1]))))
