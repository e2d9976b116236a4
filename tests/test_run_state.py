"""Output folders of steps 1-3 under bad input and shared use (issue 10): whose resumable state a
``--resume`` may load, a log without repeated steps, the last K states kept, a frozen actor refused,
an ``--output_dir`` that is a file, one writer per folder; and (issue 19) a folder this project did not
write, a run over its own inputs, an earlier run set aside until the first save, tampered or planted
resume files, a full disk during a save. Tiny models, in-process runs."""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from utils.errors import UserError


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, toy_tokenizer) -> Path:
    """A one-layer Llama: step 1's output and (its head fresh) the critic's start."""
    from utils.model import save_hf_checkpoint
    from worlds.toy_world import create_tiny_llama

    folder = tmp_path_factory.mktemp("run_state") / "tiny"
    model = create_tiny_llama(toy_tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    save_hf_checkpoint(model, toy_tokenizer, folder)
    return folder


def _ppo_args(world: Path, model: Path, out: Path, *extra: str):
    from step3_RL_finetune_LLM.trainer import build_parser

    # 8 prompts in rollout batches of 2: 4 steps per epoch
    return build_parser().parse_args(
        ["--data_path", str(world / "step3_ppo"), "--data_split", "0,0,10", "--actor_model_name_or_path", str(model),
         "--critic_model_name_or_path", str(model), "--output_dir", str(out), "--quality_reward", "oracle",
         "--per_device_generation_batch_size", "2", "--per_device_training_batch_size", "2",
         "--max_prompt_seq_len", "32", "--max_answer_seq_len", "4", "--max_train_examples", "8", "--dtype", "fp32",
         "--actor_learning_rate", "1e-2", "--critic_learning_rate", "1e-2", "--log_interval", "1", *extra])


def _ppo(world: Path, model: Path, out: Path, *extra: str) -> dict:
    from step3_RL_finetune_LLM import trainer

    return trainer.run(_ppo_args(world, model, out, *extra))


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def _forbid_engines(monkeypatch) -> None:
    """From here on, a run that gets as far as building its engines fails the test: refusals come first."""
    from step3_RL_finetune_LLM import trainer

    monkeypatch.setattr(trainer, "build_engines",
                        lambda *a, **k: pytest.fail("the engines were built before the refusal"))


# --- 1. whose state --resume loads ------------------------------------------------------------------------

def test_resume_refuses_a_state_made_with_other_flags(toy_world_dir, tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "step3"
    _ppo(toy_world_dir, tiny_model, out, "--alpha", "2", "--max_steps", "1", "--save_interval", "1")
    state = json.loads((out / "resume/trainer_state.json").read_text())
    assert state["made_by"]["flags"]["alpha"] == 2.0 and "max_steps" not in state["made_by"]["flags"]

    _forbid_engines(monkeypatch)
    with pytest.raises(UserError, match=r"^--resume: .*resume was saved by a run with other flags or inputs: "
                                        r"--alpha 2\.0 → 0\.0, --kl_ctl 0\.1 → 0\.2; "):
        _ppo(toy_world_dir, tiny_model, out, "--alpha", "0", "--kl_ctl", "0.2", "--max_steps", "2", "--resume")


def test_resume_refuses_a_state_made_from_other_inputs(toy_world_dir, tiny_model, tmp_path, monkeypatch):
    model = shutil.copytree(tiny_model, tmp_path / "step1")
    out = tmp_path / "step3"
    _ppo(toy_world_dir, model, out, "--max_steps", "1", "--save_interval", "1")
    weights = model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # step 1 rerun since

    _forbid_engines(monkeypatch)
    with pytest.raises(UserError, match=r"--actor_model_name_or_path .*step1: its files changed since the state "
                                        r"was saved, --critic_model_name_or_path .*step1: its files changed"):
        _ppo(toy_world_dir, model, out, "--max_steps", "2", "--resume")


def test_resume_without_a_state_stops_before_the_engines(toy_world_dir, tiny_model, tmp_path, monkeypatch):
    _forbid_engines(monkeypatch)
    with pytest.raises(UserError, match=r"--resume: no resumable checkpoint in .*resume"):
        _ppo(toy_world_dir, tiny_model, tmp_path / "step3", "--max_steps", "2", "--resume")


def test_a_fresh_run_sets_the_old_state_aside_until_its_first_save(toy_world_dir, tiny_model, tmp_path, capsys):
    out = tmp_path / "step3"
    _ppo(toy_world_dir, tiny_model, out, "--max_steps", "2", "--save_interval", "1")
    assert (out / "resume/trainer_state.json").is_file()
    _ppo(toy_world_dir, tiny_model, out, "--max_steps", "1")
    printed = capsys.readouterr().out
    assert (f"step 3: moved resume, train_log.jsonl, actor, critic of an earlier run to {out / 'earlier_run'} (no "
            f"--resume: starting afresh); it is removed at this run's first save; if this run is stopped before, "
            f"move them back into {out} to recover that run") in printed
    assert f"step 3: removed {out / 'earlier_run'}" in printed  # at the final save
    assert not (out / "resume").exists() and not (out / "earlier_run").exists() and _steps(out) == [1]
    with pytest.raises(UserError, match="no resumable checkpoint"):
        _ppo(toy_world_dir, tiny_model, out, "--max_steps", "2", "--resume")


def test_a_fresh_run_killed_before_its_first_save_leaves_the_old_state_recoverable(toy_world_dir, tiny_model,
                                                                                   tmp_path, monkeypatch, capsys):
    from step3_RL_finetune_LLM import trainer

    out = tmp_path / "step3"
    _ppo(toy_world_dir, tiny_model, out, "--max_steps", "2", "--save_interval", "1")
    old_log = (out / "train_log.jsonl").read_text()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "save_hf_checkpoint", killed)  # killed at its final save: nothing saved yet
        with pytest.raises(KeyboardInterrupt):
            _ppo(toy_world_dir, tiny_model, out, "--max_steps", "1")
    aside = out / "earlier_run"
    assert (aside / "resume/trainer_state.json").is_file() and (aside / "train_log.jsonl").read_text() == old_log
    with pytest.raises(UserError, match=rf"{aside} holds an earlier run's items, set aside by a run killed before "
                                        rf"its first save: move them back into {out} to resume that run"):
        _ppo(toy_world_dir, tiny_model, out, "--max_steps", "2", "--resume")
    capsys.readouterr()
    with monkeypatch.context() as patch:  # killed again: the earlier run's items are kept, not the killed run's log
        patch.setattr(trainer, "save_hf_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            _ppo(toy_world_dir, tiny_model, out, "--max_steps", "1")
    assert f"step 3: kept {aside}, an earlier run's items set aside by a run killed before its first save (removed " \
           f"that run's train_log.jsonl)" in capsys.readouterr().out
    assert (aside / "train_log.jsonl").read_text() == old_log
    for item in aside.iterdir():  # recovering as the line says
        item.rename(out / item.name)
    _ppo(toy_world_dir, tiny_model, out, "--max_steps", "3", "--resume")
    assert _steps(out) == [1, 2, 3]


# --- 2. an actor that would never be updated -----------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--freezing_actor_steps", "3", "--max_steps", "3"],
     r"--freezing_actor_steps 3 >= the run's 3 steps \(--max_steps 3\): the actor would never be updated"),
    (["--freezing_actor_steps", "5"],
     r"--freezing_actor_steps 5 >= the run's 4 steps \(4 rollout batches per epoch x --num_train_epochs 1; "
     r"no --max_steps\): the actor would never be updated"),
])
def test_freezing_the_actor_for_the_whole_run_is_refused(toy_world_dir, tiny_model, tmp_path, monkeypatch, extra,
                                                         message):
    _forbid_engines(monkeypatch)
    with pytest.raises(UserError, match=message) as info:
        _ppo(toy_world_dir, tiny_model, tmp_path / "step3", *extra)
    assert not isinstance(info.value, run_state_refusal())  # not a --resume refusal: no resume is involved
    assert not (tmp_path / "step3").exists()


# --- 3, 8. a resumed run's log and time --------------------------------------------------------------------

def test_resume_logs_each_step_once_and_counts_the_earlier_time(toy_world_dir, tiny_model, tmp_path):
    out = tmp_path / "step3"
    _ppo(toy_world_dir, tiny_model, out, "--max_steps", "3", "--save_interval", "2")  # killed after step 3, say
    assert _steps(out) == [1, 2, 3]
    state_file = out / "resume/trainer_state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "seconds": 1000.0}))  # a long first run
    summary = _ppo(toy_world_dir, tiny_model, out, "--max_steps", "4", "--save_interval", "2", "--resume")
    assert _steps(out) == [1, 2, 3, 4]  # step 3 logged once, by the resumed run
    assert summary["steps"] == 4 and summary["seconds"] >= 1000.0 and summary["run_seconds"] < 1000.0
    assert json.loads(state_file.read_text())["seconds"] >= 1000.0
    assert [json.loads(line)["seconds"] >= 1000.0 for line in (out / "train_log.jsonl").read_text().splitlines()] == \
        [False, False, True, True]


# --- 4, 5, 7. the states kept, their modes, the lines that say so -------------------------------------------

ZERO = ["--actor_zero_stage", "2", "--critic_zero_stage", "2"]  # ZeRO >= 1 adds DeepSpeed's zero_to_fp32.py


def test_only_the_last_states_are_kept_and_each_save_is_reported(toy_world_dir, tiny_model, tmp_path, capsys):
    out = tmp_path / "step3"
    _ppo(toy_world_dir, tiny_model, out, *ZERO, "--max_steps", "3", "--save_interval", "1")  # default: keep 2
    for name in ("actor", "critic"):
        assert sorted(p.name for p in (out / "resume" / name).glob("step*")) == ["step2", "step3"]
    printed = capsys.readouterr().out
    for step in (1, 2):
        assert f"saved resumable state (step {step}) to {out / 'resume'}\n" in printed
    assert (f"saved resumable state (step 3) to {out / 'resume'} (removed actor/step1, critic/step1: "
            "--save_total_limit 2)") in printed
    assert f"saved actor to {out / 'actor'}" in printed and f"saved critic to {out / 'critic'}" in printed
    _ppo(toy_world_dir, tiny_model, out, *ZERO, "--max_steps", "4", "--save_interval", "1", "--save_total_limit", "1",
         "--resume")
    assert sorted(p.name for p in (out / "resume/actor").glob("step*")) == ["step4"]


def test_resumable_states_get_the_umasks_modes(toy_world_dir, tiny_model, tmp_path):
    previous = os.umask(0o002)  # a group-shared folder: the states must be group-writable too
    try:
        _ppo(toy_world_dir, tiny_model, tmp_path / "step3", *ZERO, "--max_steps", "1", "--save_interval", "1")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "step3/resume").rglob("*")}
    assert modes["zero_to_fp32.py"] == 0o775 and modes["step1"] == 0o775 and modes["trainer_state.json"] == 0o664
    assert set(modes.values()) == {0o775, 0o664}, modes


def test_resume_with_the_state_folder_gone_stops_before_the_engines(toy_world_dir, tiny_model, tmp_path,
                                                                     monkeypatch):
    out = tmp_path / "step3"
    _ppo(toy_world_dir, tiny_model, out, "--max_steps", "1", "--save_interval", "1")
    shutil.rmtree(out / "resume/critic/step1")
    _forbid_engines(monkeypatch)
    with pytest.raises(UserError, match=r"names step 1 but .*critic/step1 is missing"):
        _ppo(toy_world_dir, tiny_model, out, "--max_steps", "2", "--resume")


# --- 6. temporary folders of a killed save ----------------------------------------------------------------

def test_a_killed_saves_temporary_folders_are_removed_at_the_next_save(toy_world_dir, tiny_model, tmp_path, capsys):
    dead = _dead_pid()
    out = tmp_path / "step3"
    stale = out / f".actor.tmp-{dead}-0badf00d"
    live = out / f".critic.tmp-{os.getpid()}-0000beef"  # this process: a save in progress
    for folder in (stale, live):
        folder.mkdir(parents=True)
    _ppo(toy_world_dir, tiny_model, out, "--max_steps", "1")
    assert not stale.exists() and live.is_dir()
    assert f"removed {stale}: a temporary folder left by a killed save (pid {dead})" in capsys.readouterr().out


# --- 9, 10. the output folder itself ---------------------------------------------------------------------

def _sft_args(world: Path, model: Path, out: Path, *extra: str):
    from step1_supervised_finetuning_LM.sft import build_parser

    return build_parser().parse_args(
        ["--data_path", str(world / "step1_sft"), "--data_split", "10,0,0", "--model_name_or_path", str(model),
         "--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", "2",
         "--per_device_eval_batch_size", "4", "--max_seq_len", "48", "--max_train_examples", "4", "--dtype", "fp32",
         *extra])


@pytest.fixture()
def nothing_loads(monkeypatch):
    """Loading a tokenizer (the first thing a step reads) fails the test: the refusal comes before it."""
    import utils.model
    from step3_RL_finetune_LLM import trainer

    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the refusal")

    monkeypatch.setattr(utils.model, "load_tokenizer", refuse)
    monkeypatch.setattr(trainer, "load_tokenizer", refuse)


def test_step1_into_an_existing_file_is_refused_before_anything_loads(toy_world_dir, tiny_model, tmp_path,
                                                                      nothing_loads, capsys):
    from step1_supervised_finetuning_LM.main import main

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    argv = ["--data_path", str(toy_world_dir / "step1_sft"), "--model_name_or_path", str(tiny_model),
            "--output_dir", str(notes)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"error: --output_dir {notes}: a file is there, not a folder; move it away or "
                                       f"choose another --output_dir\n")
    assert notes.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_outputs_under_a_file_are_refused(toy_world_dir, tiny_model, tmp_path, nothing_loads):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"--output_dir .*notes\.txt/out/step3: .*notes\.txt is a file, so the folder "
                                        r"cannot be created"):
        _ppo(toy_world_dir, tiny_model, tmp_path / "notes.txt/out/step3")
    with pytest.raises(UserError, match=r"--output_dir .*notes\.txt: a file is there, not a folder"):
        _ppo(toy_world_dir, tiny_model, tmp_path / "notes.txt")


def test_a_second_run_into_a_folder_in_use_stops_before_anything_loads(toy_world_dir, tiny_model, tmp_path,
                                                                       nothing_loads, monkeypatch):
    from step1_supervised_finetuning_LM.sft import run as sft_run
    from utils.files import OutputInUseError, output_lock

    monkeypatch.delenv("RANK", raising=False)
    for out, start in ((tmp_path / "step1", lambda out: sft_run(_sft_args(toy_world_dir, tiny_model, out))),
                       (tmp_path / "step3", lambda out: _ppo(toy_world_dir, tiny_model, out))):
        with output_lock(out):
            with pytest.raises(OutputInUseError, match=rf"--output_dir {out}: another run is writing there \(pid "
                                                       rf"{os.getpid()} "):
                start(out)


def test_steps_1_and_2_say_where_they_saved(toy_world_dir, tiny_model, tmp_path, capsys):
    from step1_supervised_finetuning_LM.sft import run as sft_run

    out = tmp_path / "step1"
    stale = tmp_path / f".step1.tmp-{_dead_pid()}-0badf00d"
    stale.mkdir()
    sft_run(_sft_args(toy_world_dir, tiny_model, out))
    printed = capsys.readouterr().out
    assert f"saved the step1 model to {out}" in printed and not stale.exists()
    assert (out / "config.json").is_file()


def _dead_pid() -> int:
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


# --- issue 19: folders not ours, a run over its own inputs, shared places, resume integrity, a full disk -----

def test_step1_into_a_folder_it_did_not_write_is_refused_or_moved_aside(toy_world_dir, tiny_model, tmp_path,
                                                                        capsys):
    from step1_supervised_finetuning_LM.main import main
    from step1_supervised_finetuning_LM.sft import run as sft_run

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.md").write_text("mine")
    argv = ["--data_path", str(toy_world_dir / "step1_sft"), "--model_name_or_path", str(tiny_model),
            "--output_dir", str(notes)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"error: --output_dir {notes}: it holds files this project did not write; "
                                       "choose another --output_dir, or pass --overwrite_output_dir to move it aside "
                                       "(it is never deleted)\n")
    sft_run(_sft_args(toy_world_dir, tiny_model, notes, "--overwrite_output_dir"))
    (aside,) = tmp_path.glob("notes.moved-*")
    assert (aside / "todo.md").read_text() == "mine" and (notes / "config.json").is_file()
    assert f"moved {notes} to {aside}" in capsys.readouterr().out
    sft_run(_sft_args(toy_world_dir, tiny_model, notes))  # ours now: replaced without the flag
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([aside.name, "notes"])


def test_a_run_never_writes_over_its_own_inputs(toy_world_dir, tiny_model, tmp_path, nothing_loads, capsys):
    from step1_supervised_finetuning_LM.sft import run as sft_run
    from step2_reward_model.main import main as step2

    step1 = shutil.copytree(tiny_model, tmp_path / "step1")
    assert step2(["--data_path", str(toy_world_dir / "step2_reward"), "--model_name_or_path", str(step1),
                  "--output_dir", str(step1)]) == 2
    assert capsys.readouterr().err == (f"error: --output_dir {step1} is --model_name_or_path {step1}: the run would "
                                       "write over its own input; choose another --output_dir\n")

    with pytest.raises(UserError, match=rf"^--output_dir {tiny_model} is --model_name_or_path {tiny_model}: the run "
                                        r"would write over its own input; choose another --output_dir$"):
        sft_run(_sft_args(toy_world_dir, tiny_model, tiny_model))
    with pytest.raises(UserError, match=rf"^--output_dir {toy_world_dir} holds --data_path "):
        sft_run(_sft_args(toy_world_dir, tiny_model, toy_world_dir, "--overwrite_output_dir"))
    with pytest.raises(UserError, match=rf"^--output_dir {tiny_model}/actor lies inside --actor_model_name_or_path"):
        _ppo(toy_world_dir, tiny_model, tiny_model / "actor")


def test_an_output_folder_holding_more_than_a_run_is_refused(toy_world_dir, tiny_model, tmp_path, nothing_loads,
                                                            monkeypatch):
    from step1_supervised_finetuning_LM.sft import run as sft_run

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^--output_dir .*: that is the current folder; give the run a folder of its "
                                        r"own"):
        sft_run(_sft_args(toy_world_dir, tiny_model, Path(".")))
    with pytest.raises(UserError, match=r"that is a folder above the current one"):
        _ppo(toy_world_dir, tiny_model, tmp_path.parent)


class Payload:
    """What an attacker plants in resume/: unpickling it creates ``path``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.fixture()
def saved_state(toy_world_dir, tiny_model, tmp_path) -> Path:
    out = tmp_path / "step3"
    _ppo(toy_world_dir, tiny_model, out, "--max_steps", "1", "--save_interval", "1")
    return out


def test_resume_refuses_a_state_whose_files_changed(toy_world_dir, tiny_model, saved_state, tmp_path, monkeypatch):
    import torch

    ran = tmp_path / "payload_ran"
    (weights,) = (saved_state / "resume/actor/step1").glob("*model_states.pt")
    torch.save({"module": Payload(ran)}, weights)
    (saved_state / "resume/critic/step1/extra.pt").write_bytes(b"x")
    _forbid_engines(monkeypatch)
    with pytest.raises(run_state_refusal(), match=r"^--resume: the files of .*resume differ from manifest-step1\.json "
                                                  rf"\(actor/step1/{weights.name} changed, critic/step1/extra\.pt "
                                                  r"was added\); it is not loaded: drop --resume to start afresh$"):
        _ppo(toy_world_dir, tiny_model, saved_state, "--max_steps", "2", "--resume")
    (saved_state / "resume/manifest-step1.json").unlink()
    with pytest.raises(run_state_refusal(), match=r"manifest-step1\.json is missing"):
        _ppo(toy_world_dir, tiny_model, saved_state, "--max_steps", "2", "--resume")
    assert not ran.exists()


def test_resume_never_runs_a_planted_pickle_even_with_a_rewritten_manifest(toy_world_dir, tiny_model, saved_state,
                                                                           tmp_path):
    import hashlib

    import torch

    ran = tmp_path / "payload_ran"
    (weights,) = (saved_state / "resume/actor/step1").glob("*model_states.pt")
    torch.save({"module": Payload(ran)}, weights)
    manifest = saved_state / "resume/manifest-step1.json"
    sums = json.loads(manifest.read_text())
    sums[f"actor/step1/{weights.name}"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(sums))
    with pytest.raises(run_state_refusal(), match=rf"^--resume: .*{weights.name} holds more than tensors and plain "
                                                  r"data \(Unsupported global: GLOBAL io\.open\); it was not "
                                                  r"loaded: drop --resume to start afresh$"):
        _ppo(toy_world_dir, tiny_model, saved_state, "--max_steps", "2", "--resume")
    assert not ran.exists()


def run_state_refusal():
    from step3_RL_finetune_LLM.run_state import RefusedRun

    return RefusedRun


def test_a_full_disk_during_a_resumable_save_removes_it_and_names_the_path(toy_world_dir, tiny_model, tmp_path,
                                                                           monkeypatch):
    import errno

    from deepspeed.runtime.engine import DeepSpeedEngine

    def disk_full(self, save_dir, tag, **kwargs):
        (Path(save_dir) / tag).mkdir(parents=True, exist_ok=True)
        (Path(save_dir) / tag / "mp_rank_00_model_states.pt").write_bytes(b"half")  # 2 MB in a real run
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(DeepSpeedEngine, "save_checkpoint", disk_full)
    out = tmp_path / "step3"
    with pytest.raises(OSError) as raised:
        _ppo(toy_world_dir, tiny_model, out, "--max_steps", "2", "--save_interval", "1")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(out / "resume")
    assert not list((out / "resume").rglob("step1"))


@pytest.mark.parametrize("stage", ["2", "3"])
def test_zero_states_resume_under_weights_only_loading(toy_world_dir, tiny_model, tmp_path, stage):
    """ZeRO's optimizer states hold a loss scaler, its stage and fragment addresses: allowlisted, they load."""
    out, zero = tmp_path / "step3", ["--actor_zero_stage", stage, "--critic_zero_stage", stage]
    _ppo(toy_world_dir, tiny_model, out, "--max_steps", "1", "--save_interval", "1", *zero)
    _ppo(toy_world_dir, tiny_model, out, "--max_steps", "2", "--resume", *zero)
    assert _steps(out) == [1, 2]
