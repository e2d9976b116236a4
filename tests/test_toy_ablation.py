"""The toy-world ablation harness, end to end in its --quick setting (real runs of steps 1-4)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_ablation_shows_the_direction_and_writes_the_report(tmp_path: Path):
    report = tmp_path / "docs/results.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "experiments.toy_ablation", "--quick", "--assert_direction", "--jobs", "2",
                             "--out", str(tmp_path / "runs"), "--report", str(report)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = report.read_text()
    assert "direction check passed" in result.stdout
    for row in ("toy: sft/zero_shot", "toy: sft/vanilla", "toy: sft/topk", "toy: sft/cot", "toy: ppo_alpha0/zero_shot",
                "toy: conf_tokens/zero_shot", "toy: conqord_sum/zero_shot", "toy: brier/zero_shot",
                "toy/seen: conf_tokens/zero_shot"):
        assert f"| {row} |" in text, row
    assert "## Against the targets" in text and "Accuracy: conf_tokens − PPO α=0" in text
    assert (report.parent / "figures/training_curves.png").stat().st_size > 10_000
    table = json.loads(report.with_suffix(".json").read_text())
    assert len(table["toy: conf_tokens/zero_shot"]["auroc"]) == 1  # one seed in --quick
    log = (tmp_path / "runs/seed1/out/conqord_sum/train_log.jsonl").read_text().splitlines()
    assert len(log) == 300 and "wrong_way_share" in json.loads(log[-1])
