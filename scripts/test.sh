#!/usr/bin/env bash
# The test command (README, .ci/run): set up .venv with the test extras, lint, run the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k metrics -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,deepspeed,tune,dali,tensorboard
.venv/bin/ruff check .
# Several test processes (torchrun workers, DataLoader workers) share 2 cores: sleeping OpenMP threads
# instead of spinning ones keep an oversubscribed box from collapsing to a crawl.
export OMP_WAIT_POLICY=PASSIVE
exec .venv/bin/python -m pytest "$@"
