#!/usr/bin/env bash
# Shared by run_step{1..4}.sh: the preset, paths from environment variables, and the launcher.
#
#   CONQORD_PRESET   paper (default: Llama-2-7B recipe, 4 GPUs, ZeRO-3) | toy (embedded toy world, CPU)
#   CONQORD_NPROC    processes (GPUs) to launch; paper: 4, toy: 1
#   CONQORD_PORT     master port of the deepspeed launcher
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
  *) echo "error: CONQORD_PRESET must be 'paper' or 'toy', got '$PRESET'" >&2; exit 2 ;;
esac

# launch MODULE ARGS... : one process runs plain python; several go through the deepspeed launcher.
launch() {
  local module="$1"; shift
  if [ "$NPROC" = 1 ] && [ "$PRESET" = toy ]; then
    python -m "$module" "$@"
  else
    deepspeed --num_gpus "$NPROC" --master_port "${CONQORD_PORT:-$((29500 + RANDOM % 1000))}" --module "$module" "$@"
  fi
}
