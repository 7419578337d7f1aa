"""`python -m harness bench`: every suite at tiny sizes on CPU, the report schema and sane values, `bench
compare`'s exit codes, scripts/gpu_check.sh's dry mode, and the FLOPs of the SAT 4-stack G + 1-stack D step
against an independent count. Speed itself is measured by the suites, never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from data_pipelines.errors import UserError
from harness.bench import SCHEMA, peaks, variants
from harness.bench.suite_train import step_flops
from harness.build import build_discriminator, build_generator
from harness.cli import main
from harness.config import load_config

REPO = Path(__file__).resolve().parents[1]
TINY = ["train.device=cpu", "data.name=synthetic", "data.synthetic_train_size=16", "data.synthetic_val_size=4",
        "data.input_size=64", "data.heatmap_size=16", "model.stacks=1", "model.features=16",
        "discriminator.features=16", "train.batch_size=4", "data.num_workers=0", "train.threads=1"]
RUN = ["--steps", "2", "--warmup", "1", "--repeats", "2", "--formats", "json", "md", "png"]
MACHINE_KEYS = {"cpu", "cores", "gpu", "driver", "cuda", "cudnn", "torch", "triton", "dali", "git_commit"}


def _report(out: Path, suite: str) -> dict:
    files = sorted(out.glob(f"*_{suite}_*"))
    assert {f.suffix for f in files} == {".json", ".md", ".png"}, files
    report = json.loads(next(f for f in files if f.suffix == ".json").read_text())
    assert report["schema"] == SCHEMA and report["suite"] == suite
    assert MACHINE_KEYS <= set(report["machine"]), set(report["machine"])
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"] == torch.__version__
    for row in report["rows"]:
        assert {"key", "value"} <= set(row)
    assert len({r["key"] for r in report["rows"]}) == len(report["rows"])
    return report


def _ordered(p: dict) -> bool:
    return 0 < p["p50"] <= p["p90"] <= p["p99"]


def test_bench_train(tmp_path):
    assert main(["bench", "train", *TINY, "--variants", "reference", "bf16", *RUN, "--out", str(tmp_path)]) == 0
    report = _report(tmp_path, "train")
    assert report["config"]["model"]["features"] == 16 and report["settings"]["input"] == "loader"
    rows = {r["key"]: r for r in report["rows"]}
    assert set(rows) == {"reference", "bf16"} and rows["bf16"]["precision"] == "bf16"
    assert rows["reference"]["ratio"] == 1.0
    for r in rows.values():
        s = r["images_per_s"]
        assert 0 < s["min"] <= s["median"] == r["value"] <= s["max"]
        assert r["compute_images_per_s"]["median"] >= r["value"]
        assert 0 <= r["data_wait_share"] < 1
        assert _ordered(r["latency_ms"]) and len(r["latencies_ms"]) == 2 * 2
        assert r["flops_per_image"] > 0 and r["warmup_s"] > 0
        assert 0 < r["mfu"] <= 1 and r["peak"]["tflops"] > 0
        assert r["achieved_tflops_per_device"] == pytest.approx(r["flops_per_image"] * r["value"] / 1e12)
    assert rows["reference"]["flops_per_image"] == rows["bf16"]["flops_per_image"]
    for r in rows.values():  # the roofline: bytes per image, no bandwidth share on a CPU (unknown)
        assert r["bytes_per_image"] == pytest.approx(r["bytes_per_image_marginal"] + r["bytes_fixed_per_call"] / 4)
        assert r["bytes_per_image"] == pytest.approx(sum(r["bytes_by_kind"].values()))
        assert r["achieved_tbs_per_device"] == pytest.approx(r["bytes_per_image"] * r["value"] / 1e12)
        assert r["bandwidth_share"] is None and r["bandwidth"]["source"].startswith("CPU: unknown")
        shares = {k: v["share"] for k, v in r["time_by_kind"]["by_kind"].items()}
        assert sum(shares.values()) == pytest.approx(1.0) and shares["convolution"] > 0
    # bf16 activations: fewer bytes than fp32 per image (the casts of the weights are fixed per step)
    assert rows["bf16"]["bytes_per_image_marginal"] < rows["reference"]["bytes_per_image_marginal"]
    assert "Time by op kind" in (tmp_path / next(tmp_path.glob("*_train_*.md")).name).read_text()


def test_bench_train_resident_and_unavailable_variant(tmp_path, monkeypatch):
    monkeypatch.setattr(variants, "OPTIONAL_KEYS", (*variants.OPTIONAL_KEYS, "train.warp_drive"))
    monkeypatch.setitem(variants.VARIANTS, "warp", ("train.warp_drive=true",))
    args = ["bench", "train", *TINY, "--input", "resident", "--variants", "default", "warp", *RUN]
    assert main([*args, "--out", str(tmp_path)]) == 0
    rows = {r["key"]: r for r in _report(tmp_path, "train")["rows"]}
    assert rows["default"]["data_wait_share"] < 0.5 and rows["default"]["value"] > 0
    assert rows["warp"]["value"] is None and "variant unavailable: train.warp_drive" in rows["warp"]["note"]


def test_bench_compile_cold_and_warm_in_fresh_processes(tmp_path):
    """One variant (regional, aot_eager: no C++ compile), one repeat: a cold and a warm row, each from its own
    process, with the compile time, Dynamo's graph count and the steady step."""
    assert main(["bench", "compile", *TINY, "adversarial.objective=none", "--variants",
                 "regional:train.compile=true,train.compile_backend=aot_eager", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    report = _report(tmp_path, "compile")
    rows = {r["key"]: r for r in report["rows"]}
    assert set(rows) == {"regional/cold", "regional/warm"}
    for r in rows.values():
        assert not r["errors"] and r["scope"] == "regional" and r["backend"] == "aot_eager"
        assert r["value"] == r["compile_s"]["median"] > 0 and r["graphs"] == 3  # G: stem, hourglass, features
        assert r["steady_step_ms"]["median"] > 0 and r["higher_is_better"] is False


def test_variants_resolve_and_refuse_unknown_keys():
    v = {x.name: x for x in variants.resolve(["reference", "fast", "mine:train.precision=bf16"], "quickstart",
                                             None, [])}
    assert v["fast"].cfg.train.precision == "bf16" and v["fast"].cfg.train.compile and not v["fast"].unavailable
    assert v["reference"].cfg.train.precision == "fp32" and not v["reference"].cfg.train.channels_last
    assert v["mine"].overrides == ["train.precision=bf16"]
    with pytest.raises(UserError, match="unknown key"):
        variants.resolve(["typo:train.presicion=bf16"], None, None, [])
    with pytest.raises(UserError, match="unknown variant"):
        variants.resolve(["fastest"], None, None, [])


def test_bench_infer(tmp_path):
    assert main(["bench", "infer", *TINY, "--batch-sizes", "1", "2", *RUN, "--out", str(tmp_path),
                 "--variants", "unfolded", "folded_1pass", "--peak-gbps", "50"]) == 0
    rows = _report(tmp_path, "infer")["rows"]
    assert {(r["variant"], r["batch_size"], r["flip"]) for r in rows} == \
        {(v, b, f) for v in ("unfolded", "folded_1pass") for b in (1, 2) for f in (False, True)}
    for r in rows:
        assert r["value"] > 0 and _ordered(r["latency_ms"])
        assert (r["ratio"] == 1.0) == (r["variant"] == "unfolded")
        assert r["flops_per_image"] > 0 and 0 < r["mfu"] <= 1
        assert r["bandwidth_share"] == pytest.approx(r["achieved_tbs_per_device"] / 0.05)
        assert ("time_by_kind" in r) == (r["batch_size"] == 2 and r["flip"])
    by = {(r["variant"], r["batch_size"], r["flip"]): r for r in rows}
    for v in ("unfolded", "folded_1pass"):  # the flip test doubles the work
        assert by[v, 2, True]["flops_per_image"] == 2 * by[v, 2, False]["flops_per_image"]
    # folding removes BatchNorm traffic (the residuals' first BatchNorms stay)
    folded, unfolded = by["folded_1pass", 2, False]["bytes_by_kind"], by["unfolded", 2, False]["bytes_by_kind"]
    assert 0 < folded["batchnorm"] < unfolded["batchnorm"]
    assert by["folded_1pass", 2, False]["bytes_per_image"] < by["unfolded", 2, False]["bytes_per_image"]


def test_bench_data_on_real_lsp(tmp_path, lsp_root):
    args = ["bench", "data", "--preset", "lsp-sat-4s", f"data.root={lsp_root}", "--samples", "48",
            "--workers", "0", "1", "--repeats", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    rows = {r["key"]: r for r in _report(tmp_path, "data")["rows"]}
    assert {"decode", "decode+warp", "loader w0", "loader w1", "prepare_batch (cpu)"} <= set(rows)
    assert rows["decode+warp"]["of_ceiling"] == pytest.approx(1.0)
    for r in rows.values():
        assert r["value"] > 0 and r["per_core"] > 0


def test_rel_error_floor_judges_near_zero_tensors_on_the_whole_scale():
    """gpucheck's inductor check: a bias gradient that is zero in exact arithmetic (1e-9 of rounding noise)
    differs by 200% between two runs on its own scale, 4e-8 on the whole gradient's; real errors still count."""
    from harness.bench.suite_kernels import rel_error

    big, tiny = torch.ones(100), torch.full((4,), 1e-9)
    assert rel_error([big, tiny], [big, -tiny]) == pytest.approx(2.0)
    assert rel_error([big, tiny], [big, -tiny], floor=1e-2 * 10.0) == pytest.approx(4e-8)  # 4e-9 / 0.1
    assert rel_error([big * 1.1, tiny], [big, tiny], floor=0.1) == pytest.approx(0.1)
    assert rel_error([torch.tensor([float("nan")])], [torch.ones(1)], floor=1.0) == float("inf")


def test_loader_throughput_refuses_too_few_batches_to_time_its_workers(lsp_root):
    """320 images at batch 64 are 5 batches: 16 workers prefetch them all before the clock starts (the H100's
    `bench data` divided by zero CPU time, 2026-11-27). Refused up front, naming the sizes."""
    from data_pipelines.lsp import load_lsp
    from data_pipelines.throughput import measure

    records = load_lsp(lsp_root)[:40]
    with pytest.raises(UserError, match=r"40 samples at batch 8 are 5 batches, too few to time 4 workers.*9"):
        measure(records, workers=(0, 4), rounds=1, batch_size=8)


def test_bench_kernels_checks_every_case_under_the_interpreter(tmp_path):
    from models.kernels.cases import CASES
    from models.kernels.runtime import HAVE_TRITON

    if not HAVE_TRITON:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("triton is not installed (pip install '.[dev]')")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-m", "harness", "bench", "kernels", "--kernel-batch", "2",
                           "--repeats", "1", "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = _report(tmp_path, "kernels")
    rows = {r["key"]: r for r in report["rows"]}
    assert set(rows) == {f"{c.name}/{b}" for c in CASES for b in ("torch", "triton")}
    for c in CASES:
        ref, fused = rows[f"{c.name}/torch"], rows[f"{c.name}/triton"]
        assert ref["timed"] and ref["value"] > 0 and ref["gbs"] > 0 and ref["x_floor"] > 0
        assert fused["correct"] is True and fused["timed"] is False and fused["value"] is None
    assert any("NOT timed" in n for n in report["notes"])


def test_profile_step_times_each_variant_and_profiles_the_first(capsys):
    from harness.bench import profile_step
    assert profile_step.main(["--preset", "lsp-sat-4s", *TINY, "--variants", "bf16", "reference", "--steps", "2",
                              "--warmup", "1", "--rows", "5"]) == 0
    out = capsys.readouterr().out
    for name in ("bf16", "reference"):
        assert f"variant {name} (" in out and "img/s, batch 4, on cpu" in out, out
    assert "profile of variant bf16, 2 steps" in out and "aten::convolution_backward" in out, out


@pytest.mark.slow
def test_bench_scaling_two_ranks(tmp_path):
    args = ["bench", "scaling", *[t for t in TINY if not t.startswith("train.threads")], "--world-sizes", "1", "2",
            "--steps", "2", "--warmup", "1", "--repeats", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    rows = _report(tmp_path, "scaling")["rows"]
    assert [r["world_size"] for r in rows] == [1, 2] and [r["global_batch"] for r in rows] == [4, 8]
    assert rows[0]["efficiency"] == 1.0 and all(r["value"] > 0 and r["efficiency"] > 0 for r in rows)


def _fake(path: Path, values: dict[str, float], higher: bool = True) -> str:
    rows = [{"key": k, "value": v, "metric": "img/s", "higher_is_better": higher} for k, v in values.items()]
    path.write_text(json.dumps({"schema": SCHEMA, "suite": "train", "rows": rows}))
    return str(path)


def test_bench_compare_exit_codes(tmp_path, capsys):
    a = _fake(tmp_path / "a.json", {"reference": 100.0, "fast": 400.0})
    assert main(["bench", "compare", a, _fake(tmp_path / "same.json", {"reference": 97.0, "fast": 410.0})]) == 0
    slower = _fake(tmp_path / "slow.json", {"reference": 100.0, "fast": 360.0})
    assert main(["bench", "compare", a, slower, "--threshold", "0.05"]) == 1
    assert "fast" in capsys.readouterr().out.splitlines()[-1]
    assert main(["bench", "compare", a, slower, "--threshold", "0.15"]) == 0
    ms_a = _fake(tmp_path / "ms_a.json", {"decode/triton": 1.0}, higher=False)
    ms_b = _fake(tmp_path / "ms_b.json", {"decode/triton": 1.2}, higher=False)
    assert main(["bench", "compare", ms_a, ms_b]) == 1  # time went up: a regression
    (tmp_path / "bad.json").write_text("{")
    assert main(["bench", "compare", a, str(tmp_path / "bad.json")]) == 2
    assert "not a readable bench report" in capsys.readouterr().err


def test_peak_table():
    assert peaks.gpu_entry("NVIDIA H100 80GB HBM3")["bf16"] == 989.4
    assert peaks.gpu_entry("NVIDIA H100 PCIe")["bf16"] == 756.0
    assert peaks.gpu_entry("NVIDIA H200")["tbs"] == 4.8
    assert peaks.gpu_entry("NVIDIA A100-SXM4-40GB")["tbs"] == 1.555
    assert peaks.gpu_entry("Tesla T4") is None
    assert peaks.compute_dtype("fp32", torch.device("cpu")) == "fp32"
    cpu = peaks.peak(torch.device("cpu"), "fp32")
    assert cpu["tflops"] > 0 and cpu["tbs"] > 0 and "measured" in cpu["source"]
    assert peaks.peak(torch.device("cpu"), "fp32", override_tflops=2.0)["tflops"] == 2.0


def _conv_flops(model: nn.Module, *inputs: torch.Tensor) -> tuple[int, int]:
    """(forward FLOPs of every Conv2d, of the first one run) from output shapes recorded by forward hooks:
    2 * N * C_out * H_out * W_out * C_in / groups * k_h * k_w per convolution."""
    counts: list[int] = []

    def hook(m: nn.Conv2d, _inp, out):
        n, c_out, h, w = out.shape
        counts.append(2 * n * c_out * h * w * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(*inputs)
    for h in handles:
        h.remove()
    return sum(counts), counts[0]


def test_flops_of_the_sat_step_match_an_independent_count():
    """SAT, 4-stack G + 1-stack conditional D, 256x256 crops, 14 joints. A convolution's backward costs its
    forward once for the input gradient and once for the weight gradient; autograd skips an input gradient
    nobody needs (the image, the detached real heatmaps D reads). One D pass on the fake serves both players: its
    input is a leaf that requires grad, G's adversarial gradient is taken first (inputs only), then D's loss
    backward (weights, and inputs down to the leaf again). So, with F the forward FLOPs and F1 those of the first
    conv:
        G:                      forward F_G + weights F_G + inputs (F_G - F_G1)       = 3 F_G - F_G1
        D on real (D trains):   forward F_D + weights F_D + inputs (F_D - F_D1)       = 3 F_D - F_D1
        D on the fake leaf:     forward F_D + inputs F_D (G's gradient) + weights F_D + inputs F_D = 4 F_D
        step = 3 F_G - F_G1 + 7 F_D - F_D1   (two passes on the fake, before: 8 F_D - 2 F_D1)"""
    cfg = load_config("lsp-sat-4s", overrides=["data.root=/nonexistent"])
    batch, joints = 2, 14
    with torch.device("meta"):
        g, d = build_generator(cfg, joints), build_discriminator(cfg, joints)
        f_g, f_g1 = _conv_flops(g, torch.empty(batch, 3, 256, 256))
        f_d, f_d1 = _conv_flops(d, torch.empty(batch, joints, 64, 64), torch.empty(batch, 3, 256, 256))
    expected = 3 * f_g - f_g1 + 7 * f_d - f_d1
    counted = step_flops(cfg, joints, (8, 3), batch)
    assert counted == expected, (counted, expected)
    assert 150e9 < counted / batch < 180e9  # the order of magnitude issue 8 plans with (about 165 GFLOP/img)


@pytest.mark.slow
def test_gpu_check_dry_mode(tmp_path):
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=1500, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    for name in ("dependencies", "step sat bf16", "step cgan bf16", "step none bf16", "compile (aot_eager)",
                 "checkpoint round trip", "deterministic", "gloo all_reduce", "batchnorm CrossRankBatchNorm2d",
                 "bench train", "bench infer", "bench kernels", "kernel decode", "e2e train", "e2e eval",
                 "bench train_resident", "bench train_loader", "compiled step", "bench infer_compiled",
                 # issue 23's groups: DALI (CPU mode), DeepSpeed (gloo, bf16), Ray (CPU trials), DALI-fed step
                 "dali decode+warp LSP JPEGs", "dali decode+warp 320x180 JPEGs", "dali parity on cpu",
                 "dali bad files skipped on cpu", "dali bad file raised on cpu", "deepspeed zero0 bf16",
                 "deepspeed zero1 bf16", "ray sweep: 4/4 trials (gpus_per_trial=0) on cpu", "bench train_dali",
                 "loader-fed vs resident",
                 # issue 22's goals: the compile's cold/warm time, the step at two batch sizes, then GOAL lines
                 "bench compile_step", "bench train_b2"):
        assert f"PASS {name}" in out or f"PASS [rank 0] {name}" in out, (name, out[-4000:])
    assert "SKIP step sat fp16" in out and "SKIP deepspeed zero0 fp16" in out and " s, 0 failed;" in out
    for goal in ("cold compile of the step", "warm compile of the step", "SAT 4s+1s step, batch >= 128",
                 "SAT step at the paper's batch 6"):
        assert f"GOAL {goal}" in out and f"GOAL {goal}: not measured" not in out, (goal, out[-4000:])
    assert "  bf16_compiled_graphs/bs4/flip: " in out and " GB/img, " in out  # the roofline lines
    suites = {p.name.split("_")[1] for p in tmp_path.glob("*.json")}  # + data where .gpu/lsp holds real images
    assert suites - {"data"} == {"train", "infer", "kernels", "dali", "compile"}, suites


# A DataLoader that pins memory (on CUDA) starts a thread that calls torch.set_num_threads(1); torch's thread
# count is read lazily, once per thread, from the process-wide value that call overwrites. On the GPU the main
# thread had done no CPU work yet when the loader started; the probe stands in for the pinning thread at that
# point (the run's data just built, before any model: on CPU, building one reads the thread count).
_PINNING_PROBE = """
import sys, threading, torch
import harness.data as data
from harness.cli import main
orig = data.RunData.__init__
def init(self, *a, **k):
    orig(self, *a, **k)
    t = threading.Thread(target=torch.set_num_threads, args=(1,))
    t.start(); t.join()
data.RunData.__init__ = init
sys.exit(main(sys.argv[1:]))
"""


def test_bench_train_keeps_its_threads_when_a_loader_thread_sets_one(tmp_path):
    """The H100's `bench train` ran with 1 torch thread (2026-11-27): the loader's pin-memory thread set it
    before the main thread first read its count. fix_threads reads and sets it up front."""
    tiny = [t for t in TINY if not t.startswith("train.threads")]
    args = ["bench", "train", *tiny, "--steps", "1", "--warmup", "0", "--repeats", "1", "--formats", "json",
            "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _PINNING_PROBE, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(next(tmp_path.glob("*_train_*.json")).read_text())
    assert report["machine"]["torch_threads"] == 2
