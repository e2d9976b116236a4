#!/usr/bin/env bash
# CONQORD on the toy world with seeds and ablations -> docs/results.md. Arguments go to
# experiments/toy_ablation.py (--quick, --seeds, --ppo_steps, --variants, --jobs, --out, --report).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. scripts/setup_env.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu
python -m experiments.toy_ablation "$@"
