"""The whole toy pipeline, end to end through the run scripts, on a micro world (DeepSpeed ZeRO-3):
one process, then two (the alignment reward gathered across ranks), plus resume and bad-input paths."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env(world: Path, nproc: int) -> dict[str, str]:
    return {**os.environ, "CONQORD_PRESET": "toy", "CONQORD_NPROC": str(nproc),
            "CONQORD_TOY_DATA": str(world / "data"), "CONQORD_TOY_BASE": str(world / "base"),
            "CONQORD_TOY_OUT": str(world / "out"), "CONQORD_RESULTS": str(world / "results"),
            "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "PATH": _path()}


def _path() -> str:
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the venv's deepspeed launcher


def _run(args: list[str], env: dict[str, str], expect_ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if expect_ok and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def _step(n: int, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess:
    script = {1: "step1_supervised_finetuning_LM/run_step1.sh", 2: "step2_reward_model/run_step2.sh",
              3: "step3_RL_finetune_LLM/run_step3.sh", 4: "step4_evaluation/run_step4.sh"}[n]
    return _run(["bash", script, *flags], env)


@pytest.fixture(scope="module")
def micro_world(tmp_path_factory) -> Path:
    world = tmp_path_factory.mktemp("micro")
    _run([sys.executable, "datasets/generate_toy_world.py", "--out_dir", str(world / "data"),
          "--model_dir", str(world / "base"), "--n_countries", "40", "--sft_examples", "400",
          "--reward_pairs", "200"], os.environ.copy())
    return world


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_hf_folder(path: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "training_args.json"):
        assert (path / name).is_file(), f"{path / name} missing"
    leftovers = (f".{path.name}.tmp-", f".{path.name}.old-")
    assert not any(p.name.startswith(leftovers) for p in path.parent.iterdir()), "temporary folder left behind"


def test_one_process_pipeline_with_resume(micro_world: Path):
    env = _env(micro_world, 1)
    out = micro_world / "out"
    _step(1, env, "--max_steps", "8", "--per_device_train_batch_size", "8")
    _assert_hf_folder(out / "step1")
    assert json.loads((out / "step1/training_args.json").read_text())["zero_stage"] == 3
    _step(2, env, "--max_steps", "5", "--per_device_train_batch_size", "8")
    _assert_hf_folder(out / "step2")
    # learned reward model as quality (confidence stripped on token ids), LoRA actor under ZeRO-3
    ppo = ["--quality_reward", "model", "--per_device_generation_batch_size", "8",
           "--per_device_training_batch_size", "4", "--freezing_actor_steps", "1", "--actor_lora_dim", "4",
           "--save_interval", "2", "--log_interval", "1"]
    _step(3, env, *ppo, "--max_steps", "3")
    for name in ("actor", "critic"):
        _assert_hf_folder(out / "step3" / name)
    log = _log(out / "step3/train_log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3]
    for key in ("quality_reward", "alignment_reward", "total_reward", "kl", "actor_loss", "critic_loss",
                "confidence_mean", "parse_failure_rate", "spearman_quality_confidence", "wrong_way_share"):
        assert key in log[-1]
    assert log[-1]["align_scope_size"] == 8
    assert "actor_loss" in log[-1] and log[0]["actor_loss"] == 0.0  # actor frozen during step 1

    resumed = _step(3, env, *ppo, "--max_steps", "4", "--resume")
    assert [r["step"] for r in _log(out / "step3/train_log.jsonl")] == [1, 2, 3, 4]  # step 3 redone once
    assert '"steps": 4' in resumed.stdout
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == ["step1", "step2", "step3"]  # a run folder each
    assert "step 3 (PPO)" not in resumed.stderr  # the progress bar stays quiet when not a terminal

    result = _run(["bash", "step4_evaluation/run_step4.sh", "--bootstrap", "20", "--methods", "zero_shot", "vanilla"],
                  {**env, "CONQORD_CHECKPOINTS": f"sft={out / 'step1'} conqord={out / 'step3/actor'}"})
    assert "| sft | toy | zero_shot |" in result.stdout and "| conqord | toy | vanilla |" in result.stdout
    results = micro_world / "results"
    row = results / "conqord/toy/zero_shot"
    summary = json.loads((row / "summary.json").read_text())
    for key in ("n", "accuracy", "ece", "auroc", "auroc_stated", "pearson", "spearman", "brier", "parse_failure_rate", "by_difficulty",
                "ci", "judge", "retrieval"):
        assert key in summary
    # the toy preset holds 30 % of each question set out as dev (isotonic fitted there, τ chosen there)
    questions = len((micro_world / "data/eval/test.jsonl").read_text().splitlines())
    assert summary["dev"]["n"] == round(0.3 * questions) and summary["n"] == questions - summary["dev"]["n"]
    assert summary["recalibration"]["method"] == "isotonic" and 0 <= summary["ece_recalibrated"] <= 1
    sweep = summary["retrieval"]["sweep"]
    assert [r["tau"] for r in sweep][0] == 0.0 and sweep[-1]["retrieval_rate"] == 1.0
    assert summary["retrieval"]["tau_dev"]["n_test"] == summary["n"]
    for name in ("reliability.png", "retrieval.png", "predictions.jsonl", "generations.jsonl", "generations_rag.jsonl"):
        assert (row / name).stat().st_size > 100, name
    lines = (results / "results.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 2 * 2 and lines[0].startswith("checkpoint,benchmark,method,n,accuracy")  # ckpt x bench x method
    # a rerun resumes: nothing is generated again, the numbers are identical
    again = _run(["bash", "step4_evaluation/run_step4.sh", "--bootstrap", "20", "--methods", "zero_shot", "vanilla"],
                 {**env, "CONQORD_CHECKPOINTS": f"sft={out / 'step1'} conqord={out / 'step3/actor'}"})
    assert json.loads((row / "summary.json").read_text()) == summary
    assert len((row / "generations.jsonl").read_text().splitlines()) == questions  # dev questions answered too
    assert again.stdout.count("|") == result.stdout.count("|")


def test_two_process_pipeline_gathers_alignment_reward(micro_world: Path):
    env = {**_env(micro_world, 2), "CONQORD_TOY_OUT": str(micro_world / "out2")}
    out = micro_world / "out2"
    _step(1, env, "--max_steps", "4", "--per_device_train_batch_size", "8")
    _step(2, env, "--max_steps", "3", "--per_device_train_batch_size", "8")
    _step(3, env, "--max_steps", "2", "--freezing_actor_steps", "0", "--per_device_generation_batch_size", "6",
          "--per_device_training_batch_size", "6",
          "--log_interval", "1", "--alignment_on_confidence_tokens", "--confidence_scoring_rule", "brier",
          "--confidence_scoring_weight", "8", "--confidence_scoring_warmup_steps", "4")
    log = _log(out / "step3/train_log.jsonl")
    assert [r["align_scope_size"] for r in log] == [12, 12]  # 2 ranks x 6 rollouts ordered together
    assert [r["confidence_scoring_weight"] for r in log] == [2.0, 4.0]  # a quarter of the warm-up per step
    _assert_hf_folder(out / "step3/actor")
    result = _run(["bash", "step4_evaluation/run_step4.sh", "--bootstrap", "0"],
                  {**env, "CONQORD_RESULTS": str(micro_world / "results2")})
    assert "| conqord | toy | zero_shot |" in result.stdout and "| sft | toy | zero_shot |" in result.stdout


def test_missing_checkpoint_names_the_step_to_run(tmp_path: Path, micro_world: Path):
    result = _run([sys.executable, "-m", "step3_RL_finetune_LLM.main", "--data_path", str(micro_world / "data/step3_ppo"),
                   "--actor_model_name_or_path", str(micro_world / "base"),
                   "--critic_model_name_or_path", str(tmp_path / "no_step2"), "--output_dir", str(tmp_path / "o"),
                   "--dtype", "fp32"], _env(micro_world, 1), expect_ok=False)
    assert result.returncode == 2
    assert "step 2" in result.stderr and "run_step2.sh" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_data_row_names_file_and_line(tmp_path: Path, micro_world: Path):
    data = tmp_path / "bad"
    data.mkdir()
    rows = [json.dumps({"prompt": "### Question: q?\n### Answer:", "response": " a\n### Confidence: 0.5"})] * 2
    (data / "train.jsonl").write_text("\n".join(rows + ['{"prompt": "only a prompt"}']) + "\n")
    result = _run([sys.executable, "-m", "step1_supervised_finetuning_LM.main", "--data_path", str(data),
                   "--model_name_or_path", str(micro_world / "base"), "--output_dir", str(tmp_path / "o"),
                   "--dtype", "fp32"], _env(micro_world, 1), expect_ok=False)
    assert result.returncode == 2
    assert f"{data / 'train.jsonl'}:3" in result.stderr and "'response'" in result.stderr
    assert "Traceback" not in result.stderr


def test_negative_alpha_is_refused_at_start(tmp_path: Path, micro_world: Path):
    result = _run(["bash", "step3_RL_finetune_LLM/run_step3.sh", "--alpha", "-0.5"], _env(micro_world, 1),
                  expect_ok=False)
    assert result.returncode == 2 and "--alpha" in result.stderr
