#!/usr/bin/env bash
# Install what the tests need, then run them (offline). Extra arguments go to pytest,
# e.g. `bash scripts/run_tests.sh -m "not slow"` for the quick unit tests only.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. scripts/setup_env.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false
python -m pytest "$@"
