"""Safe runs (issue 19): a run that diverges, would make no optimizer step, is interrupted or fills the disk
ends with one line and the right exit status (1, 2, 130, 1), and writes no final model. Tiny models, the toy
world; in-process runs except the Ctrl-C one, which sends a real SIGINT to a step-3 process."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from utils import finite
from utils.errors import TrainingDiverged, exits_cleanly_on_user_error, note_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _error_line(capsys) -> str:
    """The one ``error:`` line a run printed (the datasets library's progress bars go to stderr too)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


# --- the wrapper: one line, the exit status --------------------------------------------------------------

def _ends(raised: BaseException, checkpoint: str | None = None):
    @exits_cleanly_on_user_error
    def main() -> None:
        if checkpoint:
            note_checkpoint(checkpoint)
        raise raised

    return main()


@pytest.mark.parametrize("raised, checkpoint, code, line", [
    (TrainingDiverged("step1, epoch 1, step 2: training loss nan: training diverged"), None, 1,
     "error: step1, epoch 1, step 2: training loss nan: training diverged\n"),
    (TrainingDiverged("step 3, PPO step 4: kl inf"), "out/resume (step 2)", 1,
     "error: step 3, PPO step 4: kl inf; the last good checkpoint: out/resume (step 2)\n"),
    (KeyboardInterrupt(), None, 130, "interrupted; stopped before the end (Ctrl-C)\n"),
    (KeyboardInterrupt(), "out/resume (step 2)", 130,
     "interrupted; stopped before the end (Ctrl-C); the last good checkpoint: out/resume (step 2)\n"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/model.safetensors"), None, 1,
     "error: no space left on device writing /data/out/model.safetensors; free space or choose another "
     "--output_dir\n"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/data/out/tokenizer.json"), None, 1,
     "error: no space left on device writing /data/out/tokenizer.json; free space or choose another "
     "--output_dir\n"),
])
def test_a_failed_run_ends_with_one_line_and_its_status(capsys, raised, checkpoint, code, line):
    assert _ends(raised, checkpoint) == code
    assert capsys.readouterr().err == line


def test_other_os_errors_are_not_called_a_full_disk():
    with pytest.raises(PermissionError):
        _ends(PermissionError(errno.EACCES, "Permission denied", "/data/out"))


def test_a_checkpoint_noted_by_an_earlier_run_is_forgotten(capsys):
    _ends(KeyboardInterrupt(), "old/resume (step 9)")
    capsys.readouterr()
    _ends(KeyboardInterrupt())
    assert capsys.readouterr().err == "interrupted; stopped before the end (Ctrl-C)\n"


# --- the checks (one process: the all-reduce is the identity) ----------------------------------------------

def test_require_finite_names_the_value_and_ignores_other_entries():
    finite.require_finite({"loss": 0.5, "step": 3, "note": "text"}, "here", "hint")
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(TrainingDiverged, match=rf"^here: critic_loss {bad}: training diverged, .*; hint$"):
            finite.require_finite({"actor_loss": 0.1, "critic_loss": bad}, "here", "hint")


def test_weights_are_checked_for_nan_and_inf():
    layer = torch.nn.Linear(2, 2)
    engine = SimpleNamespace(module=layer)
    finite.require_finite_weights({"actor": engine}, "here", "hint")
    with torch.no_grad():
        layer.bias[0] = float("inf")
    with pytest.raises(TrainingDiverged, match=r"^here: the actor weights hold NaN/inf"):
        finite.require_finite_weights({"actor": engine}, "here", "hint")


def test_a_run_whose_every_update_was_skipped_is_refused():
    engine = SimpleNamespace(global_steps=5, skipped_steps=1)  # a resumed engine: earlier counts do not matter
    counter = finite.UpdateCounter(engine)
    finite.require_applied_updates({"critic": counter}, "step 3", "hint")  # no step yet: nothing to say
    engine.global_steps, engine.skipped_steps = 8, 3
    finite.require_applied_updates({"critic": counter}, "step 3", "hint")  # 1 of 3 applied
    engine.skipped_steps = 4
    with pytest.raises(TrainingDiverged, match=r"^step 3: DeepSpeed skipped all 3 optimizer steps of the critic"):
        finite.require_applied_updates({"critic": counter}, "step 3", "hint")


def test_nan_weights_are_not_saved(tmp_path, toy_tokenizer):
    from utils.model import save_hf_checkpoint
    from worlds.toy_world import create_tiny_llama

    model = create_tiny_llama(toy_tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=rf"the weights to be saved to {tmp_path / 'm'} hold NaN/inf"):
        save_hf_checkpoint(model, toy_tokenizer, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


# --- in-process runs --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, toy_tokenizer) -> Path:
    """A one-layer Llama: step 1's input and output, and the critic's start."""
    from utils.model import save_hf_checkpoint
    from worlds.toy_world import create_tiny_llama

    model = create_tiny_llama(toy_tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    return save_hf_checkpoint(model, toy_tokenizer, tmp_path_factory.mktemp("safe_runs") / "tiny")


def _step1(world: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["--data_path", str(world / "step1_sft"), "--data_split", "10,0,0", "--model_name_or_path", str(model),
            "--output_dir", str(out), "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4",
            "--max_seq_len", "48", "--max_train_examples", "4", "--dtype", "fp32", *extra]


def _step3(world: Path, model: Path, out: Path, *extra: str) -> list[str]:
    # 8 prompts in rollout batches of 2: 4 steps per epoch, one PPO minibatch each
    return ["--data_path", str(world / "step3_ppo"), "--data_split", "0,0,10", "--actor_model_name_or_path",
            str(model), "--critic_model_name_or_path", str(model), "--output_dir", str(out), "--quality_reward",
            "oracle", "--per_device_generation_batch_size", "2", "--per_device_training_batch_size", "2",
            "--max_prompt_seq_len", "32", "--max_answer_seq_len", "4", "--max_train_examples", "8", "--dtype",
            "fp32", "--log_interval", "1", *extra]


@pytest.mark.parametrize("step", [1, 2])
def test_steps_1_and_2_refuse_a_run_without_an_optimizer_step(toy_world_dir, tiny_model, tmp_path, monkeypatch,
                                                             capsys, step):
    """One row and 4 accumulated micro-batches announced "1 steps", made none and saved the input model."""
    if step == 1:
        from step1_supervised_finetuning_LM import sft as module
        from step1_supervised_finetuning_LM.main import main
        argv = _step1(toy_world_dir, tiny_model, tmp_path / "out")
    else:
        from step2_reward_model import reward_model as module
        from step2_reward_model.main import main
        argv = _step1(toy_world_dir, tiny_model, tmp_path / "out", "--data_path", str(toy_world_dir / "step2_reward"),
                      "--data_split", "0,10,0")
    monkeypatch.setattr(module, "STEP", dataclasses.replace(module.STEP, create_model=lambda *a, **k: pytest.fail(
        "the model loaded before the refusal")))
    code = main(argv + ["--max_train_examples", "1", "--gradient_accumulation_steps", "4", "--num_train_epochs", "2"])
    assert code == 2 and not (tmp_path / "out" / "config.json").exists()
    assert _error_line(capsys) == (
        "error: 1 training rows in 1 batch(es) per rank (--per_device_train_batch_size 2, 1 rank(s)) x "
        "--num_train_epochs 2 make 2 micro-batch(es) per rank in all, fewer than --gradient_accumulation_steps 4: "
        "the run would make no optimizer step; lower --gradient_accumulation_steps or the batch size, or train on "
        "more data")


def test_step3_refuses_a_run_without_an_optimizer_step(toy_world_dir, tiny_model, tmp_path, monkeypatch, capsys):
    from step3_RL_finetune_LLM import trainer
    from step3_RL_finetune_LLM.main import main

    monkeypatch.setattr(trainer, "build_engines", lambda *a, **k: pytest.fail("the engines were built first"))
    code = main(_step3(toy_world_dir, tiny_model, tmp_path / "out", "--max_steps", "3", "--freezing_actor_steps", "1",
                       "--gradient_accumulation_steps", "3"))
    assert code == 2
    assert _error_line(capsys) == (
        "error: 2 rollout batch(es) updating the actor (the run's 3 less --freezing_actor_steps 1) x 1 PPO "
        "minibatch(es) each (--ppo_epochs 1, --per_device_generation_batch_size 2, --per_device_training_batch_size "
        "2) make 2 micro-batch(es) per rank in all, fewer than --gradient_accumulation_steps 3: the run would make no "
        "optimizer step; lower --gradient_accumulation_steps or the batch size, or train on more data")


def test_a_diverging_step1_exits_1_and_saves_no_model(toy_world_dir, tiny_model, tmp_path, capsys):
    """A huge learning rate made the weights NaN, and step 1 saved them with exit 0."""
    from step1_supervised_finetuning_LM.main import main

    out = tmp_path / "out"
    assert main(_step1(toy_world_dir, tiny_model, out, "--learning_rate", "1e30", "--max_steps", "2")) == 1
    assert _error_line(capsys) == ("error: step1, epoch 1, optimizer step 2: training loss nan: training diverged, so no "
                                   f"model is saved; {finite.SUPERVISED_HINT}")
    assert not (out / "config.json").exists()


def test_a_diverging_step3_exits_1_and_names_its_last_good_checkpoint(toy_world_dir, tiny_model, tmp_path, capsys):
    from step3_RL_finetune_LLM.main import main

    out = tmp_path / "out"
    code = main(_step3(toy_world_dir, tiny_model, out, "--actor_learning_rate", "1e30", "--critic_learning_rate",
                       "1e30", "--max_steps", "4", "--save_interval", "1"))
    err = _error_line(capsys)
    assert code == 1
    assert err.startswith("error: step 3, PPO step 2: ") and "training diverged, so no model is saved" in err
    assert err.endswith(f"; the last good checkpoint: {out / 'resume'} (step 1); continue it with --resume")
    assert not (out / "actor").exists() and not (out / "critic").exists()


# --- Ctrl-C: a real SIGINT to a step-3 process -------------------------------------------------------------

def _saved_step(out: Path) -> int:
    try:
        return json.loads((out / "resume" / "trainer_state.json").read_text())["step"]
    except (OSError, ValueError):  # not written yet
        return 0


def test_ctrl_c_ends_step3_with_one_line_and_status_130(toy_world_dir, tiny_model, tmp_path):
    """It printed DeepSpeed's 67-line traceback."""
    out = tmp_path / "out"
    argv = _step3(toy_world_dir, tiny_model, out, "--max_steps", "1000", "--save_interval", "1",
                  "--save_total_limit", "1", "--num_train_epochs", "250")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    proc = subprocess.Popen([sys.executable, "-m", "step3_RL_finetune_LLM.main", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while _saved_step(out) < 2 and proc.poll() is None and time.time() < deadline:  # step 1's note is taken
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("interrupted; stopped before the end (Ctrl-C); the last good checkpoint: "
                           f"{out / 'resume'} (step ") and last.endswith("); continue it with --resume")
    assert "Traceback" not in err
