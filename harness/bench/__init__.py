"""`python -m harness bench`: throughput and efficiency reports (issue 8).

    timing.py    step clocks (CUDA events on GPU), percentiles, variants interleaved over repeats
    variants.py  named config variants (reference, fast, bf16, ...) resolved with harness.config overrides
    peaks.py     dense peak TFLOP/s and bandwidth per device and dtype (sources inline); measured on CPU
    machine.py   what the report says about the machine: CPU, GPU, driver, versions, git commit
    suite_*.py   the suites: train, infer, data, kernels, scaling
    report.py    JSON (versioned schema), Markdown, the terminal table, the README index, `bench compare`
    plots.py     the PNG of a report
    gpucheck.py  the pass/fail checks of scripts/gpu_check.sh

Conventions (nanoGPT's bench.py, NVIDIA DLE's benchmark modes, torchtitan's MFU): warm-up steps (and the
compile they trigger) are timed separately and never enter throughput; variants run interleaved over repeats
in one process, so a machine shared with other work slows every variant alike; a row's value is the median
over repeats, with its spread and its ratio to the first variant.
"""

SCHEMA = "satpose.bench/1"
