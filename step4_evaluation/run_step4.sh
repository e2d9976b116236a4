#!/usr/bin/env bash
# CONQORD step 4: greedy answers with confidence, exact-match judging, calibration metrics, comparison table.
#   CONQORD_CHECKPOINTS="name=path ..." chooses the models (default: every toy checkpoint that exists).
#   paper preset: CONQORD_EVAL_DATA must name a JSONL of {"question", "answers": [...]} (TruthfulQA and
#   NQ-open loaders, judges and prompts of the paper come with the benchmark evaluation).
set -euo pipefail
. "$(dirname "$0")/../scripts/common.sh"

if [ "$PRESET" = toy ]; then
  if [ -z "${CONQORD_CHECKPOINTS:-}" ]; then
    CONQORD_CHECKPOINTS=""
    for spec in "sft=$TOY_OUT/step1" "ppo_alpha0=$TOY_OUT/step3_alpha0/actor" "conqord=$TOY_OUT/step3/actor"; do
      [ -f "${spec#*=}/config.json" ] && CONQORD_CHECKPOINTS+="$spec "
    done
  fi
  # shellcheck disable=SC2086
  python -m step4_evaluation.main --checkpoints ${CONQORD_CHECKPOINTS:?no toy checkpoint found: run steps 1-3 first} \
    --eval_data "$TOY_DATA/eval/test.jsonl" --output_dir "${CONQORD_RESULTS:-results/toy}" \
    --batch_size 100 --max_new_tokens 12 --max_prompt_len 32 --dtype fp32 "$@"
else
  OUT="${CONQORD_OUT:-model_pth/paper}"
  # shellcheck disable=SC2086
  python -m step4_evaluation.main --checkpoints ${CONQORD_CHECKPOINTS:-"sft=$OUT/step1" "conqord=$OUT/step3/actor"} \
    --eval_data "${CONQORD_EVAL_DATA:?set CONQORD_EVAL_DATA to a JSONL with question and answers}" \
    --output_dir "${CONQORD_RESULTS:-results/paper}" --batch_size 16 --max_new_tokens 64 --dtype bf16 "$@"
fi
