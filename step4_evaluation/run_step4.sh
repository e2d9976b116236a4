#!/usr/bin/env bash
# CONQORD step 4: answers with confidence, judged; accuracy, ECE, AUROC, ... per checkpoint x method x
# benchmark; reliability diagrams; confidence-gated retrieval. Extra flags are passed through.
#   CONQORD_CHECKPOINTS="name=path ..." chooses the models (toy default: every toy checkpoint that exists).
#   toy preset: the toy world's questions about held-out countries (toy) and about countries PPO
#   trained on (toy/seen), its fact corpus for retrieval, exact match.
#   paper preset: TruthfulQA and NQ-open with the vanilla, Top-k and CoT prompts.
#     CONQORD_TRUTHFULQA / CONQORD_NQ: local copies (TruthfulQA.csv, NQ-open JSONL); unset = the hub's.
#     CONQORD_JUDGE=llm with CONQORD_JUDGE_MODEL / CONQORD_JUDGE_BASE_URL and the key in OPENAI_API_KEY
#     for the paper's LLM judge; the default judges offline (TruthfulQA's ROUGE-L reference metric,
#     exact match on NQ). CONQORD_RETRIEVAL_CORPUS: a JSONL of {id, text} passages for retrieval.
#   toy and smollm2 presets: CONQORD_DEV_FRACTION (default 0.3) of each question set is held out as dev, where
#   CONQORD_RECALIBRATE (default isotonic; none to leave out) is fitted and the retrieval threshold is chosen;
#   every metric is over the rest. 0 / none: the paper's setting (every question scored, raw confidence only).
set -euo pipefail
. "$(dirname "$0")/../scripts/common.sh"
dev=(--dev_fraction "${CONQORD_DEV_FRACTION:-0.3}" --recalibrate "${CONQORD_RECALIBRATE:-isotonic}")

if [ "$PRESET" = toy ]; then
  if [ -z "${CONQORD_CHECKPOINTS:-}" ]; then
    CONQORD_CHECKPOINTS=""
    for spec in "sft=$TOY_OUT/step1" "ppo_alpha0=$TOY_OUT/step3_alpha0/actor" "conqord=$TOY_OUT/step3/actor"; do
      [ -f "${spec#*=}/config.json" ] && CONQORD_CHECKPOINTS+="$spec "
    done
  fi
  # shellcheck disable=SC2086
  python -m step4_evaluation.main --checkpoints ${CONQORD_CHECKPOINTS:?no toy checkpoint found: run steps 1-3 first} \
    --benchmarks "toy=$TOY_DATA/eval/test.jsonl" "toy/seen=$TOY_DATA/eval/seen.jsonl" --methods zero_shot \
    --retrieval_corpus "$TOY_DATA/corpus.jsonl" --retrieval_k 2 \
    --output_dir "${CONQORD_RESULTS:-results/toy}" \
    --batch_size 100 --max_new_tokens 16 --max_prompt_len 128 --dtype fp32 "${dev[@]}" "$@"
elif [ "$PRESET" = smollm2 ]; then
  # The facts world's held-out questions (countries of no training pool; all 434 unless
  # CONQORD_SMOLLM2_EVAL_EXAMPLES is set), plus NQ-open and TruthfulQA when CONQORD_NQ / CONQORD_TRUTHFULQA name
  # their files (never the hub; a seeded subset of CONQORD_SMOLLM2_EVAL_EXAMPLES, default 100; none of it trained on).
  # Every row also scores two training-free confidences on the same answers: the answer's own likelihood
  # and the question's popularity. The base model answers with the paper's three prompts (few-shot, longer
  # answers); the trained checkpoints with the format they learned (zero_shot).
  RESULTS="${CONQORD_RESULTS:-results/smollm2}"
  facts=(--benchmarks "facts=$SMOL_DATA/eval/facts.jsonl")
  extra=()
  if [ -n "${CONQORD_NQ:-}" ]; then extra+=("nq_open=$CONQORD_NQ"); fi
  if [ -n "${CONQORD_TRUTHFULQA:-}" ]; then extra+=("truthfulqa=$CONQORD_TRUTHFULQA"); fi
  passed=("$@")
  # evaluate FOLDER SUBSET ARGS...: the facts questions (SUBSET of them; empty: all), then the extra sets (their own
  # subset size), into one folder
  evaluate() {
    local folder="$1" subset="$2"; shift 2
    local common=(--baselines answer_logprob popularity --judge "${CONQORD_JUDGE:-auto}"
                  --judge_model "${CONQORD_JUDGE_MODEL:-gpt-4}" ${CONQORD_JUDGE_BASE_URL:+--judge_base_url "$CONQORD_JUDGE_BASE_URL"}
                  --output_dir "$RESULTS/$folder" --dtype fp32 "${dev[@]}" "$@")
    python -m step4_evaluation.main "${facts[@]}" ${subset:+--max_examples "$subset"} "${common[@]}" "${passed[@]}"
    if [ ${#extra[@]} -gt 0 ]; then
      python -m step4_evaluation.main --benchmarks "${extra[@]}" --max_examples "${CONQORD_SMOLLM2_EVAL_EXAMPLES:-100}" \
        "${common[@]}" "${passed[@]}"
    fi
  }
  # the few-shot prompts cost ~0.7 s a question each on 2 cores: a seeded subset of the facts questions
  # (CONQORD_SMOLLM2_PROMPT_EXAMPLES, default 200; the --long profile: all)
  prompt_examples="${CONQORD_SMOLLM2_PROMPT_EXAMPLES:-200}"
  if [ "${CONQORD_SMOLLM2_PROFILE:-}" = long ]; then prompt_examples="${CONQORD_SMOLLM2_PROMPT_EXAMPLES:-}"; fi
  evaluate prompting "${CONQORD_SMOLLM2_EVAL_EXAMPLES:-$prompt_examples}" --checkpoints "base=$SMOL_BASE" \
    --methods vanilla topk cot --batch_size 16 --max_new_tokens 48 --max_prompt_len 768
  trained=()
  for spec in "sft=$SMOL_OUT/step1" \
              "ppo_alpha0=$SMOL_OUT/step3_alpha0/actor" "ppo_alpha0_oracle=$SMOL_OUT/step3_alpha0_oracle/actor" \
              "conqord_paper=$SMOL_OUT/step3_paper/actor" "conqord_paper_oracle=$SMOL_OUT/step3_paper_oracle/actor" \
              "conqord=$SMOL_OUT/step3_recommended/actor" "conqord_oracle=$SMOL_OUT/step3_recommended_oracle/actor"; do
    if [ -f "${spec#*=}/config.json" ]; then trained+=("$spec"); fi
  done
  evaluate trained "${CONQORD_SMOLLM2_EVAL_EXAMPLES:-}" \
    --checkpoints "${trained[@]:?no smollm2 checkpoint found: run steps 1-3 first}" --methods zero_shot \
    --batch_size 32 --max_new_tokens 16 --max_prompt_len 128
else
  OUT="${CONQORD_OUT:-model_pth/paper}"
  retrieval=()
  [ -n "${CONQORD_RETRIEVAL_CORPUS:-}" ] && retrieval=(--retrieval_corpus "$CONQORD_RETRIEVAL_CORPUS")
  # shellcheck disable=SC2086
  python -m step4_evaluation.main --checkpoints ${CONQORD_CHECKPOINTS:-"sft=$OUT/step1" "conqord=$OUT/step3/actor"} \
    --benchmarks "truthfulqa${CONQORD_TRUTHFULQA:+=$CONQORD_TRUTHFULQA}" "nq_open${CONQORD_NQ:+=$CONQORD_NQ}" \
    --methods vanilla topk cot --judge "${CONQORD_JUDGE:-auto}" \
    --judge_model "${CONQORD_JUDGE_MODEL:-gpt-4}" ${CONQORD_JUDGE_BASE_URL:+--judge_base_url "$CONQORD_JUDGE_BASE_URL"} \
    "${retrieval[@]}" --output_dir "${CONQORD_RESULTS:-results/paper}" \
    --batch_size 16 --max_new_tokens 256 --dtype bf16 "$@"
fi
