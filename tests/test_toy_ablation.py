"""The toy-world ablation harness, end to end in its --quick setting (real runs of steps 1-4)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.toy_ablation import VARIANTS
from step3_RL_finetune_LLM.trainer import build_parser
from utils.args import check_args

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


def test_recommended_trains_the_chosen_form_and_step3_accepts_its_flags():
    by_name = {v.name: v for v in VARIANTS}
    assert len(by_name) == len(VARIANTS)  # results folders are named after variants
    assert by_name["recommended"].flags == by_name["ptx_brier_w32_e4"].flags
    flags = [f.format(data="world") for f in by_name["recommended"].flags]
    args = build_parser().parse_args(["--data_path", "data/step3", "--actor_model_name_or_path", "actor",
                                      "--critic_model_name_or_path", "critic", "--output_dir", "out", *flags])
    check_args(args)
    assert (args.alpha, args.ppo_epochs, args.confidence_scoring_rule, args.confidence_scoring_weight) == (32, 4, "brier", 32)
    assert args.alignment_on_confidence_tokens and args.center_confidence_terms
    assert args.missing_confidence_policy == "worst" and args.unsupervised_dataset_name == ["world/step1_sft"]


def test_the_dev_split_gets_its_own_results_folder_and_reaches_step4(monkeypatch, tmp_path: Path):
    from experiments import toy_ablation

    calls = []
    monkeypatch.setattr(toy_ablation, "_run", lambda cmd, env, log: calls.append((cmd, log)))
    plain = toy_ablation.Settings(out=tmp_path, seeds=[1], ppo_steps=1, variants=(), jobs=1)
    split = toy_ablation.Settings(out=tmp_path, seeds=[1], ppo_steps=1, variants=(), jobs=1,
                                  confidence_readout="expected", dev_fraction=0.3, recalibrate="isotonic")
    assert plain.results(1).name == "results" and split.results(1).name == "results_expected_dev0.3"
    assert plain.metrics() == toy_ablation.METRICS and "ece_recalibrated" in split.metrics()
    assert split.step4_flags() == " --confidence_readout expected --dev_fraction 0.3 --recalibrate isotonic"
    toy_ablation.evaluate_seed(tmp_path / "seed1", 1, split)
    toy_ablation.evaluate_seed(tmp_path / "seed1", 1, plain)
    (cmd, log), *_, (plain_cmd, plain_log) = calls
    assert cmd[cmd.index("--dev_fraction") + 1] == "0.3" and cmd[cmd.index("--recalibrate") + 1] == "isotonic"
    assert log.parent.name == "expected_dev0.3" and plain_log.parent.name == "logs"
    # without the split the flags still go, at 0 / none: they override the preset's default split
    assert plain_cmd[plain_cmd.index("--dev_fraction") + 1] == "0.0" and "none" in plain_cmd
    with pytest.raises(SystemExit):
        toy_ablation.main(["--recalibrate", "isotonic", "--out", str(tmp_path)])
