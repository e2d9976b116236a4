#!/usr/bin/env bash
# The whole CONQORD pipeline on the embedded toy world, on a CPU: install, generate the world, run
# step 1 (SFT), step 2 (reward model), step 3 twice (PPO with alpha=0, then CONQORD), step 4 (table).
# Extra arguments go to both step-3 runs (e.g. --max_steps 100 for a quicker look).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
. scripts/setup_env.sh
export CONQORD_PRESET=toy HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
TOY_OUT="${CONQORD_TOY_OUT:-model_pth/toy}"
. scripts/timing.sh

timed "toy world" python datasets/generate_toy_world.py --seed "${CONQORD_TOY_SEED:-0}"
timed "step 1 (SFT)" bash step1_supervised_finetuning_LM/run_step1.sh
timed "step 2 (reward model)" bash step2_reward_model/run_step2.sh
timed "step 3 (PPO, alpha=0)" bash step3_RL_finetune_LLM/run_step3.sh --alpha 0 --output_dir "$TOY_OUT/step3_alpha0" "$@"
# CONQORD in the form the toy study found best (docs/results.md): alpha*R_A as the confidence tokens' advantage
timed "step 3 (CONQORD)" bash step3_RL_finetune_LLM/run_step3.sh --alpha 32 --alignment_on_confidence_tokens "$@"
timed "step 4 (evaluation)" bash step4_evaluation/run_step4.sh
print_timings
