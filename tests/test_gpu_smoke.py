"""scripts/gpu_smoke.sh: the one-command install check (paper preset, real flags, a random Llama).

The slow test runs ``--tiny`` on CPU end to end, exactly as CI does; the quick ones cover the report
(status and error line of a failed step, missing keys as n/a, skipped steps), the step-4 files it
builds, and the early refusals when ``python`` or ``deepspeed`` is missing.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_smoke.sh"
STEPS = ("model", "step1", "step2", "step3", "step3_calibrated", "step4")
COLUMNS = ("step", "status", "wall_s", "steps", "s/step", "gen_s", "exp_s", "train_s", "peak_gpu_gib")
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_smoke  # noqa: E402


def _env(**extra: str) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the venv's deepspeed launcher
    return {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1",
            **extra}


def _table_rows(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells and cells[0] in STEPS:
            rows[cells[0]] = cells
    return rows


# --------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_tiny_smoke_runs_every_step_with_the_paper_flags(tmp_path: Path):
    smoke = tmp_path / "smoke"
    result = subprocess.run(["bash", str(SCRIPT), "--tiny"], cwd=ROOT, capture_output=True, text=True, timeout=540,
                            env=_env(CONQORD_SMOKE_DIR=str(smoke)))
    logs = ""
    if result.returncode != 0:
        for step in STEPS:
            log = smoke / "logs" / f"{step}.log"
            if log.is_file():
                logs += f"\n---- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:])
    assert result.returncode == 0, f"gpu_smoke.sh --tiny failed:\n{result.stdout[-4000:]}\n{result.stderr[-3000:]}{logs}"

    header = next(line for line in result.stdout.splitlines() if line.startswith("| step |"))
    assert [c.strip() for c in header.strip().strip("|").split("|")] == list(COLUMNS)
    rows = _table_rows(result.stdout)
    assert set(rows) == set(STEPS), result.stdout
    for step, cells in rows.items():
        assert cells[1] == "ok", f"{step}: {cells}"
        assert float(cells[2]) > 0  # wall seconds
        assert f"{step} log: {smoke / 'logs' / f'{step}.log'}" in result.stdout
    assert rows["step1"][3] == "4" and rows["step2"][3] == "4" and rows["step3"][3] == rows["step3_calibrated"][3] == "3"
    assert "deviation from the recipe: --dtype fp32" in result.stdout and "all steps ok" in result.stdout

    summary = json.loads((smoke / "summary.json").read_text())
    assert summary["ok"] is True and list(summary["columns"]) == list(COLUMNS)
    assert set(summary["steps"]) == set(STEPS)
    for step in STEPS:
        record = summary["steps"][step]
        assert record["ok"] is True and record["status"] == "ok" and Path(record["log"]).is_file()
        assert "peak_gpu_memory_gib" in record["json"], (step, record["json"])  # null on CPU
    for step in ("step1", "step2"):
        assert {"steps", "seconds", "seconds_per_step"} <= set(summary["steps"][step]["json"])
    for step in ("step3", "step3_calibrated"):
        assert {"steps", "seconds_per_step", "seconds_generation", "seconds_experience",
                "seconds_training"} <= set(summary["steps"][step]["json"])
    assert "seconds" in summary["steps"]["step4"]["json"]
    assert summary["steps"]["model"]["json"]["parameters"] > 0

    # the recipe's real flags reached the steps (the preset's, not the toy one's); only sizes were scaled down
    out = smoke / "out"
    step1 = json.loads((out / "step1/training_args.json").read_text())
    assert (step1["zero_stage"], step1["lora_dim"], step1["gradient_checkpointing"], step1["max_steps"]) == (3, 128, True, 4)
    step2 = json.loads((out / "step2/training_args.json").read_text())
    assert (step2["zero_stage"], step2["offload"], step2["lora_dim"]) == (3, True, 128)
    step3 = json.loads((out / "step3/actor/training_args.json").read_text())
    assert step3["offload_reference_model"] and step3["actor_gradient_checkpointing"]
    assert (step3["actor_lora_dim"], step3["quality_reward"], step3["max_steps"]) == (64, "model", 3)
    calibrated = json.loads((out / "step3_calibrated/actor/training_args.json").read_text())
    assert {k: v for k, v in calibrated.items() if k != "result" and step3[k] != v} == {
        "output_dir": str(out / "step3_calibrated"), "alignment_on_confidence_tokens": True, "alpha": 32.0,
        "center_confidence_terms": True, "missing_confidence_policy": "worst", "confidence_scoring_rule": "brier",
        "confidence_scoring_weight": 32.0, "unsupervised_dataset_name": [str(smoke / "world/step1_sft")],
        "unsup_coef": 1.0, "ppo_epochs": 4}
    log = [json.loads(line) for line in (out / "step3_calibrated/train_log.jsonl").read_text().splitlines()]
    assert any(math.isfinite(row.get("unsup_loss", math.nan)) for row in log)  # PPO-ptx updated the actor
    assert (smoke / "results/results.csv").is_file()
    base = json.loads((smoke / "base/config.json").read_text())
    assert (base["hidden_size"], base["num_hidden_layers"], base["vocab_size"]) == (64, 2, 512)
    assert any((smoke / "base").glob("*.safetensors"))


# --------------------------------------------------------------------------------------------- the report
def _write(smoke: Path, step: str, status: str, log: str) -> None:
    (smoke / "logs").mkdir(parents=True, exist_ok=True)
    (smoke / "logs" / f"{step}.status").write_text(status + "\n")
    (smoke / "logs" / f"{step}.log").write_text(log)


def test_table_reports_failures_skips_and_missing_keys(tmp_path: Path, capsys):
    smoke = tmp_path
    _write(smoke, "model", "rc=0 wall=3.2 timeout=60", '{"model": {"parameters": 10, "seconds": 1.0}}\n')
    # an older step that prints no seconds_per_step / peak memory: n/a, still ok
    _write(smoke, "step1", "rc=0 wall=12.5 timeout=60",
           'noise\n{"step1": {"steps": 4, "seconds": 2.0}}\n[2026-11-27 17:00:46,099] [INFO] [launch.py:285:main] '
           'Process 1 exits successfully.\n')
    _write(smoke, "step2", "rc=1 wall=30.0 timeout=60",
           "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
           "RuntimeError: Cannot partition a param in flight\n"
           "[2026-11-27 17:06:59,704] [ERROR] [launch.py:259:sigkill_handler] ['python', '-u', '-m', 'a.main', "
           "'--x', 'error: not this'] exits with return code = 1\n")
    _write(smoke, "step3", "skipped=no out/step2/config.json", "")
    _write(smoke, "step4", "rc=124 wall=60.2 timeout=60", "generating...\n")
    rc = gpu_smoke.main(["table", "--smoke_dir", str(smoke)])
    out = capsys.readouterr().out
    assert rc == 1
    rows = _table_rows(out)
    assert rows["model"][1] == "ok" and rows["step1"][1] == "ok"
    assert rows["step1"][3] == "4" and rows["step1"][4] == "n/a" and rows["step1"][8] == "n/a"
    assert rows["step2"][1] == "FAILED (exit 1: RuntimeError: Cannot partition a param in flight)"
    assert rows["step3"][1] == "SKIPPED (no out/step2/config.json)"
    assert rows["step4"][1] == "FAILED (timed out after 60 s)"
    summary = json.loads((smoke / "summary.json").read_text())
    assert summary["ok"] is False and not summary["steps"]["step2"]["ok"]
    assert summary["steps"]["step1"]["json"] == {"steps": 4, "seconds": 2.0}


def test_table_reads_the_full_summaries(tmp_path: Path, capsys):
    step3 = {"steps": 3, "seconds": 9.1, "seconds_per_step": 3.0, "seconds_generation": 1.5,
             "seconds_experience": 0.5, "seconds_training": 1.0, "peak_gpu_memory_gib": 21.25}
    for step in STEPS:
        body = step3 if step == "step3" else {"steps": 4, "seconds_per_step": 0.25, "peak_gpu_memory_gib": 12.5}
        _write(tmp_path, step, "rc=0 wall=10 timeout=60", f"log\n{json.dumps({step: body})}\ntrailing line\n")
    assert gpu_smoke.main(["table", "--smoke_dir", str(tmp_path)]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert rows["step3"][3:] == ["3", "3.000", "1.500", "0.500", "1.000", "21.2"]
    assert rows["step1"][4] == "0.250" and rows["step1"][5] == "n/a" and rows["step1"][8] == "12.5"


def test_bench_files_load_as_truthfulqa_and_nq_open(tmp_path: Path, toy_world_dir: Path):
    from step4_evaluation.benchmarks import load_benchmark

    assert gpu_smoke.main(["bench", "--world", str(toy_world_dir), "--out", str(tmp_path), "--n", "5"]) == 0
    nq = load_benchmark("nq_open", str(tmp_path / "nq_open.jsonl"))
    tqa = load_benchmark("truthfulqa", str(tmp_path / "TruthfulQA.csv"))
    assert len(nq) == len(tqa) == 5
    assert tqa[0]["question"] == nq[0]["question"] and tqa[0]["answers"] == nq[0]["answers"]
    assert tqa[0]["incorrect_answers"] and not set(tqa[0]["incorrect_answers"]) & set(tqa[0]["answers"])


# --------------------------------------------------------------------------------------------- early refusals
def _bin_with(tmp_path: Path, **links: str) -> str:
    """A PATH of one folder holding only what the script needs before its checks (and ``links``)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("dirname", "date"):
        (folder / tool).symlink_to(shutil.which(tool))
    for name, target in links.items():
        (folder / name).symlink_to(target)
    return str(folder)


def test_refuses_without_python_on_path(tmp_path: Path):
    result = subprocess.run([shutil.which("bash"), str(SCRIPT), "--tiny"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": _bin_with(tmp_path), "HOME": str(tmp_path)}, timeout=60)
    assert result.returncode == 2
    assert "no 'python' on PATH" in result.stderr and "device_env.sh" in result.stderr


def test_refuses_without_deepspeed_launcher(tmp_path: Path):
    result = subprocess.run([shutil.which("bash"), str(SCRIPT), "--tiny"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": _bin_with(tmp_path, python=sys.executable), "HOME": str(tmp_path)},
                            timeout=60)
    assert result.returncode == 2
    assert "no 'deepspeed' launcher on PATH" in result.stderr


def test_rejects_unknown_flags():
    result = subprocess.run(["bash", str(SCRIPT), "--tiny", "--no_such_flag"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "unknown argument '--no_such_flag'" in result.stderr
