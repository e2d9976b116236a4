#!/usr/bin/env bash
# One-GPU install check: the paper recipe's four run scripts, end to end, on a random Llama.
#
#   bash scripts/gpu_smoke.sh            # one CUDA GPU: a random ~1.3B Llama (hidden 2048, 24 layers), bf16
#   bash scripts/gpu_smoke.sh --tiny     # CPU (or GPU): hidden 64, 2 layers, vocab 512 — what CI runs
#
# What it does, all local (no download):
#   1. writes a small toy world (data + its 512-token BPE tokenizer) and a random LlamaForCausalLM of the
#      chosen shape with that tokenizer, vocabulary padded to --vocab_size (32000: Llama-2's), built in
#      bf16 on the GPU and saved as safetensors;
#   2. runs step1..step4 run_stepN.sh with the paper preset (CONQORD_PRESET unset, CONQORD_NPROC=1: the
#      deepspeed launcher, NCCL on a GPU, gloo on CPU) and their real flags (ZeRO-3, LoRA, bf16, gradient
#      checkpointing, offload, reference offload, ...), scaled down only in steps, examples and lengths
#      by extra flags, on the toy world's data; step 4 on a TruthfulQA CSV and an NQ-open JSONL
#      (../shared/data's when present, else files built from the toy world's questions); step 3 runs twice:
#      as the paper has it, and as step3_calibrated with the calibrated form's flags (docs/experiments.md) added;
#   3. prints one row per step: status (ok / FAILED with the last error line), wall seconds, seconds per
#      optimizer step (steps 1-2) or per PPO step split into generation / experience / training (step 3),
#      peak GPU memory, and the path of each step's full log. Exit status 1 if any step did not pass.
#
# Flags: --tiny, --hidden_size N, --num_layers N, --num_heads N, --intermediate_size N, --vocab_size N,
#        --dtype bf16|fp16|fp32 (default bf16 on a GPU, fp32 on CPU), --step_timeout SECONDS, --dir DIR.
# Environment: CONQORD_SMOKE_DIR (default runs/gpu_smoke, runs/gpu_smoke_tiny with --tiny),
#              CONQORD_SMOKE_STEP_TIMEOUT, CONQORD_PORT, CONQORD_SMOKE_BENCH=auto|shared|toy (step 4's files:
#              auto takes ../shared/data's when there). Everything under the smoke folder is rewritten.
# On the lent GPU machine (python3 only, wheels in .whl/): source scripts/device_env.sh first.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
T0=$(date +%s.%N)

die() { echo "gpu_smoke: error: $*" >&2; exit 2; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

TINY=0 HIDDEN="" LAYERS="" HEADS="" INTER="" VOCAB="" DTYPE="" STEP_TIMEOUT="${CONQORD_SMOKE_STEP_TIMEOUT:-}"
SMOKE="${CONQORD_SMOKE_DIR:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) TINY=1 ;;
    --hidden_size) HIDDEN="${2:?--hidden_size needs a value}"; shift ;;
    --num_layers) LAYERS="${2:?--num_layers needs a value}"; shift ;;
    --num_heads) HEADS="${2:?--num_heads needs a value}"; shift ;;
    --intermediate_size) INTER="${2:?--intermediate_size needs a value}"; shift ;;
    --vocab_size) VOCAB="${2:?--vocab_size needs a value}"; shift ;;
    --dtype) DTYPE="${2:?--dtype needs a value}"; shift ;;
    --step_timeout) STEP_TIMEOUT="${2:?--step_timeout needs a value}"; shift ;;
    --dir) SMOKE="${2:?--dir needs a value}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
  shift
done
if [ "$TINY" = 1 ]; then
  HIDDEN="${HIDDEN:-64}" LAYERS="${LAYERS:-2}" HEADS="${HEADS:-4}" INTER="${INTER:-192}" VOCAB="${VOCAB:-512}"
  SMOKE="${SMOKE:-runs/gpu_smoke_tiny}"
else
  HIDDEN="${HIDDEN:-2048}" LAYERS="${LAYERS:-24}" HEADS="${HEADS:-16}" INTER="${INTER:-5504}" VOCAB="${VOCAB:-32000}"
  SMOKE="${SMOKE:-runs/gpu_smoke}"
fi
case "$DTYPE" in ""|bf16|fp16|fp32) ;; *) die "--dtype must be bf16, fp16 or fp32, got '$DTYPE'" ;; esac

# ------------------------------------------------------------------------------------------ prerequisites
command -v python >/dev/null 2>&1 || die "no 'python' on PATH (the run scripts call 'python -m ...'). \
With only python3 there: put a wrapper named python on PATH (printf '#!/bin/sh\nexec python3 \"\$@\"\n'), \
or 'source scripts/device_env.sh' on the lent GPU machine."
command -v deepspeed >/dev/null 2>&1 || die "no 'deepspeed' launcher on PATH: 'pip install deepspeed' \
(or 'source scripts/device_env.sh' to install the wheels carried in .whl/)."
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
if ! probe=$(python - 2>&1 <<'EOF'
import torch, transformers, deepspeed, datasets, tensorboardX  # what steps 1-3 import
cuda = torch.cuda.is_available()
name = torch.cuda.get_device_name(0) if cuda else "none"
print(int(cuda), torch.cuda.device_count() if cuda else 0, f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"deepspeed {deepspeed.__version__}, datasets {datasets.__version__}; GPU: {name}"
      + (f" (device 0 of {torch.cuda.device_count()} visible)" if cuda and torch.cuda.device_count() > 1 else ""))
EOF
); then
  echo "$probe" >&2
  die "the Python environment misses a package the steps need (above); pip install -r requirements.txt \
(or 'source scripts/device_env.sh' on the lent GPU machine)."
fi
probe=$(printf '%s\n' "$probe" | tail -n 1)
read -r HAS_CUDA N_GPUS VERSIONS <<<"$probe"

DEVIATIONS=()
if [ "$HAS_CUDA" = 1 ]; then
  DTYPE="${DTYPE:-bf16}"
else
  [ "$TINY" = 1 ] || die "no CUDA GPU visible (torch.cuda.is_available() is False). The default shape is \
~1.3B parameters: use --tiny for the CPU check."
  export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  DEVIATIONS+=("no GPU: DeepSpeed's CPU accelerator, gloo instead of NCCL (DS_ACCELERATOR=$DS_ACCELERATOR)")
  if [ -z "$DTYPE" ]; then
    DTYPE=fp32
    DEVIATIONS+=("--dtype fp32 in every step instead of the recipe's bf16 (bf16 on CPU is slow or unsupported)")
  fi
fi
[ "$DTYPE" = bf16 ] || [ "$HAS_CUDA" != 1 ] || DEVIATIONS+=("--dtype $DTYPE instead of the recipe's bf16 (asked for)")
DTYPE_FLAGS=()
[ "$DTYPE" = bf16 ] || DTYPE_FLAGS=(--dtype "$DTYPE")
if [ -z "$STEP_TIMEOUT" ]; then
  if [ "$HAS_CUDA" = 1 ]; then STEP_TIMEOUT=300; else STEP_TIMEOUT=240; fi
fi

mkdir -p "$SMOKE"
SMOKE="$(cd "$SMOKE" && pwd)"
rm -rf "$SMOKE/logs" "$SMOKE/out" "$SMOKE/results" "$SMOKE/base" "$SMOKE/bench" "$SMOKE/world" "$SMOKE/toy_base" \
  "$SMOKE/summary.json"
mkdir -p "$SMOKE/logs"

echo "== CONQORD GPU smoke: paper preset, 1 process, shape hidden=$HIDDEN layers=$LAYERS heads=$HEADS" \
  "intermediate=$INTER vocab=$VOCAB, dtype $DTYPE"
echo "   $VERSIONS"
echo "   folder: $SMOKE"
for deviation in "${DEVIATIONS[@]}"; do echo "   deviation from the recipe: $deviation"; done

# ------------------------------------------------------------------------------------------ the runner
# run_step NAME MISSING_INPUT COMMAND... : runs COMMAND with its output in logs/NAME.log, records rc and
# wall time in logs/NAME.status; MISSING_INPUT non-empty: skip it and say why.
run_step() {
  local name="$1" missing="$2"; shift 2
  local log="$SMOKE/logs/$name.log" status="$SMOKE/logs/$name.status"
  if [ -n "$missing" ]; then
    echo "skipped=$missing" >"$status"
    echo "-- $name: skipped ($missing)"
    return
  fi
  echo "-- $name: running (log: $log)"
  local start end rc
  start=$(date +%s.%N)
  timeout -k 20 "$STEP_TIMEOUT" "$@" >"$log" 2>&1 </dev/null
  rc=$?
  end=$(date +%s.%N)
  local wall
  wall=$(python -c "print(round($end - $start, 1))")
  echo "rc=$rc wall=$wall timeout=$STEP_TIMEOUT" >"$status"
  echo "   $name: exit $rc after ${wall}s"
}

need() {  # need PATH... : the first checkpoint folder that lacks config.json, as a reason
  local path
  for path in "$@"; do
    [ -f "$path/config.json" ] || { echo "no ${path#"$SMOKE"/}/config.json"; return; }
  done
}

# ------------------------------------------------------------------------------------------ model + data
WORLD="$SMOKE/world" BASE="$SMOKE/base" OUT="$SMOKE/out"
# the toy world (data + tokenizer; its own tiny model is not used), then the random Llama of the chosen shape
run_step model "" bash -c 'python datasets/generate_toy_world.py --out_dir "$1" --model_dir "$2" \
    --n_countries 40 --sft_examples 400 --reward_pairs 200 &&
  python scripts/gpu_smoke.py model --tokenizer "$2" --out "$3" --hidden_size "$4" --num_layers "$5" \
    --num_heads "$6" --intermediate_size "$7" --vocab_size "$8" --dtype "$9"' \
  _ "$WORLD" "$SMOKE/toy_base" "$BASE" "$HIDDEN" "$LAYERS" "$HEADS" "$INTER" "$VOCAB" "$DTYPE"

unset CONQORD_PRESET CONQORD_HOSTFILE CONQORD_CHECKPOINTS CONQORD_JUDGE CONQORD_JUDGE_MODEL CONQORD_JUDGE_BASE_URL \
  CONQORD_RETRIEVAL_CORPUS CONQORD_TRUTHFULQA CONQORD_NQ
export CONQORD_NPROC=1 CONQORD_BASE_MODEL="$BASE" CONQORD_OUT="$OUT" CONQORD_RESULTS="$SMOKE/results" \
  CONQORD_STEP1_DATA="$WORLD/step1_sft" CONQORD_STEP2_DATA="$WORLD/step2_reward" CONQORD_STEP3_DATA="$WORLD/step3_ppo"

# ------------------------------------------------------------------------------------------ steps 1-3
SUPERVISED=(--max_steps 4 --max_seq_len 128 --gradient_accumulation_steps 1 --per_device_train_batch_size 4
            --max_train_examples 64 "${DTYPE_FLAGS[@]}")
run_step step1 "$(need "$BASE")" bash step1_supervised_finetuning_LM/run_step1.sh "${SUPERVISED[@]}"
run_step step2 "$(need "$BASE")" bash step2_reward_model/run_step2.sh "${SUPERVISED[@]}"
PPO=(--max_steps 3 --per_device_generation_batch_size 8 --per_device_training_batch_size 4
     --max_prompt_seq_len 64 --max_answer_seq_len 32 --gradient_accumulation_steps 1 --quality_reward model
     --max_train_examples 64 "${DTYPE_FLAGS[@]}")
run_step step3 "$(need "$OUT/step1" "$OUT/step2")" bash step3_RL_finetune_LLM/run_step3.sh "${PPO[@]}"
# the same with the recommended calibrated form's flags (docs/experiments.md, "Calibrated levels"): R_A and Brier on the
# confidence tokens, centred, a missing confidence scored at its worst, PPO-ptx on step 1's data, 4 PPO epochs
run_step step3_calibrated "$(need "$OUT/step1" "$OUT/step2")" bash step3_RL_finetune_LLM/run_step3.sh \
  "${PPO[@]}" --output_dir "$OUT/step3_calibrated" \
  --alignment_on_confidence_tokens --alpha 32 --center_confidence_terms --missing_confidence_policy worst \
  --confidence_scoring_rule brier --confidence_scoring_weight 32 --ppo_epochs 4 \
  --unsupervised_dataset_name "$WORLD/step1_sft" --unsup_coef 1

# ------------------------------------------------------------------------------------------ step 4
SHARED="$ROOT/../shared/data"
BENCH="${CONQORD_SMOKE_BENCH:-auto}"
case "$BENCH" in auto|shared|toy) ;; *) BENCH=auto ;; esac
if [ "$BENCH" = shared ] && ! [ -f "$SHARED/TruthfulQA.csv" ]; then
  echo "   CONQORD_SMOKE_BENCH=shared but $SHARED/TruthfulQA.csv is missing: using toy-world files"
fi
if [ "$BENCH" != toy ] && [ -f "$SHARED/TruthfulQA.csv" ] && [ -f "$SHARED/NQ-open.dev.jsonl" ]; then
  export CONQORD_TRUTHFULQA="$SHARED/TruthfulQA.csv" CONQORD_NQ="$SHARED/NQ-open.dev.jsonl"
  BENCH_NOTE="8-question seeded subsets of $SHARED/{TruthfulQA.csv,NQ-open.dev.jsonl}"
elif [ -f "$WORLD/eval/test.jsonl" ] && python scripts/gpu_smoke.py bench --world "$WORLD" --out "$SMOKE/bench" \
    --n 16 >"$SMOKE/logs/bench.log" 2>&1; then
  export CONQORD_TRUTHFULQA="$SMOKE/bench/TruthfulQA.csv" CONQORD_NQ="$SMOKE/bench/nq_open.jsonl"
  BENCH_NOTE="TruthfulQA/NQ-open-format files built from the toy world's questions in $SMOKE/bench"
else
  BENCH_NOTE="none (no toy world, see $SMOKE/logs/model.log)"
fi
CHECKPOINTS=""
for spec in "sft=$OUT/step1" "conqord=$OUT/step3/actor"; do
  [ -f "${spec#*=}/config.json" ] && CHECKPOINTS+="$spec "
done
missing4=""
[ -n "$CHECKPOINTS" ] || missing4="no step1 nor step3 checkpoint"
[ -n "${CONQORD_NQ:-}" ] || missing4="no benchmark files"
echo "   step 4 benchmarks: $BENCH_NOTE; checkpoints: $( [ -n "$CHECKPOINTS" ] && echo "${CHECKPOINTS% }" || echo none)"
CONQORD_CHECKPOINTS="${CHECKPOINTS% }" run_step step4 "$missing4" bash step4_evaluation/run_step4.sh \
  --max_examples 8 --max_new_tokens 32 --bootstrap 20 "${DTYPE_FLAGS[@]}"

# ------------------------------------------------------------------------------------------ report
echo
python scripts/gpu_smoke.py table --smoke_dir "$SMOKE"
rc=$?
for name in model step1 step2 step3 step3_calibrated step4; do
  status="$SMOKE/logs/$name.status"
  if [ -f "$status" ] && ! grep -q '^rc=0 ' "$status" && [ -f "$SMOKE/logs/$name.log" ]; then
    echo
    echo "---- last lines of $SMOKE/logs/$name.log"
    grep -v -e 'FutureWarning' -e 'warnings.warn' "$SMOKE/logs/$name.log" | tail -n 15
  fi
done
T1=$(date +%s.%N)
echo
echo "gpu_smoke: $( [ $rc = 0 ] && echo 'all steps ok' || echo 'FAILED' ) in $(python -c "print(round($T1 - $T0))") s"
exit "$rc"
