#!/usr/bin/env bash
# Shared by run_step{1..4}.sh: the preset, paths from environment variables, and the launcher.
#
#   CONQORD_PRESET   paper (default: Llama-2-7B recipe, 4 GPUs, ZeRO-3) | toy (embedded toy world, CPU) |
#                    smollm2 (SmolLM2-135M-Instruct on the real-facts world, CPU; scripts/run_smollm2_pipeline.sh)
#   CONQORD_NPROC    processes (GPUs) to launch per node; paper: 4, toy: 1
#   CONQORD_HOSTFILE DeepSpeed hostfile ("host slots=N" lines) for several nodes: passed as --hostfile; the
#                    node count is its lines that are neither blank nor comments
#   CONQORD_PORT     master port of the deepspeed launcher
#
# --dry_run among a step's arguments: launch prints the command it would run, then runs the step once with
# plain `python -m` (no launcher, no process group), telling it the world it would have had through
# CONQORD_DRY_RUN_GPUS_PER_NODE and CONQORD_DRY_RUN_NODES; the step prints its DeepSpeed configs and
# memory estimates and exits.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PRESET="${CONQORD_PRESET:-paper}"
case "$PRESET" in
  paper) NPROC="${CONQORD_NPROC:-4}" ;;
  toy)
    NPROC="${CONQORD_NPROC:-1}"
    # one thread per process: two busy processes on two cores otherwise slow each other 25x
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
    TOY_DATA="${CONQORD_TOY_DATA:-datasets/toy_world}"
    TOY_BASE="${CONQORD_TOY_BASE:-model_pth/toy-llama-base}"
    TOY_OUT="${CONQORD_TOY_OUT:-model_pth/toy}"
    ;;
  smollm2)
    NPROC="${CONQORD_NPROC:-1}"
    # one process on this CPU's two cores: both threads are its own
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
    SMOL_DATA="${CONQORD_SMOLLM2_DATA:-datasets/facts_world}"  # datasets/prepare_facts_world.py writes it
    SMOL_BASE="${CONQORD_SMOLLM2_BASE:-model_pth/smollm2-135m-instruct}"
    SMOL_OUT="${CONQORD_SMOLLM2_OUT:-model_pth/smollm2}"
    ;;
  *) echo "error: CONQORD_PRESET must be 'paper', 'toy' or 'smollm2', got '$PRESET'" >&2; exit 2 ;;
esac

NODES=1
if [ -n "${CONQORD_HOSTFILE:-}" ]; then
  if [ ! -f "$CONQORD_HOSTFILE" ]; then
    echo "error: CONQORD_HOSTFILE=$CONQORD_HOSTFILE: no such file" >&2; exit 2
  fi
  NODES="$(grep -cvE '^[[:space:]]*(#|$)' "$CONQORD_HOSTFILE" || true)"
  if [ "$NODES" = 0 ]; then
    echo "error: CONQORD_HOSTFILE=$CONQORD_HOSTFILE: no host lines (expected \"host slots=N\")" >&2; exit 2
  fi
fi

# launch MODULE ARGS... : one CPU process (toy, smollm2) runs plain python; the rest goes through the deepspeed launcher.
launch() {
  local module="$1"; shift
  local args=() dry=0 arg
  for arg in "$@"; do
    if [ "$arg" = --dry_run ]; then dry=1; else args+=("$arg"); fi
  done
  local cmd=(python -m "$module" "${args[@]}")
  if [ "$NPROC" != 1 ] || [ "$PRESET" = paper ] || [ -n "${CONQORD_HOSTFILE:-}" ]; then
    local hosts=()
    if [ -n "${CONQORD_HOSTFILE:-}" ]; then hosts=(--hostfile "$CONQORD_HOSTFILE"); fi
    cmd=(deepspeed "${hosts[@]}" --num_gpus "$NPROC" --master_port "${CONQORD_PORT:-$((29500 + RANDOM % 1000))}"
         --module "$module" "${args[@]}")
  fi
  if [ "$dry" = 1 ]; then
    local line; line="$(printf '%q ' "${cmd[@]}")"
    echo "dry run: would launch: ${line% }"
    CONQORD_DRY_RUN_GPUS_PER_NODE="$NPROC" CONQORD_DRY_RUN_NODES="$NODES" python -m "$module" "$@"
  else
    "${cmd[@]}"
  fi
}
